//! The cluster: the four roles' state machines, their stores, the network and the workload,
//! driven by a seeded scheduler on a simulated clock.
//!
//! Each step the scheduler picks, with the seeded PRNG, one of the things that can happen now:
//! deliver the next event of some connection direction, answer the oldest pending request of
//! some store, or submit a workload request; now and then (and whenever nothing can happen) the
//! clock jumps to the next instant something is due, firing timers and scenario faults.

use crate::net::{Net, Node, Ready};
use crate::rng::{Fnv, Rng};
use crate::scenario::{Action, Scenario};
use crate::stores::{AgentAnswer, AgentStore, CsStore, DiskFault, MtStore, PsStore};
use crate::workload::Workload;
use haven_core::agent::{self, Agent, AgentSettings};
use haven_core::batch::BLOCK_BYTES;
use haven_core::config_server::{self as cs, ConfigServer, ConfigServerSettings};
use haven_core::machine::tick_if_due;
use haven_core::master_target::{self as mt, MasterTarget, MasterTargetSettings};
use haven_core::net::NetEvent;
use haven_core::process_server::{self as ps, ProcessServer, ProcessServerSettings};
use haven_core::protocol::Message;
use haven_core::{ComponentId, DiskId, Machine, Seq, Timestamp};
use std::collections::VecDeque;

pub type R = Result<(), String>;

pub const TAIL_LINES: usize = 40;

/// Bytes the process server cache may exceed its bound by: none (the quota counts whole
/// frames since the bug that `tests/regressions.rs` replays was fixed).
pub const CACHE_SLACK: u64 = 0;

/// One line of the trace tail (formatted only when a run fails).
#[derive(Clone, Debug)]
pub struct TraceLine {
    pub ms: u64,
    pub node: Node,
    pub what: &'static str,
    pub detail: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub steps: u64,
    pub delivered: u64,
    pub busy: u64,
    pub crashes: [u64; 4],
    /// Roles stopped by a store fault.
    pub stops: [u64; 4],
    pub store_answers: u64,
}

pub struct Cluster {
    pub scn: Scenario,
    pub seed: u64,
    pub(crate) rng: Rng,
    pub now: Timestamp,
    pub start: Timestamp,
    pub agent: Option<Agent>,
    pub ps: Option<ProcessServer>,
    pub mt: Option<MasterTarget>,
    pub cs: Option<ConfigServer>,
    agent_settings: AgentSettings,
    ps_settings: ProcessServerSettings,
    mt_settings: MasterTargetSettings,
    cs_settings: ConfigServerSettings,
    pub net: Net,
    pub wl: Workload,
    pub agent_store: AgentStore,
    pub ps_store: PsStore,
    pub mt_store: MtStore,
    pub cs_store: CsStore,
    pub(crate) trace: Fnv,
    pub tail: VecDeque<TraceLine>,
    pub counters: Counters,
    /// Scenario actions still to come (ms since start).
    pub(crate) events: VecDeque<(u64, Action)>,
    /// When the liveness phase starts (ms since start): after the last scenario action.
    pub heal_at: u64,
    /// When the workload last had a request answered (ms since start).
    pub last_progress_ms: u64,
    /// Highest `cached_seq` the process server promised the agent.
    pub ps_acked: Seq,
    pub agent_crashed: bool,
    /// Seqs above this belong to the running agent (its reservation when it started).
    pub incarnation_base: Seq,
    /// Since when no fault has been active (None: a fault is active).
    pub healthy_since: Option<Timestamp>,
    /// Healthy, and replication has caught up since the last fault (RPO is checked from then).
    pub caught_up: bool,
    pub max_healthy_rpo_ms: u64,
    /// Bytes the process server cache may exceed its bound by (see `CACHE_SLACK`).
    pub cache_slack: u64,
    /// Print every trace line to stderr as it happens.
    pub verbose: bool,
    pub(crate) disk: DiskId,
}

