//! proptest strategies for workloads and fault schedules. A failing case shrinks to a minimal
//! schedule, printed as a scenario script (save it as a .scn file and replay it with
//! `haven-sim run FILE --seed N`).

use haven_sim::{run, Action, LinkParams, Node, Scenario, Topology, WorkloadParams};
use proptest::prelude::*;

/// The pairs of nodes that talk to each other, in the topology these cases run (one of each).
const LINKS: usize = 5;

/// A fault and how long it lasts.
#[derive(Clone, Debug)]
enum Fault {
    Partition(usize),
    Crash(usize),
    Link(usize, u64, u64),
    DiskFull(usize),
    IoError(usize),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..LINKS).prop_map(Fault::Partition),
        (0..4usize).prop_map(Fault::Crash),
        (0..LINKS, 0..200u64, 0..50u64).prop_map(|(l, d, r)| Fault::Link(l, d, r)),
        (0..3usize).prop_map(Fault::DiskFull),
        (0..3usize).prop_map(Fault::IoError),
    ]
}

fn workload() -> impl Strategy<Value = WorkloadParams> {
    (20..200usize, 0..1000u64, 1..12usize, 0..10u64, 1..5u64).prop_map(
        |(writes, rate, depth, flush, max_blocks)| WorkloadParams {
            writes,
            // 0: as fast as the queue allows; else at least 50 requests per second.
            rate: if rate < 50 { 0 } else { rate },
            depth,
            flush,
            max_blocks,
        },
    )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        workload(),
        prop::collection::vec((0..2000u64, 1..1500u64, fault()), 0..6),
    )
        .prop_map(|(workload, faults)| {
            let mut events = vec![];
            let topology = Topology::default();
            let links = topology.links();
            assert_eq!(links.len(), LINKS);
            let store_node = |i: usize| topology.store_nodes()[i];
            for (at, len, f) in faults {
                let end = at + len;
                match f {
                    Fault::Partition(l) => {
                        let (a, b) = links[l];
                        events.push((at, Action::Partition(a, b)));
                        events.push((end, Action::Heal(a, b)));
                    }
                    Fault::Crash(n) => {
                        events.push((at, Action::Crash(Node::ALL[n])));
                        events.push((end, Action::Restart(Node::ALL[n])));
                    }
                    Fault::Link(l, delay, loss) => {
                        let (a, b) = links[l];
                        let p = LinkParams {
                            delay_min_ms: 0,
                            delay_max_ms: delay,
                            reset_per_mille: loss,
                        };
                        events.push((at, Action::Link(a, b, Some(p))));
                        events.push((end, Action::Link(a, b, None)));
                    }
                    Fault::DiskFull(n) | Fault::IoError(n) => {
                        let n = store_node(n);
                        let a = if matches!(f, Fault::DiskFull(_)) {
                            Action::DiskFull(n)
                        } else {
                            Action::IoError(n)
                        };
                        events.push((at, a));
                        events.push((end, Action::Clear(n)));
                        events.push((end + 100, Action::Restart(n)));
                    }
                }
            }
            events.sort_by_key(|e| e.0);
            Scenario {
                name: "proptest".into(),
                workload,
                events,
                ..Scenario::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        // Failures are saved to proptest_faults.proptest-regressions (the default file beside
        // this one) and replayed first on every run.
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_fault_schedule_keeps_every_promise(scn in scenario(), seed in 0..1000u64) {
        let o = run(&scn, seed);
        prop_assert!(
            o.passed(),
            "{:?}\n--- minimal scenario (seed {seed}) ---\n{}",
            o.failure,
            scn.to_script()
        );
    }
}
