//! A swarm of seeds (VOPR style): each draws its configuration and fault rates, runs the
//! faults, heals, and must converge. Split in four so that test threads share the work.

use haven_sim::{run, swarm};

fn swarm_range(seeds: std::ops::Range<u64>) {
    let mut failed = vec![];
    for seed in seeds {
        let scn = swarm::scenario_for(seed);
        let o = run(&scn, seed);
        if let Some(f) = &o.failure {
            failed.push(format!(
                "{}\n  {f}\n  {}\n  replay: cargo run --release -p haven-sim -- swarm --seed {seed}\n{}",
                o.line(),
                o.tail.join("\n  "),
                scn.to_script()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn swarm_0_50() {
    swarm_range(0..50);
}

#[test]
fn swarm_50_100() {
    swarm_range(50..100);
}

#[test]
fn swarm_100_150() {
    swarm_range(100..150);
}

#[test]
fn swarm_150_200() {
    swarm_range(150..200);
}

#[test]
fn swarm_draws_faults() {
    let with_faults = (0..50)
        .filter(|s| swarm::scenario_for(*s).events.len() > 1)
        .count();
    assert!(with_faults > 30, "{with_faults} of 50 seeds have faults");
}
