//! The turmoil level's swarm: the real drivers under faults drawn from each seed (power losses,
//! partitions, holds, full disks; see `faults::draw`). Every run must converge with the newest
//! recovery point byte-equal to the workload's model. CI runs `TURMOIL_SWARM_SEEDS` seeds
//! (default 24); a failing seed prints its faults, and `TURMOIL_SWARM_FIRST=N` with
//! `TURMOIL_SWARM_SEEDS=1` replays it alone.

use haven_sim::turmoil_level::faults::{draw, run};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn turmoil_swarm_of_drawn_faults() {
    let first = env("TURMOIL_SWARM_FIRST", 1000);
    let seeds = env("TURMOIL_SWARM_SEEDS", 24);
    let started = std::time::Instant::now();
    for seed in first..first + seeds {
        let (ops, faults) = draw(seed);
        eprintln!("turmoil swarm seed {seed}: {ops} ops, faults {faults:?}");
        let outcome = run(seed, ops, &faults);
        assert!(
            outcome.points.windows(2).all(|w| w[0].seq < w[1].seq),
            "seed {seed}: points out of order"
        );
    }
    eprintln!(
        "turmoil swarm: {seeds} seeds from {first} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
