//! haven-sim: deterministic, in-process simulation of a Haven installation.
//!
//! This is the first smoke harness: one agent, one process server, one master target and one
//! configuration server, all haven-core state machines, driven by a seeded scheduler with no
//! runtime, no sockets and no clock. Each step the scheduler picks, with a seeded PRNG, one of:
//! deliver the next frame of some connection direction (order is kept per direction, frames go
//! through the real framing), answer the oldest pending storage request of some role (answers
//! keep their emission order per role), submit a workload write, or let a millisecond pass.
//!
//! Along the way it checks the durability chain (no `BatchAck`/`Applied` ahead of what storage
//! has synced), that the master target journals every seq exactly once and in order, that the
//! ops of seq `n` are the `n`-th write carried out on the source disk, and that the replica at
//! every consistent batch boundary equals the source disk as it was at that seq. At the end the
//! replica must equal the source. A violated check panics with the seed.

pub mod storage;
pub mod turmoil_level;

use haven_core::agent::{self, Agent, AgentSettings, IoId, SourceOp};
use haven_core::batch::{BatchHeader, Encoding, OpKind, BLOCK_BYTES};
use haven_core::config_server::{self as cs, ConfigServer, ConfigServerSettings};
use haven_core::master_target::{self as mt, MasterTarget, MasterTargetSettings};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::process_server::{
    self as ps, CacheDiskMeta, CacheLoc, CachedBatch, ProcessServer, ProcessServerSettings,
};
use haven_core::protocol::{self, Hello, Message, Role, PROTOCOL_VERSION};
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Seq, Timestamp};
use std::collections::{BTreeMap, VecDeque};

const B: usize = BLOCK_BYTES as usize;

/// xorshift64*: small, seeded, deterministic. Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread the seed so that small seeds differ in every bit; never zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-enough in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// 64-bit FNV-1a.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
}

/// A cheap fingerprint of a disk image (FNV over 8-byte words).
pub fn image_digest(img: &[u8]) -> u64 {
    let mut h = Fnv::default().0;
    for w in img.chunks(8) {
        let mut x = [0u8; 8];
        x[..w.len()].copy_from_slice(w);
        h ^= u64::from_le_bytes(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Cs,
    Ps,
    Mt,
    Agent,
}

impl Node {
    pub const ALL: [Node; 4] = [Node::Cs, Node::Ps, Node::Mt, Node::Agent];

    pub fn addr(self) -> &'static str {
        match self {
            Node::Cs => "cs.sim:7000",
            Node::Ps => "ps1.sim:7001",
            Node::Mt => "mt1.sim:7002",
            Node::Agent => "agent1.sim:-",
        }
    }

    pub fn hello(self) -> Hello {
        let (role, name) = match self {
            Node::Cs => (Role::ConfigServer, "cs"),
            Node::Ps => (Role::ProcessServer, "ps1"),
            Node::Mt => (Role::MasterTarget, "mt1"),
            Node::Agent => (Role::Agent, "agent1"),
        };
        Hello {
            version: PROTOCOL_VERSION,
            role,
            component: ComponentId::new(name).expect("valid"),
            epoch: Epoch(0),
        }
    }

    fn index(self) -> u8 {
        self as u8
    }
}

/// What a run looks like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Workload writes (a flush every so often comes on top).
    pub writes: usize,
    pub disk_blocks: usize,
    /// Most workload requests outstanding at once (the NBD queue depth).
    pub queue_depth: usize,
    /// Scheduler steps before the run is declared stuck.
    pub max_steps: u64,
    pub agent: AgentSettings,
    pub process_server: ProcessServerSettings,
    pub master_target: MasterTargetSettings,
    pub config_server: ConfigServerSettings,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        let cs_addr = Node::Cs.addr().to_string();
        SimConfig {
            seed,
            writes: 300,
            disk_blocks: 64,
            queue_depth: 8,
            max_steps: 2_000_000,
            agent: AgentSettings {
                component: ComponentId::new("agent1").expect("valid"),
                config_server_addr: cs_addr.clone(),
                batch_bytes_max: 4 * BLOCK_BYTES,
                batch_delay_ms: 5,
                buffer_bytes_max: 32 * BLOCK_BYTES,
                window_batches_max: 4,
                heartbeat_interval_ms: 500,
                reconnect_delay_ms: 20,
            },
            process_server: ProcessServerSettings {
                component: ComponentId::new("ps1").expect("valid"),
                config_server_addr: cs_addr.clone(),
                data_addr: Node::Ps.addr().into(),
                cache_bytes_max: 64 * BLOCK_BYTES,
                window_batches_max: 3,
                heartbeat_interval_ms: 500,
                reconnect_delay_ms: 20,
                busy_retry_ms: 5,
            },
            master_target: MasterTargetSettings {
                component: ComponentId::new("mt1").expect("valid"),
                config_server_addr: cs_addr,
                data_addr: Node::Mt.addr().into(),
                api_addr: "mt1.sim:8080".into(),
                heartbeat_interval_ms: 500,
                reconnect_delay_ms: 20,
            },
            config_server: ConfigServerSettings {
                rules: vec![],
                heartbeat_timeout_ms: 5_000,
            },
        }
    }
}

