//! Swarm runs (VOPR style): per seed, draw the topology (how many agents, disks, process
//! servers, master targets), the configuration and the fault rates at random, then a fault
//! schedule from those rates over every node and link; the safety phase runs it, then
//! everything heals and the liveness phase requires convergence. A swarm seed is a scenario: `scenario_for(seed)`
//! prints as a script that replays the same run with `haven-sim run FILE --seed SEED`.

use crate::net::LinkParams;
use crate::rng::Rng;
use crate::scenario::{Action, Expect, Scenario, Topology};
use crate::workload::WorkloadParams;

/// Fault rates drawn for one seed, in events per 1000 simulated seconds... per 100 ms step,
/// in thousandths.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub partition: u64,
    pub crash: u64,
    pub link: u64,
    pub storage: u64,
}

/// How many of each: agents, disks per agent, process servers, master targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub agents: u8,
    pub disks: u8,
    pub ps: u8,
    pub mt: u8,
    /// See `Topology::agent_start_ms`.
    pub agent_start_ms: u64,
}

impl Shape {
    /// One of each (the topology every swarm seed had before there were several).
    pub const ONE: Shape = Shape {
        agents: 1,
        disks: 1,
        ps: 1,
        mt: 1,
        agent_start_ms: 0,
    };

    /// A quarter of the seeds one of each (as every seed was before); the others up to 3
    /// agents with up to 3 disks each, 2 process servers and 2 master targets. The shape has
    /// its own random stream, so that every other draw of a seed is as it was.
    pub fn draw(seed: u64) -> Shape {
        let mut r = Rng::new(seed ^ 0x5348_4150_4500_0000);
        if r.chance(25) {
            return Shape::ONE;
        }
        Shape {
            agents: r.range(1, 3) as u8,
            disks: r.range(1, 3) as u8,
            ps: r.range(1, 2) as u8,
            mt: r.range(1, 2) as u8,
            // Half the time the agents may register before some servers have.
            agent_start_ms: if r.chance(50) { 0 } else { r.range(5, 200) },
        }
    }

    pub fn disks(&self) -> u64 {
        self.agents as u64 * self.disks as u64
    }
}

/// The scenario of swarm seed `seed`.
pub fn scenario_for(seed: u64) -> Scenario {
    scenario_with(seed, Shape::draw(seed))
}

/// The scenario swarm seed `seed` had when every topology was one of each (the regression
/// tests replay seeds found then).
pub fn scenario_single(seed: u64) -> Scenario {
    scenario_with(seed, Shape::ONE)
}

/// The scenario of `seed` with the given shape: every other setting and the fault rates are
/// drawn from the seed alone, the faults over the shape's nodes.
pub fn scenario_with(seed: u64, shape: Shape) -> Scenario {
    let mut r = Rng::new(seed ^ 0x5157_4152_4d00_0000);
    let disk_blocks = r.range(16, 128);
    let batch_blocks = r.range(1, 6);
    let topology = Topology {
        agents: shape.agents,
        disks: shape.disks,
        ps: shape.ps,
        mt: shape.mt,
        disk_blocks,
        buffer_blocks: r.range(2, 48),
        cache_blocks: batch_blocks + r.range(4, 64),
        batch_blocks,
        batch_delay_ms: r.range(1, 20),
        window: r.range(1, 6) as usize,
        ps_window: r.range(1, 5) as usize,
        store_latency_ms: (0, r.range(0, 5)),
        agent_start_ms: shape.agent_start_ms,
    };
    let rate = if r.chance(30) { 0 } else { r.range(100, 2000) };
    let workload = WorkloadParams {
        // The writes are shared out over the disks, so that a seed takes about as long
        // whatever its shape.
        writes: (r.range(50, 400) / shape.disks()).max(20) as usize,
        rate,
        depth: r.range(1, 16) as usize,
        flush: r.range(0, 10),
        max_blocks: r.range(1, 6).min(disk_blocks / 2),
    };
    let link = LinkParams {
        delay_min_ms: 0,
        delay_max_ms: r.range(0, 5),
        reset_per_mille: 0,
    };
    let rates = Rates {
        partition: r.range(0, 150),
        crash: r.range(0, 60),
        link: r.range(0, 150),
        storage: r.range(0, 30),
    };
    let safety_ms = r.range(500, 5000);
    let events = schedule(&mut r, rates, safety_ms, &topology);
    Scenario {
        name: format!("swarm seed {seed}"),
        topology,
        workload,
        link,
        detect_ms: (r.range(50, 500), r.range(500, 3000)),
        events,
        expect: Expect {
            converge_within_ms: 60_000,
            ..Expect::default()
        },
    }
}

/// A fault schedule over `safety_ms`: each 100 ms step, each kind of fault starts with its
/// rate; each fault ends (heal, restart, clear) after a drawn duration; at the end all heals.
pub fn schedule(r: &mut Rng, rates: Rates, safety_ms: u64, topo: &Topology) -> Vec<(u64, Action)> {
    let (links, nodes, stores) = (topo.links(), topo.nodes(), topo.store_nodes());
    let pick = |r: &mut Rng, n: usize| r.below(n as u64) as usize;
    let mut ev = Vec::new();
    let mut t = 0;
    while t < safety_ms {
        if r.chance_per_mille(rates.partition) {
            let (a, b) = links[pick(r, links.len())];
            ev.push((t, Action::Partition(a, b)));
            ev.push((t + r.range(10, 3000), Action::Heal(a, b)));
        }
        if r.chance_per_mille(rates.crash) {
            let n = nodes[pick(r, nodes.len())];
            ev.push((t, Action::Crash(n)));
            ev.push((t + r.range(0, 2000), Action::Restart(n)));
        }
        if r.chance_per_mille(rates.link) {
            let (a, b) = links[pick(r, links.len())];
            let lo = r.range(0, 100);
            let p = LinkParams {
                delay_min_ms: lo,
                delay_max_ms: lo + r.range(0, 300),
                reset_per_mille: if r.chance(50) { r.range(1, 100) } else { 0 },
            };
            ev.push((t, Action::Link(a, b, Some(p))));
            ev.push((t + r.range(10, 3000), Action::Link(a, b, None)));
        }
        if r.chance_per_mille(rates.storage) {
            let n = stores[pick(r, stores.len())];
            let f = if r.chance(50) {
                Action::DiskFull(n)
            } else {
                Action::IoError(n)
            };
            let until = t + r.range(10, 2000);
            ev.push((t, f));
            ev.push((until, Action::Clear(n)));
            ev.push((until + r.range(0, 500), Action::Restart(n)));
        }
        t += 100;
    }
    ev.push((
        ev.iter().map(|e| e.0).max().unwrap_or(0).max(safety_ms),
        Action::HealAll,
    ));
    ev.sort_by_key(|e| e.0);
    ev
}
