//! A swarm of seeds (VOPR style): each draws its topology, configuration and fault rates, runs
//! the faults, heals, and must converge. Split in four so that test threads share the work.
//! (140 seeds: since seeds draw topologies of up to nine disks, a seed costs about 1.5 times
//! what it did with one disk, and 140 take about as long as 200 did.)

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
fn swarm_0_35() {
    swarm_range(0..35);
}

#[test]
fn swarm_35_70() {
    swarm_range(35..70);
}

#[test]
fn swarm_70_105() {
    swarm_range(70..105);
}

#[test]
fn swarm_105_140() {
    swarm_range(105..140);
}

#[test]
fn swarm_draws_topologies() {
    let shapes: Vec<swarm::Shape> = (0..200).map(swarm::Shape::draw).collect();
    let one = shapes.iter().filter(|s| **s == swarm::Shape::ONE).count();
    assert!((25..=80).contains(&one), "{one} of 200 seeds one of each");
    assert!(shapes
        .iter()
        .any(|s| s.agents == 3 && s.disks == 3 && s.ps == 2 && s.mt == 2));
    assert!(shapes
        .iter()
        .all(|s| s.agents <= 3 && s.disks <= 3 && s.ps <= 2 && s.mt <= 2));
}

#[test]
fn swarm_draws_faults() {
    let with_faults = (0..50)
        .filter(|s| swarm::scenario_for(*s).events.len() > 1)
        .count();
    assert!(with_faults > 30, "{with_faults} of 50 seeds have faults");
}