/// The outcome of a run that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    /// FNV-1a of the sequence of delivered messages (receiver and kind).
    pub trace_digest: u64,
    pub delivered: u64,
    pub steps: u64,
    pub sim_millis: u64,
    pub writes_completed: u64,
    pub seq_applied: Seq,
    pub journal_appends: u64,
    pub recovery_points: u64,
    pub busy: u64,
}

enum Answer {
    Agent(agent::Input),
    Ps(ps::Input),
    Mt(mt::Input),
}

struct Conn {
    ends: (Node, Node),
    open: bool,
}

/// One source write as the agent carried it out.
struct SourceRecord {
    span: (u64, u32),
    aligned_zero: bool,
}

pub struct Cluster {
    pub cfg: SimConfig,
    rng: Rng,
    pub now: Timestamp,
    start: Timestamp,
    pub agent: Agent,
    pub ps: ProcessServer,
    pub mt: MasterTarget,
    pub cs: ConfigServer,

    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    /// Frames and connection events in flight, per (connection, receiver): order kept.
    wires: BTreeMap<(ConnId, Node), VecDeque<NetEvent>>,
    /// ConnectFailed and other events that belong to no connection.
    loose: VecDeque<(Node, NetEvent)>,
    /// Storage answers not yet given, per role, in emission order.
    answers: BTreeMap<Node, VecDeque<Answer>>,
    trace: Fnv,
    pub delivered: u64,
    pub steps: u64,
    busy: u64,

    // Workload and agent storage.
    pub source: Vec<u8>,
    /// Digest of the source right after seq n (index 0: before any write).
    source_at: Vec<u64>,
    source_ops: Vec<SourceRecord>,
    next_io: IoId,
    workload_left: usize,
    outstanding: usize,
    pub completed: u64,

    // Process server storage.
    cache: BTreeMap<CacheLoc, Vec<u8>>,
    cache_index: Vec<CachedBatch>,
    ps_meta: BTreeMap<DiskId, CacheDiskMeta>,
    next_loc: u64,
    cache_synced_seq: Seq,

    // Master target storage.
    pub replica: Vec<u8>,
    journal_seq: Seq,
    /// Highest seq whose journal append is reported synced.
    journal_synced_seq: Seq,
    /// Journal appends not yet reported synced: id -> last seq.
    journal_unsynced: BTreeMap<u64, Seq>,
    journal_bytes: u64,
    journal_appends: u64,
    recovery_points: u64,
}

