//! Faults of the turmoil level and the run that applies them: a workload through the agent's
//! NBD export, faults applied between simulation steps, and the check that the newest recovery
//! point equals the workload's model (in `cluster::workload`). Used by the turmoil tests and by
//! the turmoil swarm, which draws the faults from a seed (`draw`).

use super::cluster::{add_hosts, ClusterDisks, Disks};
use super::topology::Topology;
use super::workload::{workload, Checks, Outcome};
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
    /// Power loss of a host at its `sync`-th file sync after the fault's start, instead of that
    /// sync (so exactly between writes and the fsync that would make them durable), and its
    /// restart `down` later.
    PowerCut {
        host: &'static str,
        sync: u64,
        down: Duration,
    },
}

/// When, what, the host or link, and the fault's number (its index in the fault list).
type Action = (Duration, &'static str, &'static str, &'static str, usize);

fn schedule(faults: &[(Duration, Fault)]) -> Vec<Action> {
    let mut actions: Vec<Action> = vec![];
    for (i, (at, f)) in faults.iter().enumerate() {
        let (start, end, a, b, len) = match *f {
            Fault::Crash { host, down } => ("crash", "restart", host, "", down),
            Fault::Partition { a, b, len } => ("partition", "repair", a, b, len),
            Fault::Hold { a, b, len } => ("hold", "release", a, b, len),
            Fault::DiskFull { host, len } => ("full", "heal", host, "", len),
            Fault::PowerCut { host, .. } => {
                // The restart is scheduled when the cut happens (see `run_with`).
                actions.push((*at, "arm", host, "", i));
                continue;
            }
        };
        actions.push((*at, start, a, b, i));
        actions.push((*at + len, end, a, b, i));
    }
    actions.sort_by_key(|a| a.0);
    actions
}

fn disks_of<'a>(disks: &'a ClusterDisks, host: &str) -> &'a Disks {
    disks.of(host)
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    disks: &ClusterDisks,
    faults: &[(Duration, Fault)],
    action: &Action,
    seed: u64,
) {
    let (_, what, a, b, i) = *action;
    match what {
        "arm" => {
            if let Fault::PowerCut { sync, .. } = faults[i].1 {
                disks_of(disks, a).vfs.cut_power_at_sync(sync, seed);
            }
        }
        "power-restart" => {
            let d = disks_of(disks, a);
            d.vfs.set_fault(None);
            sim.bounce(a);
        }
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

/// Power cuts that happened in the last step: the host goes down (its redb loses what was not
/// committed, as its files already did) and comes back after the fault's `down`.
fn power_cuts(
    sim: &mut turmoil::Sim<'_>,
    disks: &ClusterDisks,
    faults: &[(Duration, Fault)],
    actions: &mut Vec<Action>,
    next: usize,
    cuts: &mut Vec<(Duration, &'static str)>,
) {
    for (i, (_, f)) in faults.iter().enumerate() {
        let Fault::PowerCut { host, down, .. } = *f else {
            continue;
        };
        let d = disks_of(disks, host);
        if d.vfs.take_power_cut() {
            sim.crash(host);
            d.crash_meta();
            let now = sim.elapsed();
            cuts.push((now, host));
            // Among the actions not applied yet, in time order.
            let at = next + actions[next..].partition_point(|a| a.0 <= now + down);
            actions.insert(at, (now + down, "power-restart", host, "", i));
        }
    }
}

/// A run of the single topology (one of each role, one disk): its disk's outcome.
pub fn run_with(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> (Outcome, ClusterDisks) {
    let (mut outcomes, disks) = run_in(&Topology::single(), seed, ops, faults);
    (outcomes.remove(0), disks)
}

pub fn run(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> Outcome {
    run_with(seed, ops, faults).0
}

/// A run of `topology`: `ops` ops on each of its disks (each disk's workload drawn from `seed`
/// and the disk's number), `faults` applied; every disk's outcome, in `Topology::disks` order.
pub fn run_in(
    topology: &Topology,
    seed: u64,
    ops: u64,
    faults: &[(Duration, Fault)],
) -> (Vec<Outcome>, ClusterDisks) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        .build();
    let disks = ClusterDisks::new(topology);
    add_hosts(&mut sim, &disks);
    let specs = topology.disks();
    let mut results = vec![];
    for (i, spec) in specs.iter().enumerate() {
        let result = Arc::new(Mutex::new(None));
        let checks = Checks {
            disk: spec.clone(),
            agent: disks.of(spec.agent).vfs.clone(),
            mts: topology.mt_hosts().to_vec(),
            durability: disks.durability.clone(),
        };
        // The first disk's workload is the one the single topology always had.
        let wseed = seed ^ (i as u64).wrapping_mul(0x9e37_79b9);
        let name = format!("workload-{}", spec.disk);
        sim.client(name, workload(wseed, ops, checks, result.clone()));
        results.push(result);
    }
    let mut actions = schedule(faults);
    let (mut next, mut cuts) = (0, vec![]);
    loop {
        while next < actions.len() && sim.elapsed() >= actions[next].0 {
            let action = actions[next];
            apply(
                &mut sim,
                &disks,
                faults,
                &action,
                seed.wrapping_add(next as u64),
            );
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => panic!("seed {seed}: simulation failed: {e}"),
        }
        power_cuts(&mut sim, &disks, faults, &mut actions, next, &mut cuts);
    }
    for (at, host) in &cuts {
        eprintln!(
            "seed {seed}: power cut on {host} at {:.3} s",
            at.as_secs_f64()
        );
    }
    let report = disks.durability.report();
    assert!(
        report.violations.is_empty(),
        "seed {seed}: the durability chain broke: {:#?}",
        report.violations
    );
    eprintln!(
        "seed {seed}: {:.1} simulated seconds",
        sim.elapsed().as_secs_f64()
    );
    let outcomes: Vec<Outcome> = results
        .iter()
        .zip(&specs)
        .map(|(r, spec)| {
            let o = r.lock().unwrap().clone();
            let o =
                o.unwrap_or_else(|| panic!("seed {seed}: the workload of {} finished", spec.disk));
            assert!(
                !o.points.is_empty(),
                "seed {seed}: recovery points of {} exist",
                spec.disk
            );
            o
        })
        .collect();
    let syncs = |d: &[Disks]| d.iter().map(|d| d.vfs.stats().syncs).sum::<u64>();
    eprintln!(
        "seed {seed}: {} disks, {} points compared, {} acks / {} cache deletions / {} flushes \
         checked for durability, {} overlapping ops, {} sent in flight; file syncs: ps {}, mt {}",
        outcomes.len(),
        outcomes.iter().map(|o| o.points_compared).sum::<usize>(),
        report.acks,
        report.releases,
        report.flushes,
        outcomes.iter().map(|o| o.overlapping).sum::<u64>(),
        outcomes.iter().map(|o| o.in_flight).sum::<u64>(),
        syncs(&disks.ps),
        syncs(&disks.mt)
    );
    (outcomes, disks)
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

/// What swarm seed `seed` runs: its topology, the ops per disk, and the faults.
#[derive(Clone, Debug)]
pub struct Drawn {
    pub topology: Topology,
    pub ops: u64,
    pub faults: Vec<(Duration, Fault)>,
}

/// The topology, workload length and faults of swarm seed `seed`.
///
/// The topology: one to three agents with one or two disks each, one or two process servers
/// and master targets. The ops: 60 to 120 in all, shared among the disks (at least 30 each).
/// The faults: one to three among power losses of a process server, master target or the
/// configuration server (at a moment, or at a drawn file sync), partitions and holds of any
/// link of the topology, and full disks, starting in the first 1.5 simulated seconds (the
/// workload runs 1 to 10). (Agent power loss is left out: an agent crash loses the writes it
/// held, which marks the replica inconsistent until the resync of the next issue exists.)
pub fn draw(seed: u64) -> Drawn {
    let mut d = Draw(crate::rng::Rng::new(seed ^ 0x7475_726d_6f69_6c21));
    let total_ops = 60 + d.below(61);
    let n = 1 + d.below(3);
    let topology = Topology {
        agents: (0..1 + d.below(3))
            .map(|_| 1 + d.below(2) as usize)
            .collect(),
        pss: 1 + d.below(2) as usize,
        mts: 1 + d.below(2) as usize,
    }
    .bounded();
    let disks = topology.disks().len() as u64;
    let ops = (total_ops / disks).max(30);
    let stores: Vec<&'static str> = topology
        .ps_hosts()
        .iter()
        .chain(topology.mt_hosts())
        .copied()
        .collect();
    let mut crashable = stores.clone();
    crashable.push("cs");
    let links = topology.links();
    let mut faults = vec![];
    for _ in 0..n {
        let at = d.ms(50, 1500);
        let fault = match d.below(5) {
            0 => Fault::Crash {
                host: d.pick(&crashable),
                down: d.ms(200, 2000),
            },
            4 => Fault::PowerCut {
                // The configuration server keeps only redb, which the cut does not reach.
                host: d.pick(&stores),
                sync: 1 + d.below(60),
                down: d.ms(200, 2000),
            },
            1 => {
                let (a, b) = d.pick(&links);
                Fault::Partition {
                    a,
                    b,
                    len: d.ms(300, 3000),
                }
            }
            2 => {
                let (a, b) = d.pick(&links);
                Fault::Hold {
                    a,
                    b,
                    len: d.ms(200, 2000),
                }
            }
            _ => Fault::DiskFull {
                host: d.pick(&stores),
                len: d.ms(300, 2000),
            },
        };
        faults.push((at, fault));
    }
    Drawn {
        topology,
        ops,
        faults,
    }
}
