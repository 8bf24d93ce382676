//! The cluster: every role's state machines (one configuration server, and as many agents,
//! process servers and master targets as the topology says), their stores, the network and a
//! workload per protected disk, driven by a seeded scheduler on a simulated clock.
//!
//! This file builds the cluster and starts and stops roles; [`crate::schedule`] is the
//! scheduler (what happens next), [`crate::faults`] carries out scenario actions, and
//! [`crate::outputs`] carries out the roles' outputs.

use crate::net::{Net, Node};
use crate::rng::{Fnv, Rng};
use crate::scenario::{Scenario, Topology};
use crate::stores::{AgentStore, CsStore, MtStore, PsStore, Replica};
use crate::workload::Workload;
use haven_core::agent::{Agent, AgentDisk, AgentSettings};
use haven_core::batch::BLOCK_BYTES;
use haven_core::config_server::{ConfigServer, ConfigServerSettings};
use haven_core::master_target::{MasterTarget, MasterTargetSettings};
use haven_core::process_server::{ProcessServer, ProcessServerSettings};
use haven_core::{ComponentId, DiskId, Seq, Timestamp};
use std::collections::{BTreeMap, VecDeque};

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
    pub crashes: BTreeMap<Node, u64>,
    /// Roles stopped by a store fault.
    pub stops: BTreeMap<Node, u64>,
    pub store_answers: u64,
}

/// One protected disk: where it is, its workload (and with it the source's whole history), and
/// what the checkers track of it.
pub struct SimDisk {
    pub id: DiskId,
    /// Which agent (0-based) and which of its disks.
    pub agent: usize,
    pub slot: usize,
    pub wl: Workload,
    /// Highest `cached_seq` a process server promised the agent.
    pub ps_acked: Seq,
    /// Seqs above this belong to the running agent (its reservation when it started).
    pub incarnation_base: Seq,
    /// Healthy, and this disk's replication has caught up since the last fault (its RPO is
    /// checked from then).
    pub caught_up: bool,
}

/// The disk id of an agent's disk: `disk0` for the first agent's first disk (as when there was
/// one), else `a2d0`, `a1d1`... (agent numbered from 1, slot from 0).
pub fn disk_name(agent: usize, slot: usize) -> String {
    if agent == 0 && slot == 0 {
        "disk0".into()
    } else {
        format!("a{}d{slot}", agent + 1)
    }
}

pub struct Cluster {
    pub scn: Scenario,
    pub seed: u64,
    pub(crate) rng: Rng,
    pub now: Timestamp,
    pub start: Timestamp,
    pub agents: Vec<Option<Agent>>,
    pub pss: Vec<Option<ProcessServer>>,
    pub mts: Vec<Option<MasterTarget>>,
    pub cs: Option<ConfigServer>,
    agent_settings: Vec<AgentSettings>,
    ps_settings: Vec<ProcessServerSettings>,
    mt_settings: Vec<MasterTargetSettings>,
    cs_settings: ConfigServerSettings,
    pub net: Net,
    /// Every protected disk, agent by agent (`disk_index` finds one by id).
    pub disks: Vec<SimDisk>,
    pub(crate) disk_index: BTreeMap<DiskId, usize>,
    pub agent_stores: Vec<AgentStore>,
    pub ps_stores: Vec<PsStore>,
    pub mt_stores: Vec<MtStore>,
    pub cs_store: CsStore,
    pub(crate) trace: Fnv,
    pub tail: VecDeque<TraceLine>,
    pub counters: Counters,
    /// Scenario actions still to come (ms since start).
    pub(crate) events: VecDeque<(u64, crate::scenario::Action)>,
    /// When the liveness phase starts (ms since start): after the last scenario action.
    pub heal_at: u64,
    /// When a workload last had a request answered (ms since start).
    pub last_progress_ms: u64,
    /// When the agents start (ms since start), while they have not yet.
    pub agents_start_at: Option<u64>,
    /// Which agents ever crashed (or stopped).
    pub agent_crashed: Vec<bool>,
    /// Since when no fault has been active (None: a fault is active).
    pub healthy_since: Option<Timestamp>,
    pub max_healthy_rpo_ms: u64,
    /// Bytes the process server cache may exceed its bound by (see `CACHE_SLACK`).
    pub cache_slack: u64,
    /// Print every trace line to stderr as it happens.
    pub verbose: bool,
}

