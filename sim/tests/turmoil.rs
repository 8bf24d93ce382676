//! The turmoil level: the real drivers on simulated hosts, with crashes, partitions and a full
//! disk. Every run ends with the newest recovery point read back through the master target's
//! API and compared byte for byte with the workload's model of the disk.

use haven_sim::storage::FaultKind;
use haven_sim::turmoil_level::cluster::{add_hosts, workload, ClusterDisks, Disks, Outcome};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault applied when simulated time passes its start.
#[derive(Clone, Copy, Debug)]
enum Fault {
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

fn run_with(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> (Outcome, ClusterDisks) {
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

fn run(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> Outcome {
    run_with(seed, ops, faults).0
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

#[test]
fn steady_replication_converges() {
    for seed in 0..2 {
        let o = run(seed, 60, &[]);
        assert!(
            o.points.windows(2).all(|w| w[0].seq < w[1].seq),
            "points are ordered"
        );
    }
}

#[test]
fn process_server_power_loss_loses_nothing() {
    run(
        11,
        80,
        &[(
            ms(700),
            Fault::Crash {
                host: "ps",
                down: ms(1500),
            },
        )],
    );
}

#[test]
fn master_target_power_loss_loses_nothing() {
    run(
        12,
        80,
        &[(
            ms(700),
            Fault::Crash {
                host: "mt",
                down: ms(1500),
            },
        )],
    );
}

#[test]
fn partitions_heal_and_replication_resumes() {
    let faults = [
        (
            ms(500),
            Fault::Partition {
                a: "agent",
                b: "ps",
                len: secs(2),
            },
        ),
        (
            secs(3),
            Fault::Partition {
                a: "ps",
                b: "mt",
                len: secs(3),
            },
        ),
        (
            secs(7),
            Fault::Hold {
                a: "cs",
                b: "ps",
                len: secs(2),
            },
        ),
        (
            secs(10),
            Fault::Hold {
                a: "agent",
                b: "ps",
                len: secs(1),
            },
        ),
    ];
    run(13, 120, &faults);
}

#[test]
fn master_target_disk_full_stops_it_and_it_recovers() {
    let (_, disks) = run_with(
        15,
        80,
        &[(
            ms(500),
            Fault::DiskFull {
                host: "mt",
                len: secs(2),
            },
        )],
    );
    let stops = disks.mt.stops.lock().unwrap().clone();
    assert!(
        !stops.is_empty(),
        "the master target stopped on the full disk"
    );
    assert!(
        stops.iter().all(|s| s.contains("master-target")),
        "{stops:?}"
    );
}

#[test]
fn process_server_disk_full_stops_it_and_it_recovers() {
    let (_, disks) = run_with(
        16,
        80,
        &[(
            ms(500),
            Fault::DiskFull {
                host: "ps",
                len: secs(2),
            },
        )],
    );
    assert!(
        !disks.ps.stops.lock().unwrap().is_empty(),
        "the process server stopped on the full disk"
    );
}

#[test]
fn configuration_server_restart_is_harmless() {
    // The configuration server is down while the workload writes and comes back before it ends.
    let (o, disks) = run_with(
        14,
        150,
        &[(
            ms(200),
            Fault::Crash {
                host: "cs",
                down: ms(300),
            },
        )],
    );
    assert!(o.points.len() > 1);
    assert!(disks.cs.stops.lock().unwrap().is_empty());
}

#[test]
fn same_seed_same_outcome() {
    let faults = [(
        ms(600),
        Fault::Crash {
            host: "ps",
            down: secs(1),
        },
    )];
    let a = run(21, 50, &faults);
    let b = run(21, 50, &faults);
    assert_eq!(a, b, "a seed must replay exactly (points, times and image)");
}
