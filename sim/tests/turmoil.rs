//! The turmoil level: the real drivers on simulated hosts, with crashes and partitions.

use haven_sim::turmoil_level::cluster::{add_hosts, workload, ClusterDisks, Outcome};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault applied when simulated time passes `at`.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Power loss of a host (unsynced data dropped) and its restart `down` later.
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
}

fn run(seed: u64, ops: u64, faults: &[(Duration, Fault)]) -> Outcome {
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
    // (time, action): actions are applied between steps, in time order.
    let mut actions: Vec<(Duration, &'static str, &'static str, &'static str)> = vec![];
    for (at, f) in faults {
        match *f {
            Fault::Crash { host, down } => {
                actions.push((*at, "crash", host, ""));
                actions.push((*at + down, "restart", host, ""));
            }
            Fault::Partition { a, b, len } => {
                actions.push((*at, "partition", a, b));
                actions.push((*at + len, "repair", a, b));
            }
            Fault::Hold { a, b, len } => {
                actions.push((*at, "hold", a, b));
                actions.push((*at + len, "release", a, b));
            }
        }
    }
    actions.sort_by_key(|a| a.0);
    let mut next = 0;
    loop {
        while next < actions.len() && sim.elapsed() >= actions[next].0 {
            let (_, what, a, b) = actions[next];
            match what {
                "crash" => {
                    sim.crash(a);
                    let d = match a {
                        "ps" => &disks.ps,
                        "mt" => &disks.mt,
                        "cs" => &disks.cs,
                        _ => &disks.agent,
                    };
                    d.crash(seed.wrapping_add(next as u64));
                }
                "restart" => sim.bounce(a),
                "partition" => sim.partition(a, b),
                "hold" => sim.hold(a, b),
                "release" => sim.release(a, b),
                _ => sim.repair(a, b),
            }
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => panic!("seed {seed}: simulation failed: {e}\nreplay: cargo test -p haven-sim --test turmoil"),
        }
    }
    let outcome = result
        .lock()
        .unwrap()
        .clone()
        .expect("the workload finished");
    assert!(
        !outcome.points.is_empty(),
        "seed {seed}: recovery points exist"
    );
    outcome
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
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
    let f = Fault::Crash {
        host: "ps",
        down: Duration::from_millis(1500),
    };
    run(11, 80, &[(Duration::from_millis(700), f)]);
}

#[test]
fn master_target_power_loss_loses_nothing() {
    let f = Fault::Crash {
        host: "mt",
        down: Duration::from_millis(1500),
    };
    run(12, 80, &[(Duration::from_millis(700), f)]);
}

#[test]
fn partitions_heal_and_replication_resumes() {
    let faults = [
        (
            Duration::from_millis(500),
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
fn configuration_server_restart_is_harmless() {
    let f = Fault::Crash {
        host: "cs",
        down: secs(1),
    };
    run(14, 60, &[(Duration::from_millis(600), f)]);
}

#[test]
fn same_seed_same_outcome() {
    let faults = [(
        Duration::from_millis(600),
        Fault::Crash {
            host: "ps",
            down: secs(1),
        },
    )];
    let a = run(21, 50, &faults);
    let b = run(21, 50, &faults);
    assert_eq!(a, b, "a seed must replay exactly (points, times and image)");
}