impl Cluster {
    pub fn new(scn: &Scenario, seed: u64) -> Cluster {
        let mut root = Rng::new(seed);
        let net_rng = root.fork(1);
        let wl_rng = root.fork(2);
        let rng = root.fork(3);
        let t = &scn.topology;
        let b = BLOCK_BYTES;
        let cs_addr = Node::Cs.addr().to_string();
        let now = Timestamp::from_millis(1_700_000_000_000);
        let mut net = Net::new(net_rng);
        net.default_link = scn.link;
        net.detect_ms = scn.detect_ms;
        let heal_at = scn.events.last().map_or(0, |(t, _)| *t);
        let mut c = Cluster {
            seed,
            rng,
            now,
            start: now,
            agent: None,
            ps: None,
            mt: None,
            cs: None,
            agent_settings: AgentSettings {
                component: ComponentId::new("agent1").expect("valid"),
                config_server_addr: cs_addr.clone(),
                batch_bytes_max: t.batch_blocks * b,
                batch_delay_ms: t.batch_delay_ms,
                buffer_bytes_max: t.buffer_blocks * b,
                window_batches_max: t.window,
                heartbeat_interval_ms: 500,
                reconnect_delay_ms: 20,
            },
            ps_settings: ProcessServerSettings {
                component: ComponentId::new("ps1").expect("valid"),
                config_server_addr: cs_addr.clone(),
                data_addr: Node::Ps.addr().into(),
                cache_bytes_max: t.cache_blocks * b,
                window_batches_max: t.ps_window,
                heartbeat_interval_ms: 500,
                reconnect_delay_ms: 20,
                busy_retry_ms: 5,
            },
            mt_settings: MasterTargetSettings {
                component: ComponentId::new("mt1").expect("valid"),
                config_server_addr: cs_addr,
                data_addr: Node::Mt.addr().into(),
                api_addr: "mt1.sim:8080".into(),
                heartbeat_interval_ms: 500,
                reconnect_delay_ms: 20,
            },
            cs_settings: ConfigServerSettings {
                rules: vec![],
                heartbeat_timeout_ms: 5_000,
                auto_protect: true,
            },
            cs_store: CsStore::default(),
            net,
            wl: Workload::new(scn.workload.clone(), wl_rng, (t.disk_blocks * b) as usize),
            agent_store: AgentStore::default(),
            ps_store: PsStore::default(),
            mt_store: MtStore::default(),
            trace: Fnv::default(),
            tail: VecDeque::new(),
            counters: Counters::default(),
            events: scn.events.iter().cloned().collect(),
            heal_at,
            last_progress_ms: 0,
            ps_acked: 0,
            agent_crashed: false,
            incarnation_base: 0,
            healthy_since: scn.events.is_empty().then_some(now),
            max_healthy_rpo_ms: 0,
            caught_up: false,
            cache_slack: CACHE_SLACK,
            verbose: false,
            disk: DiskId::new("disk0").expect("valid"),
            scn: scn.clone(),
        };
        c.wl.next_arrival = now;
        for n in [Node::Cs, Node::Mt, Node::Ps, Node::Agent] {
            c.start_role(n);
        }
        c
    }

    /// The liveness phase must converge by then (ms since start): the bound counts from the
    /// heal, or from the workload's last progress if it is still running (a slow workload is
    /// not a failure to converge; one that stops making progress is).
    pub fn liveness_deadline(&self) -> u64 {
        self.heal_at.max(self.last_progress_ms) + self.scn.expect.converge_within_ms
    }

    pub fn ms(&self) -> u64 {
        self.now.millis_since(self.start)
    }

    pub fn up(&self, n: Node) -> bool {
        match n {
            Node::Agent => self.agent.is_some(),
            Node::Ps => self.ps.is_some(),
            Node::Mt => self.mt.is_some(),
            Node::Cs => self.cs.is_some(),
        }
    }

    pub(crate) fn note(&mut self, node: Node, what: &'static str, detail: u64) {
        let ms = self.ms();
        self.trace.write_u64(ms);
        self.trace.write(&[node.index() as u8]);
        self.trace.write(what.as_bytes());
        self.trace.write_u64(detail);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let line = TraceLine {
            ms,
            node,
            what,
            detail,
        };
        if self.verbose {
            eprintln!("{}", crate::run::format_line(&line));
        }
        self.tail.push_back(line);
    }