impl Cluster {
    pub fn new(cfg: SimConfig) -> Cluster {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let disk_bytes = cfg.disk_blocks * B;
        let disk = DiskId::new("disk0").expect("valid");
        let mut c = Cluster {
            rng: Rng::new(cfg.seed),
            now,
            start: now,
            agent: Agent::new(cfg.agent.clone(), vec![(disk, disk_bytes as u64, 0)], now),
            ps: ProcessServer::new(cfg.process_server.clone(), vec![], vec![], now),
            mt: MasterTarget::new(cfg.master_target.clone(), vec![], now),
            cs: ConfigServer::new(cfg.config_server.clone(), now),
            conns: BTreeMap::new(),
            next_conn: 1,
            wires: BTreeMap::new(),
            loose: VecDeque::new(),
            answers: BTreeMap::new(),
            trace: Fnv::default(),
            delivered: 0,
            steps: 0,
            busy: 0,
            source: vec![0; disk_bytes],
            source_at: vec![image_digest(&vec![0; disk_bytes])],
            source_ops: vec![],
            next_io: 1,
            workload_left: cfg.writes,
            outstanding: 0,
            completed: 0,
            cache: BTreeMap::new(),
            cache_index: vec![],
            ps_meta: BTreeMap::new(),
            next_loc: 0,
            cache_synced_seq: 0,
            replica: vec![],
            journal_seq: 0,
            journal_synced_seq: 0,
            journal_unsynced: BTreeMap::new(),
            journal_bytes: 0,
            journal_appends: 0,
            recovery_points: 0,
            cfg,
        };
        c.drain();
        c
    }

    fn fail(&self, what: String) -> ! {
        panic!("sim seed {}: step {}: {what}", self.cfg.seed, self.steps)
    }

    /// Runs the whole workload and then until every write is applied; checks the replica.
    pub fn run(mut self) -> Report {
        while !self.done() {
            if self.steps >= self.cfg.max_steps {
                let st = self.agent.stats();
                self.fail(format!(
                    "stuck: agent {st:?}, journal at {}",
                    self.journal_seq
                ));
            }
            self.step();
        }
        if self.replica != self.source {
            self.fail("the replica differs from the source at the end".into());
        }
        let st = &self.agent.stats().disks[0];
        Report {
            seed: self.cfg.seed,
            trace_digest: self.trace.0,
            delivered: self.delivered,
            steps: self.steps,
            sim_millis: self.now.millis_since(self.start),
            writes_completed: self.completed,
            seq_applied: st.seq_applied,
            journal_appends: self.journal_appends,
            recovery_points: self.recovery_points,
            busy: self.busy,
        }
    }

    pub fn done(&self) -> bool {
        if self.workload_left > 0 || self.outstanding > 0 {
            return false;
        }
        let st = &self.agent.stats().disks[0];
        st.buffered_bytes == 0
            && st.seq_applied == st.seq_written
            && self.journal_synced_seq == st.seq_written
    }

    /// One scheduler step.
    pub fn step(&mut self) {
        self.steps += 1;
        let wires: Vec<(ConnId, Node)> = self
            .wires
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        let stores: Vec<Node> = self
            .answers
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        let can_submit = self.workload_left > 0 && self.outstanding < self.cfg.queue_depth;
        let pending = wires.len() + stores.len() + self.loose.len();
        // Time passes now and then, and always when nothing else can happen.
        if pending == 0 && !can_submit || self.rng.chance(3) {
            return self.tick();
        }
        if can_submit && (pending == 0 || self.rng.chance(15)) {
            return self.submit();
        }
        let pick = self.rng.below(pending as u64) as usize;
        if pick < wires.len() {
            let key = wires[pick];
            let ev = self
                .wires
                .get_mut(&key)
                .and_then(|q| q.pop_front())
                .expect("non-empty");
            if self.wires[&key].is_empty() && !self.conns[&key.0].open {
                self.wires.remove(&key);
            }
            self.deliver(key.1, ev);
        } else if pick < wires.len() + stores.len() {
            let node = stores[pick - wires.len()];
            let a = self
                .answers
                .get_mut(&node)
                .and_then(|q| q.pop_front())
                .expect("non-empty");
            self.answer(a);
        } else {
            let (to, ev) = self.loose.pop_front().expect("non-empty");
            self.deliver(to, ev);
        }
    }

