//! The turmoil level's swarm: the real drivers in a topology and under faults drawn from each
//! seed (one to three agents with one or two disks each, one or two process servers and master
//! targets; power losses, partitions, holds, full disks; see `faults::draw`). Every disk's run
//! must converge with its newest recovery point byte-equal to its workload's model, and every
//! listed point equal to the model at its seq. CI runs `TURMOIL_SWARM_SEEDS` seeds (default
//! 24); a failing seed prints its topology and faults, and `TURMOIL_SWARM_FIRST=N` with
//! `TURMOIL_SWARM_SEEDS=1` replays it alone.

use haven_sim::turmoil_level::faults::{draw, run_in};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn turmoil_swarm_of_drawn_topologies_and_faults() {
    let first = env("TURMOIL_SWARM_FIRST", 1000);
    let seeds = env("TURMOIL_SWARM_SEEDS", 24);
    let started = std::time::Instant::now();
    let mut shapes = std::collections::BTreeSet::new();
    // Seeds whose disks landed on more than one master target (placement spreads them).
    let mut spread = 0;
    for seed in first..first + seeds {
        let d = draw(seed);
        eprintln!(
            "turmoil swarm seed {seed}: {:?}, {} ops per disk, faults {:?}",
            d.topology, d.ops, d.faults
        );
        let (outcomes, _) = run_in(&d.topology, seed, d.ops, &d.faults);
        assert_eq!(outcomes.len(), d.topology.disks().len());
        for (o, spec) in outcomes.iter().zip(d.topology.disks()) {
            assert!(
                o.points.windows(2).all(|w| w[0].seq < w[1].seq),
                "seed {seed}: points of {} out of order",
                spec.disk
            );
        }
        shapes.insert((d.topology.agents.len(), d.topology.pss, d.topology.mts));
        let mts: std::collections::BTreeSet<_> = outcomes.iter().map(|o| o.master_target).collect();
        spread += usize::from(mts.len() > 1);
    }
    eprintln!(
        "turmoil swarm: {seeds} seeds from {first} in {:.1} s, {} shapes (agents, process \
         servers, master targets): {shapes:?}",
        started.elapsed().as_secs_f64(),
        shapes.len()
    );
    if seeds >= 6 {
        assert!(
            shapes.len() > 1,
            "the swarm drew one shape only: {shapes:?}"
        );
        assert!(
            spread > 0,
            "no seed spread its disks over two master targets"
        );
    }
}