    /// Builds a role from what its store holds durably.
    fn start_role(&mut self, n: Node) {
        let now = self.now;
        self.net.restart(n);
        match n {
            Node::Agent => {
                let bytes = self.wl.source.len() as u64;
                self.incarnation_base = self.agent_store.reserved;
                let disks = vec![(self.disk.clone(), bytes, self.agent_store.reserved)];
                self.agent = Some(Agent::new(self.agent_settings.clone(), disks, now));
            }
            Node::Ps => {
                let (metas, cached) = self.ps_store.recover();
                self.ps = Some(ProcessServer::new(
                    self.ps_settings.clone(),
                    metas,
                    cached,
                    now,
                ));
            }
            Node::Mt => {
                let metas = self.mt_store.recover();
                self.mt = Some(MasterTarget::new(self.mt_settings.clone(), metas, now));
            }
            Node::Cs => {
                let state = self.cs_store.durable.clone();
                self.cs = Some(ConfigServer::new(self.cs_settings.clone(), state, now));
            }
        }
    }

    /// A role stops (crash, or a storage error): its state machine and everything its stores
    /// had not synced are gone.
    pub fn stop(&mut self, n: Node, what: &'static str) {
        if !self.up(n) {
            return;
        }
        match n {
            Node::Agent => {
                self.agent = None;
                self.agent_store.crash();
                self.wl.agent_crashed();
                self.agent_crashed = true;
            }
            Node::Ps => {
                self.ps = None;
                self.ps_store.crash();
            }
            Node::Mt => {
                self.mt = None;
                self.mt_store.crash();
            }
            Node::Cs => {
                self.cs = None;
                self.cs_store.crash();
            }
        }
        self.net.crash(n, self.now);
        self.note(n, what, 0);
    }

    pub fn restart(&mut self, n: Node) -> R {
        if self.up(n) {
            return Ok(());
        }
        self.note(n, "restart", 0);
        self.start_role(n);
        self.drain()
    }

    pub fn apply(&mut self, a: Action) -> R {
        let now = self.now;
        match a {
            Action::Partition(x, y) => {
                self.note(x, "partition", y.index() as u64);
                self.net.partition(x, y, now);
            }
            Action::Heal(x, y) => {
                self.note(x, "heal", y.index() as u64);
                self.net.heal(x, y);
            }
            Action::HealAll => {
                self.note(Node::Cs, "heal all", 0);
                self.net.heal_all();
                for n in Node::ALL {
                    self.set_fault(n, None);
                }
                for n in Node::ALL {
                    self.restart(n)?;
                }
            }
            Action::Crash(n) => {
                self.counters.crashes[n.index()] += 1;
                self.stop(n, "crash");
            }
            Action::Restart(n) => self.restart(n)?,
            Action::Link(x, y, p) => {
                let detail = p.map_or(0, |p| p.delay_max_ms << 16 | p.reset_per_mille);
                self.note(x, "link", detail);
                self.net.set_link(x, y, p);
            }
            Action::DiskFull(n) => {
                self.note(n, "disk full", 0);
                self.set_fault(n, Some(DiskFault::Full));
            }
            Action::IoError(n) => {
                self.note(n, "io error", 0);
                self.set_fault(n, Some(DiskFault::Io));
            }
            Action::Clear(n) => {
                self.note(n, "clear", 0);
                self.set_fault(n, None);
            }
        }
        self.update_health();
        Ok(())
    }

    fn set_fault(&mut self, n: Node, f: Option<DiskFault>) {
        match n {
            Node::Agent => self.agent_store.fault = f,
            Node::Ps => self.ps_store.fault = f,
            Node::Mt => self.mt_store.fault = f,
            Node::Cs => {}
        }
    }

    pub fn faulty(&self) -> bool {
        self.net.faulty()
            || Node::ALL.iter().any(|n| !self.up(*n))
            || self.agent_store.fault.is_some()
            || self.ps_store.fault.is_some()
            || self.mt_store.fault.is_some()
    }

    pub(crate) fn update_health(&mut self) {
        if self.faulty() {
            self.healthy_since = None;
            self.caught_up = false;
        } else if self.healthy_since.is_none() {
            self.healthy_since = Some(self.now);
        }
    }