    fn tick(&mut self) {
        self.now = self.now.plus_millis(1);
        let now = self.now;
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle(now, agent::Input::Tick);
        }
        if self.ps.poll_timeout().is_some_and(|t| t <= now) {
            self.ps.handle(now, ps::Input::Tick);
        }
        if self.mt.poll_timeout().is_some_and(|t| t <= now) {
            self.mt.handle(now, mt::Input::Tick);
        }
        if self.cs.poll_timeout().is_some_and(|t| t <= now) {
            self.cs.handle(now, cs::Input::Tick);
        }
        self.drain();
    }

    // ---- workload ----

    fn submit(&mut self) {
        let disk_bytes = self.source.len() as u64;
        let io = self.next_io;
        self.next_io += 1;
        self.outstanding += 1;
        let rng = &mut self.rng;
        let input = if rng.chance(5) {
            agent::Input::Flush { io, disk: 0 }
        } else {
            self.workload_left -= 1;
            let (op, fua) = match rng.below(10) {
                0..=3 => {
                    let blocks = 1 + rng.below(4);
                    let off = rng.below(disk_bytes / BLOCK_BYTES - blocks + 1) * BLOCK_BYTES;
                    let mut data = vec![0; (blocks * BLOCK_BYTES) as usize];
                    rng.fill(&mut data);
                    (SourceOp::Write { offset: off, data }, false)
                }
                4..=6 => {
                    let len = 1 + rng.below(3 * BLOCK_BYTES);
                    let off = rng.below(disk_bytes - len + 1);
                    let mut data = vec![0; len as usize];
                    rng.fill(&mut data);
                    (SourceOp::Write { offset: off, data }, rng.chance(20))
                }
                7 => {
                    let blocks = 1 + rng.below(3);
                    let off = rng.below(disk_bytes / BLOCK_BYTES - blocks + 1) * BLOCK_BYTES;
                    (
                        SourceOp::Zero {
                            offset: off,
                            len: blocks * BLOCK_BYTES,
                            punch: rng.chance(50),
                        },
                        false,
                    )
                }
                _ => {
                    let len = 1 + rng.below(2 * BLOCK_BYTES);
                    let off = rng.below(disk_bytes - len + 1);
                    (
                        SourceOp::Zero {
                            offset: off,
                            len,
                            punch: false,
                        },
                        false,
                    )
                }
            };
            agent::Input::Write {
                io,
                disk: 0,
                op,
                fua,
            }
        };
        self.agent.handle(self.now, input);
        self.drain();
    }

    // ---- delivery ----

    fn deliver(&mut self, to: Node, ev: NetEvent) {
        if let NetEvent::Received { msg, .. } = &ev {
            self.delivered += 1;
            self.trace.write(&[to.index()]);
            self.trace.write(msg.kind().as_bytes());
            if matches!(msg, Message::Busy { .. }) {
                self.busy += 1;
            }
        }
        let now = self.now;
        match to {
            Node::Cs => self.cs.handle(now, cs::Input::Net(ev)),
            Node::Ps => self.ps.handle(now, ps::Input::Net(ev)),
            Node::Mt => self.mt.handle(now, mt::Input::Net(ev)),
            Node::Agent => self.agent.handle(now, agent::Input::Net(ev)),
        }
        self.drain();
    }

    fn answer(&mut self, a: Answer) {
        let now = self.now;
        match a {
            Answer::Agent(i) => self.agent.handle(now, i),
            Answer::Ps(i) => {
                if let ps::Input::CachePersisted { loc, .. } = &i {
                    self.cache_persisted(*loc);
                }
                self.ps.handle(now, i)
            }
            Answer::Mt(i) => {
                if let mt::Input::JournalPersisted { id, .. } = &i {
                    let seq = self
                        .journal_unsynced
                        .remove(id)
                        .unwrap_or_else(|| self.fail("unknown journal append".into()));
                    self.journal_synced_seq = self.journal_synced_seq.max(seq);
                }
                self.mt.handle(now, i)
            }
        }
        self.drain();
    }

    fn queue_answer(&mut self, node: Node, a: Answer) {
        self.answers.entry(node).or_default().push_back(a);
    }

    /// Carries out every output of every role until none is left.
    fn drain(&mut self) {
        loop {
            let mut any = false;
            while let Some(o) = self.agent.poll_output() {
                any = true;
                self.agent_output(o);
            }
            while let Some(o) = self.ps.poll_output() {
                any = true;
                self.ps_output(o);
            }
            while let Some(o) = self.mt.poll_output() {
                any = true;
                self.mt_output(o);
            }
            while let Some(cs::Output::Net(cmd)) = self.cs.poll_output() {
                any = true;
                self.net_cmd(Node::Cs, cmd);
            }
            if !any {
                return;
            }
        }
    }

    fn push_wire(&mut self, conn: ConnId, to: Node, ev: NetEvent) {
        self.wires.entry((conn, to)).or_default().push_back(ev);
    }

    fn other_end(&self, conn: ConnId, me: Node) -> Node {
        let (a, b) = self.conns[&conn].ends;
        if a == me {
            b
        } else {
            a
        }
    }

    fn net_cmd(&mut self, from: Node, cmd: NetCommand) {
        match cmd {
            NetCommand::Connect { token, addr } => {
                let Some(to) = Node::ALL
                    .into_iter()
                    .find(|n| n.addr() == addr && *n != Node::Agent)
                else {
                    self.loose.push_back((
                        from,
                        NetEvent::ConnectFailed {
                            token,
                            reason: format!("no host {addr}"),
                        },
                    ));
                    return;
                };
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                self.conns.insert(
                    conn,
                    Conn {
                        ends: (from, to),
                        open: true,
                    },
                );
                // The acceptor hears of the connection before any frame on it.
                self.push_wire(
                    conn,
                    to,
                    NetEvent::Accepted {
                        conn,
                        peer: from.hello(),
                    },
                );
                self.push_wire(
                    conn,
                    from,
                    NetEvent::Connected {
                        token,
                        conn,
                        peer: to.hello(),
                    },
                );
            }
            NetCommand::Send { conn, msg, data } => {
                if !self.conns.get(&conn).is_some_and(|c| c.open) {
                    return;
                }
                let to = self.other_end(conn, from);
                self.check_promise(from, &msg);
                let frame = protocol::encode(&msg, &data)
                    .unwrap_or_else(|e| self.fail(format!("encode: {e}")));
                let (msg, data, _) = protocol::decode(&frame)
                    .unwrap_or_else(|e| self.fail(format!("decode: {e}")))
                    .unwrap_or_else(|| self.fail("a whole frame does not decode".into()));
                self.push_wire(conn, to, NetEvent::Received { conn, msg, data });
            }
            NetCommand::Close { conn } => {
                let Some(c) = self.conns.get_mut(&conn).filter(|c| c.open) else {
                    return;
                };
                c.open = false;
                let (a, b) = c.ends;
                for n in [a, b] {
                    self.push_wire(
                        conn,
                        n,
                        NetEvent::Closed {
                            conn,
                            reason: format!("closed by {from:?}"),
                        },
                    );
                }
            }
        }
    }

    /// The durability chain: no acknowledgement runs ahead of what storage has synced.
    fn check_promise(&self, from: Node, msg: &Message) {
        let (cached, applied) = match (from, msg) {
            (
                Node::Ps,
                Message::BatchAck {
                    cached_seq,
                    applied_seq,
                    ..
                },
            ) => (*cached_seq, *applied_seq),
            (
                Node::Ps | Node::Mt,
                Message::StreamState {
                    cached_seq,
                    applied_seq,
                    ..
                },
            ) => (*cached_seq, *applied_seq),
            (Node::Mt, Message::Applied { applied_seq, .. }) => (0, *applied_seq),
            _ => return,
        };
        let cached_limit = if from == Node::Mt {
            self.journal_synced_seq
        } else {
            self.cache_synced_seq
        };
        if cached > cached_limit || applied > self.journal_synced_seq {
            let (c, j) = (self.cache_synced_seq, self.journal_synced_seq);
            self.fail(format!(
                "{from:?} promised {msg:?} with cache synced through {c} and journal through {j}"
            ));
        }
    }

    // ---- storage ----

    fn agent_output(&mut self, o: agent::Output) {
        match o {
            agent::Output::Net(cmd) => self.net_cmd(Node::Agent, cmd),
            agent::Output::SourceWrite { io, op, .. } => {
                // Carried out now, in emission order; the answer may come later.
                match &op {
                    SourceOp::Write { offset, data } => {
                        let o = *offset as usize;
                        self.source[o..o + data.len()].copy_from_slice(data);
                    }
                    SourceOp::Zero { offset, len, .. } => {
                        let o = *offset as usize;
                        self.source[o..o + *len as usize].fill(0);
                    }
                }
                let span = op.block_span();
                let aligned_zero = matches!(op, SourceOp::Zero { .. }) && op.aligned();
                let (s, e) = (span.0 as usize * B, (span.0 as usize + span.1 as usize) * B);
                let data = (!aligned_zero).then(|| self.source[s..e].to_vec());
                self.source_at.push(image_digest(&self.source));
                self.source_ops.push(SourceRecord { span, aligned_zero });
                self.queue_answer(
                    Node::Agent,
                    Answer::Agent(agent::Input::SourceDone { io, data }),
                );
            }
            agent::Output::SourceSync { io, .. } => {
                self.queue_answer(Node::Agent, Answer::Agent(agent::Input::Synced { io }))
            }
            agent::Output::Complete { io, result } => {
                if let Err(e) = result {
                    self.fail(format!("io {io} failed: {e}"));
                }
                if self.outstanding == 0 {
                    self.fail(format!("io {io} completed twice"));
                }
                self.outstanding -= 1;
                self.completed += 1;
            }
            agent::Output::Reserve { disk, reserved } => self.queue_answer(
                Node::Agent,
                Answer::Agent(agent::Input::Reserved { disk, reserved }),
            ),
        }
    }

    fn ps_output(&mut self, o: ps::Output) {
        match o {
            ps::Output::Net(cmd) => self.net_cmd(Node::Ps, cmd),
            ps::Output::CacheAppend { id, header, data } => {
                let frame = protocol::encode(&Message::Batch(header.clone()), &data)
                    .unwrap_or_else(|e| self.fail(format!("cache frame: {e}")));
                let loc = CacheLoc {
                    segment: 0,
                    offset: self.next_loc,
                };
                self.next_loc += frame.len() as u64;
                let bytes = frame.len() as u64;
                // Written now, durable (and visible to Forward) once answered.
                self.cache_index.push(CachedBatch {
                    disk: header.disk,
                    epoch: header.epoch,
                    first_seq: header.first_seq,
                    last_seq: header.last_seq,
                    bytes,
                    loc,
                });
                self.cache.insert(loc, frame);
                self.queue_answer(
                    Node::Ps,
                    Answer::Ps(ps::Input::CachePersisted { id, loc, bytes }),
                );
            }
            ps::Output::Forward { conn, disk, loc } => {
                let Some(frame) = self.cache.get(&loc) else {
                    self.fail(format!("Forward of {loc:?}, not in the cache"))
                };
                if !self
                    .cache_index
                    .iter()
                    .any(|e| e.loc == loc && e.last_seq <= self.cache_synced_seq)
                {
                    self.fail(format!("Forward of {loc:?} before it is synced"));
                }
                let (msg, data, _) = protocol::decode(frame)
                    .unwrap_or_else(|e| self.fail(format!("cached frame: {e}")))
                    .unwrap_or_else(|| self.fail("cached frame is short".into()));
                if !matches!(&msg, Message::Batch(h) if h.disk == disk) {
                    self.fail(format!("cache at {loc:?} holds {msg:?}"));
                }
                if self.conns.get(&conn).is_some_and(|c| c.open) {
                    let to = self.other_end(conn, Node::Ps);
                    self.push_wire(conn, to, NetEvent::Received { conn, msg, data });
                }
            }
            ps::Output::CacheRelease { disk, through } => {
                if through > self.journal_synced_seq {
                    self.fail(format!(
                        "cache released through {through}, journal synced only through {}",
                        self.journal_synced_seq
                    ));
                }
                let cache = &mut self.cache;
                self.cache_index.retain(|e| {
                    let gone = e.disk == disk && e.last_seq <= through;
                    if gone {
                        cache.remove(&e.loc);
                    }
                    !gone
                });
            }
            ps::Output::SaveDisk(meta) => {
                self.ps_meta.insert(meta.disk.clone(), meta);
            }
        }
    }

    fn cache_persisted(&mut self, loc: CacheLoc) {
        let e = self
            .cache_index
            .iter()
            .find(|e| e.loc == loc)
            .unwrap_or_else(|| self.fail("unknown cache append".into()));
        self.cache_synced_seq = self.cache_synced_seq.max(e.last_seq);
    }

    fn mt_output(&mut self, o: mt::Output) {
        match o {
            mt::Output::Net(cmd) => self.net_cmd(Node::Mt, cmd),
            mt::Output::CreateReplica(meta) => {
                if meta.size_bytes != self.source.len() as u64 {
                    self.fail(format!(
                        "replica of {} bytes for a {}-byte source",
                        meta.size_bytes,
                        self.source.len()
                    ));
                }
                self.replica = vec![0; meta.size_bytes as usize];
            }
            mt::Output::SaveReplica(meta) => {
                if let Some(why) = meta.inconsistent {
                    self.fail(format!("replica marked inconsistent: {why}"));
                }
            }
            mt::Output::JournalAppend { id, header, data } => {
                // Carried out (and checked) now; reported durable later.
                self.journal(&header, &data);
                self.journal_unsynced.insert(id, header.last_seq);
                let journal_bytes = self.journal_bytes;
                self.queue_answer(
                    Node::Mt,
                    Answer::Mt(mt::Input::JournalPersisted { id, journal_bytes }),
                );
            }
        }
    }

    fn journal(&mut self, h: &BatchHeader, data: &[u8]) {
        if let Err(e) = h.validate() {
            self.fail(format!("journal append of a malformed batch: {e}"));
        }
        if h.encoding != Encoding::Raw || data.len() as u64 != h.raw_bytes {
            self.fail(format!("journal append of undecoded data: {h:?}"));
        }
        if h.first_seq != self.journal_seq + 1 {
            self.fail(format!(
                "journal append {}..={} after {}: lost or repeated",
                h.first_seq, h.last_seq, self.journal_seq
            ));
        }
        let mut at = 0;
        for op in &h.ops {
            let src = &self.source_ops[op.seq as usize - 1];
            if (op.block, op.blocks) != src.span || (op.kind == OpKind::Zero) != src.aligned_zero {
                self.fail(format!(
                    "seq {} is {op:?}, but write #{} was {:?}",
                    op.seq, op.seq, src.span
                ));
            }
            let (s, len) = (op.block as usize * B, op.blocks as usize * B);
            match op.kind {
                OpKind::Data => {
                    self.replica[s..s + len].copy_from_slice(&data[at..at + len]);
                    at += len;
                }
                OpKind::Zero => self.replica[s..s + len].fill(0),
            }
        }
        self.journal_seq = h.last_seq;
        self.journal_bytes += data.len() as u64;
        self.journal_appends += 1;
        if h.consistent {
            self.recovery_points += 1;
            if image_digest(&self.replica) != self.source_at[h.last_seq as usize] {
                self.fail(format!(
                    "recovery point at seq {}: replica differs from the source as it was",
                    h.last_seq
                ));
            }
        }
    }
}

/// Runs one seeded simulation with the default configuration.
pub fn run(seed: u64) -> Report {
    Cluster::new(SimConfig::new(seed)).run()
}
