//! The turmoil level: the real drivers on simulated hosts, with crashes, partitions and a full
//! disk. Every run ends with the newest recovery point read back through the master target's
//! API and compared byte for byte with the workload's model of the disk.

use haven_sim::turmoil_level::faults::{run, run_with, Fault};
use std::time::Duration;

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

/// Found a bug (fixed): store directories were created without syncing their parents, so a
/// power loss right after a replica was created lost its directory and journal. Checked
/// 2026-12-03 by reverting the fix (`vfs::create_dir_all_durable` in runtime/src/vfs/mod.rs
/// syncing no parent, or only runtime/src/stores/replica.rs using a plain `create_dir_all`):
/// this test fails with "the replica never converged to the source" (the replica says writes
/// 1..=56 were lost).
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

/// A power loss exactly at a fsync (the writes of that round reached the page cache, the sync
/// never happened), at several moments of the stream: nothing acknowledged may be lost. The
/// `sync` numbers are spread over the run (in 80 ops a master target and a process server each sync files about 40-60 times).
#[test]
fn power_cut_at_a_sync_loses_nothing() {
    for (seed, host, sync) in [
        (31, "mt", 5),
        (32, "mt", 25),
        (33, "mt", 35),
        (34, "ps", 9),
        (35, "ps", 45),
        (36, "ps", 30),
    ] {
        let (_, disks) = run_with(
            seed,
            80,
            &[(
                ms(100),
                Fault::PowerCut {
                    host,
                    sync,
                    down: ms(700),
                },
            )],
        );
        let d = disks.of(host);
        assert_eq!(
            d.vfs.stats().crashes,
            1,
            "seed {seed}: the power cut at sync {sync} of {host} happened"
        );
    }
}

/// Found a bug (fixed): a stream whose packets were lost in a partition hung forever (TCP alone
/// does not notice a silent peer); agents and process servers now reopen a stream that waited
/// `STREAM_STALL_MS` for an answer. Checked 2026-12-03 by reverting the fix: with the agent's
/// stall check off (`on_timers`, core/src/agent/handle.rs) this test does not end (stopped
/// after 180 s of wall time; with both checks off, after 15 min), so the fast checks are
/// `a_stream_that_goes_silent_is_reopened` in core/tests/agent.rs and
/// `a_master_target_stream_that_goes_silent_is_reopened` in core/tests/process_server.rs; with
/// only the process server's check off this test passes, and the core test fails.
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
    let stops = disks.mt[0].stops.lock().unwrap().clone();
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
        !disks.ps[0].stops.lock().unwrap().is_empty(),
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