    pub(crate) fn store_latency(&mut self) -> Timestamp {
        let (a, b) = self.scn.topology.store_latency_ms;
        self.now.plus_millis(self.rng.range(a, b))
    }

    /// One scheduler step.
    pub fn step(&mut self) -> R {
        #[derive(Clone, Copy)]
        enum Choice {
            Net(Ready),
            Store(Node),
        }
        self.counters.steps += 1;
        let now = self.now;
        let mut ready = Vec::new();
        self.net.ready(now, &mut ready);
        let mut choices: Vec<Choice> = ready.into_iter().map(Choice::Net).collect();
        if self.agent.is_some() && self.agent_store.pending.ready(now) {
            choices.push(Choice::Store(Node::Agent));
        }
        if self.ps.is_some() && self.ps_store.pending.ready(now) {
            choices.push(Choice::Store(Node::Ps));
        }
        if self.mt.is_some() && self.mt_store.pending.ready(now) {
            choices.push(Choice::Store(Node::Mt));
        }
        if self.cs.is_some() && self.cs_store.pending.ready(now) {
            choices.push(Choice::Store(Node::Cs));
        }
        let can_submit = self.agent.is_some() && self.wl.can_submit(now);
        if choices.is_empty() && !can_submit || self.rng.chance(3) {
            return self.advance(!choices.is_empty() || can_submit);
        }
        if can_submit && (choices.is_empty() || self.rng.chance(15)) {
            return self.submit();
        }
        match choices[self.rng.below(choices.len() as u64) as usize] {
            Choice::Net(r) => {
                let Some((to, ev)) = self.net.pop(r, now) else {
                    return Ok(());
                };
                self.deliver(to, ev)
            }
            Choice::Store(n) => self.answer(n),
        }
    }

    /// Lets time pass: to the next instant something is due (1 ms if something is due now).
    fn advance(&mut self, busy: bool) -> R {
        let mut next = self.now.plus_millis(1);
        if !busy {
            let mut t: Option<Timestamp> = None;
            let mut min = |x: Option<Timestamp>| {
                if let Some(x) = x {
                    t = Some(t.map_or(x, |t| t.min(x)));
                }
            };
            min(self
                .events
                .front()
                .map(|(ms, _)| self.start.plus_millis(*ms)));
            min(self.net.next_due());
            if self.agent.is_some() {
                min(self.agent_store.pending.next_due());
                min(self.wl.next_due());
            }
            if self.ps.is_some() {
                min(self.ps_store.pending.next_due());
            }
            if self.mt.is_some() {
                min(self.mt_store.pending.next_due());
            }
            if self.cs.is_some() {
                min(self.cs_store.pending.next_due());
            }
            min(self.agent.as_ref().and_then(|a| a.poll_timeout()));
            min(self.ps.as_ref().and_then(|a| a.poll_timeout()));
            min(self.mt.as_ref().and_then(|a| a.poll_timeout()));
            min(self.cs.as_ref().and_then(|a| a.poll_timeout()));
            // Never jump past the liveness deadline.
            min(Some(self.start.plus_millis(self.liveness_deadline() + 1)));
            next = next.max(t.unwrap_or(next));
        }
        self.now = next;
        let now = next;
        while self
            .events
            .front()
            .is_some_and(|(ms, _)| self.start.plus_millis(*ms) <= now)
        {
            let (_, a) = self.events.pop_front().expect("front");
            self.apply(a)?;
            if self.events.is_empty() && self.faulty() {
                // The schedule is over: heal everything; the liveness phase starts.
                self.apply(Action::HealAll)?;
            }
        }
        self.net.on_time(now);
        // Each role whose deadline is due gets its tick.
        self.agent.as_mut().map(|m| tick_if_due(m, now));
        self.ps.as_mut().map(|m| tick_if_due(m, now));
        self.mt.as_mut().map(|m| tick_if_due(m, now));
        self.cs.as_mut().map(|m| tick_if_due(m, now));
        self.drain()?;
        self.check_limits()
    }

    fn submit(&mut self) -> R {
        let input = self.wl.next_request(self.now);
        let now = self.now;
        self.agent.as_mut().expect("up").handle(now, input);
        self.drain()
    }

