//! Running one scenario under one seed: the safety phase (the scenario's faults), then the
//! liveness phase (everything healed; replication must converge within the bound).

use crate::cluster::{Cluster, TraceLine};
use crate::scenario::Scenario;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Scheduler steps before a run is declared stuck.
pub const MAX_STEPS: u64 = 20_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: String,
    /// What broke, if anything.
    pub failure: Option<String>,
    /// FNV-1a over every event (time, node, kind) in order.
    pub trace_digest: u64,
    /// The last events, formatted.
    pub tail: Vec<String>,
    pub sim_ms: u64,
    pub steps: u64,
    pub delivered: u64,
    pub writes_completed: u64,
    pub writes_failed: u64,
    /// Summed over the disks, as are the writes and recovery points.
    pub seq_journaled: u64,
    pub recovery_points: u64,
    pub busy: u64,
    pub resets: u64,
    pub crashes: u64,
    pub stops: u64,
    pub agent_crashed: bool,
    pub replica_inconsistent: bool,
    pub max_healthy_rpo_ms: u64,
    /// Where the configuration server placed each disk (durably): `disk ps mt`.
    pub placement: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// The one line printed per seed.
    pub fn line(&self) -> String {
        format!(
            "seed {} {} digest {:016x} sim {}.{:03}s steps {} writes {} points {} resets {} crashes {}",
            self.seed,
            if self.passed() { "pass" } else { "FAIL" },
            self.trace_digest,
            self.sim_ms / 1000,
            self.sim_ms % 1000,
            self.steps,
            self.writes_completed,
            self.recovery_points,
            self.resets,
            self.crashes + self.stops,
        )
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook with one that keeps the message for the run's report instead of
/// printing it (a core assertion then shows up as a failed seed, with its trace).
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
}

pub fn format_line(l: &TraceLine) -> String {
    format!(
        "{:>8}.{:03}s {:<5} {} {}",
        l.ms / 1000,
        l.ms % 1000,
        l.node.name(),
        l.what,
        l.detail
    )
}

/// Runs `scn` under `seed` and checks it.
pub fn run(scn: &Scenario, seed: u64) -> Outcome {
    run_with(scn, seed, |_| {})
}

/// Runs `scn` under `seed` after `setup` adjusts the cluster (say, a checker's tolerance).
pub fn run_with(scn: &Scenario, seed: u64, setup: impl FnOnce(&mut Cluster)) -> Outcome {
    let mut c = Cluster::new(scn, seed);
    setup(&mut c);
    let result = loop_until_done(&mut c);
    let replicas = || c.mt_stores.iter().flat_map(|s| s.replicas.values());
    let inconsistent = replicas().any(|r| r.meta.inconsistent.is_some());
    let wls = || c.disks.iter().map(|d| &d.wl);
    Outcome {
        seed,
        scenario: scn.name.clone(),
        failure: result.err(),
        trace_digest: c.trace.0,
        tail: c.tail.iter().map(format_line).collect(),
        sim_ms: c.ms(),
        steps: c.counters.steps,
        delivered: c.counters.delivered,
        writes_completed: wls().map(|w| w.completed).sum(),
        writes_failed: wls().map(|w| w.failed).sum(),
        seq_journaled: replicas().map(|r| r.durable_seq()).sum(),
        recovery_points: replicas().map(|r| r.points.len() as u64).sum(),
        busy: c.counters.busy,
        resets: c.net.resets,
        crashes: c.counters.crashes.values().sum(),
        stops: c.counters.stops.values().sum(),
        agent_crashed: c.agent_crashed.iter().any(|x| *x),
        replica_inconsistent: inconsistent,
        max_healthy_rpo_ms: c.max_healthy_rpo_ms,
        placement: c.placement(),
    }
}

fn loop_until_done(c: &mut Cluster) -> Result<(), String> {
    // Setup may already emit outputs.
    guarded(c, |c| c.drain())?;
    loop {
        if c.converged() {
            return c.final_check();
        }
        let deadline = c.liveness_deadline();
        if c.events.is_empty() && c.ms() > deadline {
            return Err(format!(
                "liveness: not converged {} ms after the faults healed (at {} ms) and the workload's last progress (at {} ms): {}",
                c.scn.expect.converge_within_ms,
                c.heal_at,
                c.last_progress_ms,
                c.describe()
            ));
        }
        if c.counters.steps >= MAX_STEPS {
            return Err(format!("stuck after {MAX_STEPS} steps: {}", c.describe()));
        }
        guarded(c, |c| c.step())?;
    }
}

fn guarded(
    c: &mut Cluster,
    f: impl FnOnce(&mut Cluster) -> Result<(), String>,
) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| f(c))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("a role panicked: {msg}"))
        }
    }
}

impl Cluster {
    /// Where the configuration server's durable state places each disk: `disk ps mt` (`-`
    /// where nothing is placed yet).
    pub fn placement(&self) -> Vec<String> {
        let durable = &self.cs_store.durable.protections;
        let name = |c: Option<&haven_core::ComponentId>| c.map_or("-", |c| c.as_str()).to_string();
        self.disks
            .iter()
            .map(|d| {
                let p = durable.get(&d.id);
                let ps = name(p.and_then(|p| p.process_server.as_ref()));
                let mt = name(p.and_then(|p| p.master_target.as_ref()));
                format!("{} {ps} {mt}", d.id)
            })
            .collect()
    }

    /// A one-line picture of where replication stands, disk by disk.
    pub fn describe(&self) -> String {
        let mut out = vec![];
        for disk in &self.disks {
            let agent = self.agents[disk.agent].as_ref().map(|a| {
                let s = &a.stats().disks[disk.slot];
                format!(
                    "written {} cached {} applied {} buffered {} connected {}",
                    s.seq_written, s.seq_cached, s.seq_applied, s.buffered_bytes, s.connected
                )
            });
            let mt = match self.replica(&disk.id) {
                Some((i, r)) => format!("mt{} journal through {}", i + 1, r.durable_seq()),
                None => "no replica".into(),
            };
            out.push(format!(
                "{}: agent [{}] {mt}, workload left {} outstanding {}",
                disk.id,
                agent.unwrap_or_else(|| "down".into()),
                disk.wl.left,
                disk.wl.outstanding(),
            ));
        }
        for (i, p) in self.pss.iter().enumerate() {
            let ps = p.as_ref().map(|p| format!("{:?}", p.stats().disks));
            out.push(format!(
                "ps{} [{}]",
                i + 1,
                ps.unwrap_or_else(|| "down".into())
            ));
        }
        for (i, s) in self.mt_stores.iter().enumerate() {
            out.push(format!("mt{} appends pending {}", i + 1, s.pending.len()));
        }
        out.join("; ")
    }
}
