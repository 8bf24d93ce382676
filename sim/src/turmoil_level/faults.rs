//! Faults of the turmoil level and the run that applies them: a workload through the agent's
//! NBD export, faults applied between simulation steps, and the check that the newest recovery
//! point equals the workload's model (in `cluster::workload`). Used by the turmoil tests and by
//! the turmoil swarm, which draws the faults from a seed (`draw`).

use super::cluster::{add_hosts, workload, ClusterDisks, Disks, Outcome};
use crate::storage::FaultKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault applied when simulated time passes its start.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Power loss of a host (unsynced data dropped, the last write maybe torn) and its restart
    /// `down` later.
    Crash { host: &'static str, down: Duration },
    /// Packets between two hosts are lost for `len` (connections go silent; the roles must
    /// notice the stall and reconnect).
    Partition {
        a: &'static str,
        b: &'static str,
        len: Duration,
    },
    /// Packets between two hosts are held for `len`, then delivered (what TCP does across a
    /// short outage).
    Hold {
        a: &'static str,
        b: &'static str,
        len: Duration,
    },
    /// The host's disk is full for `len`: its role stops on the storage error; then the disk
    /// heals and the role is restarted.
    DiskFull { host: &'static str, len: Duration },
}

type Action = (Duration, &'static str, &'static str, &'static str);

fn schedule(faults: &[(Duration, Fault)]) -> Vec<Action> {
    let mut actions: Vec<Action> = vec![];
    for (at, f) in faults {
        let (start, end, a, b, len) = match *f {
            Fault::Crash { host, down } => ("crash", "restart", host, "", down),
            Fault::Partition { a, b, len } => ("partition", "repair", a, b, len),
            Fault::Hold { a, b, len } => ("hold", "release", a, b, len),
            Fault::DiskFull { host, len } => ("full", "heal", host, "", len),
        };
        actions.push((*at, start, a, b));
        actions.push((*at + len, end, a, b));
    }
    actions.sort_by_key(|a| a.0);
    actions
}

fn disks_of<'a>(disks: &'a ClusterDisks, host: &str) -> &'a Disks {
    match host {
        "ps" => &disks.ps,
        "mt" => &disks.mt,
        "cs" => &disks.cs,
        _ => &disks.agent,
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, disks: &ClusterDisks, action: &Action, seed: u64) {
    let (_, what, a, b) = *action;
    match what {
        "crash" => {
            sim.crash(a);
            disks_of(disks, a).crash(seed);
        }
        "restart" => sim.bounce(a),
        "partition" => sim.partition(a, b),
        "repair" => sim.repair(a, b),
        "hold" => sim.hold(a, b),
        "release" => sim.release(a, b),
        "full" => disks_of(disks, a).vfs.set_fault(Some(FaultKind::DiskFull)),
        "heal" => {
            disks_of(disks, a).vfs.set_fault(None);
            sim.crash(a);
            sim.bounce(a);
        }
        other => unreachable!("unknown action {other}"),
    }
}

pub fn run_with(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> (Outcome, ClusterDisks) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        .build();
    let disks = ClusterDisks::default();
    add_hosts(&mut sim, &disks);
    let result = Arc::new(Mutex::new(None));
    sim.client("workload", workload(seed, ops, result.clone()));
    let actions = schedule(faults);
    let mut next = 0;
    loop {
        while next < actions.len() && sim.elapsed() >= actions[next].0 {
            apply(
                &mut sim,
                &disks,
                &actions[next],
                seed.wrapping_add(next as u64),
            );
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => panic!("seed {seed}: simulation failed: {e}"),
        }
    }
    eprintln!(
        "seed {seed}: {:.1} simulated seconds",
        sim.elapsed().as_secs_f64()
    );
    let outcome = result
        .lock()
        .unwrap()
        .clone()
        .expect("the workload finished");
    assert!(
        !outcome.points.is_empty(),
        "seed {seed}: recovery points exist"
    );
    (outcome, disks)
}

pub fn run(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> Outcome {
    run_with(seed, ops, faults).0
}

/// The simulation's seeded generator, with the two draws the faults need.
struct Draw(crate::rng::Rng);

impl Draw {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.0.below(hi - lo + 1))
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.0.below(xs.len() as u64) as usize]
    }
}

/// Links a partition or a hold may cut.
const LINKS: [(&str, &str); 5] = [
    ("agent", "ps"),
    ("ps", "mt"),
    ("cs", "ps"),
    ("cs", "mt"),
    ("cs", "agent"),
];

/// The workload length and the faults of swarm seed `seed`: one to three faults among power
/// losses of the process server, master target or configuration server, partitions, holds and
/// full disks, starting in the first 1.5 simulated seconds (the workload runs 1 to 10). (Agent power loss is left out: an
/// agent crash loses the writes it held, which marks the replica inconsistent until the
/// resync of the next issue exists.)
pub fn draw(seed: u64) -> (u64, Vec<(Duration, Fault)>) {
    let mut d = Draw(crate::rng::Rng::new(seed ^ 0x7475_726d_6f69_6c21));
    let ops = 60 + d.below(61);
    let n = 1 + d.below(3);
    let mut faults = vec![];
    for _ in 0..n {
        let at = d.ms(50, 1500);
        let fault = match d.below(4) {
            0 => Fault::Crash {
                host: d.pick(&["ps", "mt", "cs"]),
                down: d.ms(200, 2000),
            },
            1 => {
                let (a, b) = d.pick(&LINKS);
                Fault::Partition {
                    a,
                    b,
                    len: d.ms(300, 3000),
                }
            }
            2 => {
                let (a, b) = d.pick(&LINKS);
                Fault::Hold {
                    a,
                    b,
                    len: d.ms(200, 2000),
                }
            }
            _ => Fault::DiskFull {
                host: d.pick(&["ps", "mt"]),
                len: d.ms(300, 2000),
            },
        };
        faults.push((at, fault));
    }
    (ops, faults)
}