    fn deliver(&mut self, to: Node, ev: NetEvent) -> R {
        let (what, detail) = match &ev {
            NetEvent::Received { msg, conn, .. } => {
                self.counters.delivered += 1;
                if matches!(msg, Message::Busy { .. }) {
                    self.counters.busy += 1;
                }
                (msg.kind(), conn.0)
            }
            NetEvent::Connected { conn, .. } => ("Connected", conn.0),
            NetEvent::Accepted { conn, .. } => ("Accepted", conn.0),
            NetEvent::Closed { conn, .. } => ("Closed", conn.0),
            NetEvent::ConnectFailed { token, .. } => ("ConnectFailed", *token),
        };
        self.note(to, what, detail);
        let now = self.now;
        fn feed<M: Machine>(m: Option<&mut M>, now: Timestamp, ev: NetEvent) {
            if let Some(m) = m {
                m.handle(now, M::net(ev));
            }
        }
        match to {
            Node::Cs => feed(self.cs.as_mut(), now, ev),
            Node::Ps => feed(self.ps.as_mut(), now, ev),
            Node::Mt => feed(self.mt.as_mut(), now, ev),
            Node::Agent => feed(self.agent.as_mut(), now, ev),
        }
        self.drain()
    }

    /// A store answers its oldest pending request: what it stands for is now durable.
    fn answer(&mut self, n: Node) -> R {
        self.counters.store_answers += 1;
        let now = self.now;
        match n {
            Node::Agent => {
                let a = self.agent_store.complete().expect("ready");
                let agent = self.agent.as_mut().expect("up");
                match a {
                    AgentAnswer::SourceDone { io, version, data } => {
                        agent.handle(now, agent::Input::SourceDone { io, data });
                        let seq = agent.stats().disks[0].seq_written;
                        if self.wl.seq_version.insert(seq, version).is_some() {
                            return Err(format!("the agent assigned seq {seq} twice"));
                        }
                        self.note(n, "SourceDone", seq);
                    }
                    AgentAnswer::SourceFailed { io, error } => {
                        agent.handle(now, agent::Input::SourceFailed { io, error });
                        self.note(n, "SourceFailed", io);
                    }
                    AgentAnswer::Synced { io } => {
                        agent.handle(now, agent::Input::Synced { io });
                        self.note(n, "Synced", io);
                    }
                    AgentAnswer::Reserved { disk, reserved } => {
                        agent.handle(now, agent::Input::Reserved { disk, reserved });
                        self.note(n, "Reserved", reserved);
                    }
                }
            }
            Node::Ps => {
                let (id, loc, bytes) = self.ps_store.complete().expect("ready");
                self.note(n, "CachePersisted", id);
                let input = ps::Input::CachePersisted { id, loc, bytes };
                self.ps.as_mut().expect("up").handle(now, input);
            }
            Node::Mt => {
                let (id, journal_bytes, index) = self.mt_store.complete().expect("ready");
                self.note(n, "JournalPersisted", id);
                self.check_point(index)?;
                let input = mt::Input::JournalPersisted { id, journal_bytes };
                self.mt.as_mut().expect("up").handle(now, input);
            }
            Node::Cs => {
                let id = self.cs_store.complete().expect("ready");
                self.note(n, "Persisted", id);
                let input = cs::Input::Persisted { id };
                self.cs.as_mut().expect("up").handle(now, input);
            }
        }
        self.drain()
    }

    /// Carries out every output of every role until none is left.
    pub(crate) fn drain(&mut self) -> R {
        loop {
            let mut any = false;
            while let Some(o) = self.agent.as_mut().and_then(|r| r.poll_output()) {
                any = true;
                self.agent_output(o)?;
            }
            while let Some(o) = self.ps.as_mut().and_then(|r| r.poll_output()) {
                any = true;
                self.ps_output(o)?;
            }
            while let Some(o) = self.mt.as_mut().and_then(|r| r.poll_output()) {
                any = true;
                self.mt_output(o)?;
            }
            while let Some(o) = self.cs.as_mut().and_then(|r| r.poll_output()) {
                any = true;
                self.cs_output(o)?;
            }
            if !any {
                return Ok(());
            }
        }
    }
}