fn agent_settings(t: &Topology, n: Node) -> AgentSettings {
    AgentSettings {
        component: ComponentId::new(n.component()).expect("valid"),
        config_server_addr: Node::Cs.addr(),
        batch_bytes_max: t.batch_blocks * BLOCK_BYTES,
        batch_delay_ms: t.batch_delay_ms,
        buffer_bytes_max: t.buffer_blocks * BLOCK_BYTES,
        window_batches_max: t.window,
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 20,
    }
}

fn ps_settings(t: &Topology, n: Node) -> ProcessServerSettings {
    ProcessServerSettings {
        component: ComponentId::new(n.component()).expect("valid"),
        config_server_addr: Node::Cs.addr(),
        data_addr: n.addr(),
        cache_bytes_max: t.cache_blocks * BLOCK_BYTES,
        window_batches_max: t.ps_window,
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 20,
        busy_retry_ms: 5,
    }
}

fn mt_settings(n: Node) -> MasterTargetSettings {
    MasterTargetSettings {
        component: ComponentId::new(n.component()).expect("valid"),
        config_server_addr: Node::Cs.addr(),
        data_addr: n.addr(),
        api_addr: format!("{}.sim:8080", n.component()),
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 20,
    }
}

/// Every disk of the topology with its workload: disk 0 draws from `first` (the stream the
/// single-disk simulation always used), the others from their own forks of `root`.
fn make_disks(scn: &Scenario, root: &mut Rng, first: Rng) -> Vec<SimDisk> {
    let t = &scn.topology;
    let bytes = (t.disk_blocks * BLOCK_BYTES) as usize;
    let mut first = Some(first);
    let mut disks = vec![];
    for agent in 0..t.agents as usize {
        for slot in 0..t.disks as usize {
            let n = disks.len() as u64;
            let rng = first.take().unwrap_or_else(|| root.fork(100 + n));
            disks.push(SimDisk {
                id: DiskId::new(disk_name(agent, slot)).expect("valid"),
                agent,
                slot,
                wl: Workload::new(scn.workload.clone(), rng, bytes, slot),
                ps_acked: 0,
                incarnation_base: 0,
                caught_up: false,
            });
        }
    }
    disks
}

