//! Smoke tests of the in-process simulation: a seeded run replicates the workload, and the same
//! seed gives the same trace.

use haven_sim::{run, run_default, swarm, Scenario};

#[test]
fn a_seeded_run_replicates_the_workload() {
    for seed in 1..=3 {
        let o = run_default(seed);
        assert!(
            o.passed(),
            "seed {seed}: {:?}\n{}",
            o.failure,
            o.tail.join("\n")
        );
        let writes = Scenario::default().workload.writes as u64;
        assert!(o.writes_completed >= writes, "seed {seed}: {o:?}");
        assert_eq!(o.seq_journaled, writes, "one seq per write: {o:?}");
        assert!(o.recovery_points > 10, "seed {seed}: {o:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = run_default(42);
    let b = run_default(42);
    assert_eq!(a, b);
    let c = run_default(43);
    assert_ne!(
        a.trace_digest, c.trace_digest,
        "different seeds should differ"
    );
    // With faults too.
    let scn = swarm::scenario_for(23);
    let (x, y) = (run(&scn, 23), run(&scn, 23));
    assert_eq!(x.trace_digest, y.trace_digest);
    assert_eq!(x, y);
}

#[test]
fn a_tight_cache_and_buffer_say_busy_and_still_converge() {
    let mut scn = Scenario::default();
    scn.topology.cache_blocks = 6;
    scn.topology.buffer_blocks = 8;
    scn.topology.batch_blocks = 1;
    scn.workload.depth = 16;
    scn.expect.busy = true;
    let o = run(&scn, 7);
    assert!(o.passed(), "{:?}", o.failure);
    assert!(o.busy > 0, "the cache should fill up: {o:?}");
}

#[test]
fn a_broken_expectation_fails_with_a_trace() {
    let mut scn = Scenario::default();
    scn.expect.stopped.push(haven_sim::Node::Mt(0));
    let o = run(&scn, 1);
    assert!(!o.passed());
    assert!(o.failure.unwrap().contains("expected mt to stop"));
    assert!(!o.tail.is_empty());
}

fn scenario_file(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.scn", env!("CARGO_MANIFEST_DIR"));
    Scenario::parse(&std::fs::read_to_string(&path).expect("readable")).expect("parses")
}

#[test]
fn placement_spreads_disks_over_process_servers_and_master_targets() {
    let scn = scenario_file("many-steady");
    for seed in 0..3 {
        let o = run(&scn, seed);
        assert!(o.passed(), "seed {seed}: {:?}", o.failure);
        assert_eq!(o.placement.len(), 6, "{:?}", o.placement);
        for (role, n) in [("ps", 2), ("mt", 2)] {
            for i in 1..=n {
                let id = format!(" {role}{i}");
                let served = o.placement.iter().filter(|p| p.contains(&id)).count();
                assert!(
                    served >= 2,
                    "seed {seed}: {role}{i} serves {served}: {:?}",
                    o.placement
                );
            }
        }
        // Each disk wrote its own workload, all of it journaled.
        assert_eq!(o.seq_journaled, 6 * scn.workload.writes as u64, "{o:?}");
    }
}

/// `agent_start`: the agents are not running until then, and start exactly then.
#[test]
fn agents_start_when_the_topology_says() {
    let mut scn = scenario_file("many-steady");
    scn.topology.agent_start_ms = 30;
    let mut c = haven_sim::Cluster::new(&scn, 1);
    while c.agents.iter().all(|a| a.is_none()) {
        c.step().expect("runs");
    }
    assert_eq!(c.ms(), 30);
    assert!(c.agents.iter().all(|a| a.is_some()));
}