impl Cluster {
    pub fn new(scn: &Scenario, seed: u64) -> Cluster {
        let mut root = Rng::new(seed);
        let net_rng = root.fork(1);
        let wl_rng = root.fork(2);
        let rng = root.fork(3);
        let t = &scn.topology;
        let now = Timestamp::from_millis(1_700_000_000_000);
        let mut net = Net::new(net_rng, &t.nodes());
        net.default_link = scn.link;
        net.detect_ms = scn.detect_ms;
        let disks = make_disks(scn, &mut root, wl_rng);
        let (agents, pss, mts) = (t.agents as usize, t.ps as usize, t.mt as usize);
        let mut c = Cluster {
            seed,
            rng,
            now,
            start: now,
            agents: (0..agents).map(|_| None).collect(),
            pss: (0..pss).map(|_| None).collect(),
            mts: (0..mts).map(|_| None).collect(),
            cs: None,
            agent_settings: (0..t.agents)
                .map(|i| agent_settings(t, Node::Agent(i)))
                .collect(),
            ps_settings: (0..t.ps).map(|i| ps_settings(t, Node::Ps(i))).collect(),
            mt_settings: (0..t.mt).map(|i| mt_settings(Node::Mt(i))).collect(),
            cs_settings: ConfigServerSettings {
                rules: vec![],
                heartbeat_timeout_ms: 5_000,
                auto_protect: true,
            },
            cs_store: CsStore::default(),
            net,
            disk_index: disks
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id.clone(), i))
                .collect(),
            disks,
            agent_stores: (0..agents)
                .map(|_| AgentStore::new(t.disks as usize))
                .collect(),
            ps_stores: (0..pss).map(|_| PsStore::default()).collect(),
            mt_stores: (0..mts).map(|_| MtStore::default()).collect(),
            trace: Fnv::default(),
            tail: VecDeque::new(),
            counters: Counters::default(),
            events: scn.events.iter().cloned().collect(),
            heal_at: scn
                .events
                .last()
                .map_or(0, |(t, _)| *t)
                .max(t.agent_start_ms),
            agents_start_at: (t.agent_start_ms > 0).then_some(t.agent_start_ms),
            last_progress_ms: 0,
            agent_crashed: vec![false; agents],
            healthy_since: scn.events.is_empty().then_some(now),
            max_healthy_rpo_ms: 0,
            cache_slack: CACHE_SLACK,
            verbose: false,
            scn: scn.clone(),
        };
        for d in &mut c.disks {
            d.wl.next_arrival = now;
        }
        c.start_all();
        c
    }

    /// The configuration server first, then master targets, process servers and (unless they
    /// start later) agents.
    fn start_all(&mut self) {
        let t = &self.scn.topology;
        let mut order = vec![Node::Cs];
        order.extend((0..t.mt).map(Node::Mt));
        order.extend((0..t.ps).map(Node::Ps));
        if self.agents_start_at.is_none() {
            order.extend((0..t.agents).map(Node::Agent));
        }
        for n in order {
            self.start_role(n);
        }
    }

    /// The liveness phase must converge by then (ms since start): the bound counts from the
    /// heal, or from the workloads' last progress if they are still running (a slow workload is
    /// not a failure to converge; one that stops making progress is).
    pub fn liveness_deadline(&self) -> u64 {
        self.heal_at.max(self.last_progress_ms) + self.scn.expect.converge_within_ms
    }

    pub fn ms(&self) -> u64 {
        self.now.millis_since(self.start)
    }

    pub fn up(&self, n: Node) -> bool {
        match n {
            Node::Agent(i) => self.agents[i as usize].is_some(),
            Node::Ps(i) => self.pss[i as usize].is_some(),
            Node::Mt(i) => self.mts[i as usize].is_some(),
            Node::Cs => self.cs.is_some(),
        }
    }

    /// Every node of the topology.
    pub fn nodes(&self) -> Vec<Node> {
        self.scn.topology.nodes()
    }

    /// Nodes that should be running when no fault is active: all, but the agents only once
    /// they have started.
    pub fn started_nodes(&self) -> Vec<Node> {
        let mut v = self.nodes();
        if self.agents_start_at.is_some() {
            v.retain(|n| !matches!(n, Node::Agent(_)));
        }
        v
    }

    /// The disks of agent `a` (indexes into `disks`).
    pub fn disks_of(&self, a: usize) -> std::ops::Range<usize> {
        let n = self.scn.topology.disks as usize;
        a * n..(a + 1) * n
    }

    /// The replica of `disk` and the master target (0-based) that holds it, if one does.
    pub fn replica(&self, disk: &DiskId) -> Option<(usize, &Replica)> {
        self.mt_stores
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.replicas.get(disk).map(|r| (i, r)))
    }

    /// Through which seq the journal of `disk` is durable (0 without a replica).
    pub fn journal_seq(&self, disk: &DiskId) -> Seq {
        self.replica(disk).map_or(0, |(_, r)| r.durable_seq())
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
            Node::Agent(a) => {
                let a = a as usize;
                let mut list = vec![];
                for d in self.disks_of(a) {
                    let disk = &mut self.disks[d];
                    let reserved = self.agent_stores[a].reserved[disk.slot];
                    disk.incarnation_base = reserved;
                    // The simulated disks start as zeros on both sides: nothing to copy.
                    list.push(AgentDisk {
                        resume: None,
                        disk: disk.id.clone(),
                        size_bytes: disk.wl.source.len() as u64,
                        reserved,
                        copied: Some(haven_core::Epoch(0)), // copied, under no recorded epoch: never again
                    });
                }
                let settings = self.agent_settings[a].clone();
                self.agents[a] = Some(Agent::new(settings, list, now));
            }
            Node::Ps(i) => {
                let i = i as usize;
                let (metas, cached) = self.ps_stores[i].recover();
                let settings = self.ps_settings[i].clone();
                self.pss[i] = Some(ProcessServer::new(settings, metas, cached, now));
            }
            Node::Mt(i) => {
                let i = i as usize;
                let metas = self.mt_stores[i].recover();
                let settings = self.mt_settings[i].clone();
                self.mts[i] = Some(MasterTarget::new(settings, metas, now));
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
            Node::Agent(a) => {
                let a = a as usize;
                self.agents[a] = None;
                self.agent_stores[a].crash();
                for d in self.disks_of(a) {
                    self.disks[d].wl.agent_crashed();
                }
                self.agent_crashed[a] = true;
            }
            Node::Ps(i) => {
                self.pss[i as usize] = None;
                self.ps_stores[i as usize].crash();
            }
            Node::Mt(i) => {
                self.mts[i as usize] = None;
                self.mt_stores[i as usize].crash();
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

    pub(crate) fn store_latency(&mut self) -> Timestamp {
        let (a, b) = self.scn.topology.store_latency_ms;
        self.now.plus_millis(self.rng.range(a, b))
    }
}
