//! The four roles driven by hand, with no runtime: a tiny in-test harness routes `NetCommand`s
//! between role instances (through the real framing) and carries out storage outputs in memory.
//! The richer, seeded version of this harness lives in haven-sim.

use haven_core::agent::{self, Agent, AgentSettings, IoId, SourceOp};
use haven_core::batch::{BatchHeader, CompressionPolicy, Encoding, Op, OpKind, BLOCK_BYTES};
use haven_core::config_server::{self as cs, ConfigServer, ConfigServerSettings};
use haven_core::master_target::{self as mt, MasterTarget, MasterTargetSettings};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::process_server::{
    self as ps, CacheDiskMeta, CacheLoc, CachedBatch, ProcessServer, ProcessServerSettings,
};
use haven_core::protocol::{self, DiskInfo, Hello, Message, Registration, Role, PROTOCOL_VERSION};
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Seq, Timestamp};
use std::collections::{BTreeMap, VecDeque};

const B: usize = BLOCK_BYTES as usize;
const DISK_BLOCKS: usize = 32;
const DISK_BYTES: usize = DISK_BLOCKS * B;

fn disk_id() -> DiskId {
    DiskId::new("disk0").unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Cs,
    Ps,
    Mt,
    Agent,
}

impl Node {
    const ALL: [Node; 4] = [Node::Cs, Node::Ps, Node::Mt, Node::Agent];
    fn addr(self) -> &'static str {
        match self {
            Node::Cs => "cs:7000",
            Node::Ps => "ps:7001",
            Node::Mt => "mt:7002",
            Node::Agent => "agent:none",
        }
    }
    fn hello(self) -> Hello {
        let (role, name) = match self {
            Node::Cs => (Role::ConfigServer, "cs"),
            Node::Ps => (Role::ProcessServer, "ps1"),
            Node::Mt => (Role::MasterTarget, "mt1"),
            Node::Agent => (Role::Agent, "agent1"),
        };
        Hello {
            version: PROTOCOL_VERSION,
            role,
            component: ComponentId::new(name).unwrap(),
            epoch: Epoch(0),
        }
    }
}

enum Local {
    Agent(agent::Input),
    Ps(ps::Input),
    Mt(mt::Input),
}

struct Conn {
    ends: (Node, Node),
    open: bool,
}

fn agent_settings() -> AgentSettings {
    AgentSettings {
        component: ComponentId::new("agent1").unwrap(),
        config_server_addr: Node::Cs.addr().into(),
        batch_bytes_max: 4 * BLOCK_BYTES,
        batch_delay_ms: 10,
        buffer_bytes_max: 1 << 20,
        window_batches_max: 4,
        heartbeat_interval_ms: 1000,
        reconnect_delay_ms: 50,
    }
}

fn ps_settings() -> ProcessServerSettings {
    ProcessServerSettings {
        component: ComponentId::new("ps1").unwrap(),
        config_server_addr: Node::Cs.addr().into(),
        data_addr: Node::Ps.addr().into(),
        cache_bytes_max: 64 << 20,
        window_batches_max: 3,
        heartbeat_interval_ms: 1000,
        reconnect_delay_ms: 50,
        busy_retry_ms: 20,
    }
}

fn mt_settings() -> MasterTargetSettings {
    MasterTargetSettings {
        component: ComponentId::new("mt1").unwrap(),
        config_server_addr: Node::Cs.addr().into(),
        data_addr: Node::Mt.addr().into(),
        api_addr: "mt:8080".into(),
        heartbeat_interval_ms: 1000,
        reconnect_delay_ms: 50,
    }
}

fn cs_settings() -> ConfigServerSettings {
    ConfigServerSettings {
        rules: vec![],
        heartbeat_timeout_ms: 10_000,
    }
}

struct Cluster {
    now: Timestamp,
    cs: ConfigServer,
    ps: Option<ProcessServer>,
    mt: MasterTarget,
    agent: Agent,
    net: VecDeque<(Node, NetEvent)>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    local: VecDeque<Local>,
    /// Every Received message, in delivery order: (to, message).
    delivered: Vec<(Node, Message)>,

    // Agent storage.
    source: Vec<u8>,
    /// source_at[seq]: the source disk right after write `seq` (index 0: before any write).
    source_at: Vec<Vec<u8>>,
    /// Source ops in the order the agent carried them out; op i got seq i + 1.
    source_ops: Vec<(IoId, SourceOp)>,
    next_io: IoId,
    submitted: Vec<IoId>,
    completed: BTreeMap<IoId, Result<(), String>>,

    // Process server storage.
    hold_cache: bool,
    pending_cache: VecDeque<(u64, CachedBatch, Vec<u8>)>,
    cache: BTreeMap<CacheLoc, Vec<u8>>,
    cache_index: Vec<CachedBatch>,
    ps_meta: BTreeMap<DiskId, CacheDiskMeta>,
    next_loc: u64,
    cache_persisted_seq: Seq,

    // Master target storage.
    hold_journal: bool,
    pending_journal: VecDeque<(u64, BatchHeader, Vec<u8>)>,
    replica: Vec<u8>,
    /// replica_at[seq]: the replica at each batch boundary.
    replica_at: BTreeMap<Seq, Vec<u8>>,
    journal_seq: Seq,
    journal_bytes: u64,
    journal_appends: usize,
}

impl Cluster {
    fn new(agent_settings: AgentSettings, with_ps: bool) -> Cluster {
        let now = Timestamp::from_millis(1_000_000);
        let mut c = Cluster {
            now,
            cs: ConfigServer::new(cs_settings(), now),
            ps: with_ps.then(|| ProcessServer::new(ps_settings(), vec![], vec![], now)),
            mt: MasterTarget::new(mt_settings(), vec![], now),
            agent: Agent::new(agent_settings, vec![(disk_id(), DISK_BYTES as u64, 0)], now),
            net: VecDeque::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            local: VecDeque::new(),
            delivered: vec![],
            source: vec![0; DISK_BYTES],
            source_at: vec![vec![0; DISK_BYTES]],
            source_ops: vec![],
            next_io: 1,
            submitted: vec![],
            completed: BTreeMap::new(),
            hold_cache: false,
            pending_cache: VecDeque::new(),
            cache: BTreeMap::new(),
            cache_index: vec![],
            ps_meta: BTreeMap::new(),
            next_loc: 0,
            cache_persisted_seq: 0,
            hold_journal: false,
            pending_journal: VecDeque::new(),
            replica: vec![],
            replica_at: BTreeMap::new(),
            journal_seq: 0,
            journal_bytes: 0,
            journal_appends: 0,
        };
        c.advance(30);
        c
    }

    // ---- driving ----

    fn drain(&mut self) {
        loop {
            let mut any = false;
            while let Some(o) = self.agent.poll_output() {
                any = true;
                self.agent_output(o);
            }
            while let Some(o) = self.ps.as_mut().and_then(|p| p.poll_output()) {
                any = true;
                self.ps_output(o);
            }
            while let Some(o) = self.mt.poll_output() {
                any = true;
                self.mt_output(o);
            }
            while let Some(o) = self.cs.poll_output() {
                any = true;
                let cs::Output::Net(cmd) = o;
                self.net_cmd(Node::Cs, cmd);
            }
            if !any {
                return;
            }
        }
    }

    /// Feeds one pending input; false when nothing is pending.
    fn step(&mut self) -> bool {
        self.drain();
        let now = self.now;
        if let Some(l) = self.local.pop_front() {
            match l {
                Local::Agent(i) => self.agent.handle(now, i),
                Local::Ps(i) => {
                    if let Some(p) = self.ps.as_mut() {
                        p.handle(now, i)
                    }
                }
                Local::Mt(i) => self.mt.handle(now, i),
            }
            return true;
        }
        if let Some((to, ev)) = self.net.pop_front() {
            if let NetEvent::Received { msg, .. } = &ev {
                self.delivered.push((to, msg.clone()));
            }
            match to {
                Node::Cs => self.cs.handle(now, cs::Input::Net(ev)),
                Node::Ps => {
                    if let Some(p) = self.ps.as_mut() {
                        p.handle(now, ps::Input::Net(ev))
                    }
                }
                Node::Mt => self.mt.handle(now, mt::Input::Net(ev)),
                Node::Agent => self.agent.handle(now, agent::Input::Net(ev)),
            }
            return true;
        }
        false
    }

    fn run(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the cluster does not settle");
    }

    /// Advances the clock `ms` milliseconds, one tick per millisecond.
    fn advance(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now = self.now.plus_millis(1);
            let now = self.now;
            self.run();
            self.agent.handle(now, agent::Input::Tick);
            self.drain();
            if let Some(p) = self.ps.as_mut() {
                p.handle(now, ps::Input::Tick);
            }
            self.drain();
            self.mt.handle(now, mt::Input::Tick);
            self.drain();
            self.cs.handle(now, cs::Input::Tick);
            self.run();
        }
    }

    /// Advances until every write is applied at the master target (or panics).
    fn settle(&mut self) {
        for _ in 0..200 {
            self.advance(10);
            let s = &self.agent.stats().disks[0];
            let all_done = self
                .submitted
                .iter()
                .all(|io| self.completed.contains_key(io));
            if all_done
                && s.buffered_bytes == 0
                && s.seq_applied == s.seq_written
                && self.journal_seq == s.seq_written
            {
                return;
            }
        }
        panic!(
            "writes did not reach the master target: {:?}",
            self.agent.stats()
        );
    }

    // ---- workload ----

    fn submit(&mut self, op: SourceOp, fua: bool) -> IoId {
        let io = self.next_io;
        self.next_io += 1;
        self.submitted.push(io);
        self.local.push_back(Local::Agent(agent::Input::Write {
            io,
            disk: 0,
            op,
            fua,
        }));
        io
    }

    fn write(&mut self, offset: usize, data: Vec<u8>) -> IoId {
        self.submit(
            SourceOp::Write {
                offset: offset as u64,
                data,
            },
            false,
        )
    }

    fn zero(&mut self, offset: usize, len: usize) -> IoId {
        self.submit(
            SourceOp::Zero {
                offset: offset as u64,
                len: len as u64,
                punch: false,
            },
            false,
        )
    }

    fn flush(&mut self) -> IoId {
        let io = self.next_io;
        self.next_io += 1;
        self.submitted.push(io);
        self.local
            .push_back(Local::Agent(agent::Input::Flush { io, disk: 0 }));
        io
    }

    // ---- network ----

    fn other_end(&self, conn: ConnId, me: Node) -> Node {
        let (a, b) = self.conns[&conn].ends;
        if a == me {
            b
        } else {
            a
        }
    }

    fn is_up(&self, node: Node) -> bool {
        node != Node::Ps || self.ps.is_some()
    }

    fn net_cmd(&mut self, from: Node, cmd: NetCommand) {
        match cmd {
            NetCommand::Connect { token, addr } => {
                let target = Node::ALL
                    .into_iter()
                    .find(|n| n.addr() == addr && self.is_up(*n));
                let Some(to) = target else {
                    self.net.push_back((
                        from,
                        NetEvent::ConnectFailed {
                            token,
                            reason: "refused".into(),
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
                self.net.push_back((
                    to,
                    NetEvent::Accepted {
                        conn,
                        peer: from.hello(),
                    },
                ));
                self.net.push_back((
                    from,
                    NetEvent::Connected {
                        token,
                        conn,
                        peer: to.hello(),
                    },
                ));
            }
            NetCommand::Send { conn, msg, data } => {
                if !self.conns.get(&conn).is_some_and(|c| c.open) {
                    return;
                }
                let to = self.other_end(conn, from);
                self.check_promise(from, to, &msg);
                // Through the real framing.
                let frame = protocol::encode(&msg, &data).unwrap();
                let (msg, data, used) = protocol::decode(&frame).unwrap().unwrap();
                assert_eq!(used, frame.len());
                self.net
                    .push_back((to, NetEvent::Received { conn, msg, data }));
            }
            NetCommand::Close { conn } => self.close(conn),
        }
    }

    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.open) else {
            return;
        };
        c.open = false;
        let (a, b) = c.ends;
        self.net.push_back((
            a,
            NetEvent::Closed {
                conn,
                reason: "closed".into(),
            },
        ));
        self.net.push_back((
            b,
            NetEvent::Closed {
                conn,
                reason: "closed".into(),
            },
        ));
    }

    /// The durability chain: no acknowledgement runs ahead of what storage has synced.
    fn check_promise(&self, from: Node, to: Node, msg: &Message) {
        match (from, to, msg) {
            (
                Node::Ps,
                Node::Agent,
                Message::BatchAck {
                    cached_seq,
                    applied_seq,
                    ..
                },
            )
            | (
                Node::Ps,
                Node::Agent,
                Message::StreamState {
                    cached_seq,
                    applied_seq,
                    ..
                },
            ) => {
                assert!(
                    *cached_seq <= self.cache_persisted_seq,
                    "ack of {cached_seq} before it is cached: {msg:?}"
                );
                assert!(
                    *applied_seq <= self.journal_seq,
                    "ack of {applied_seq} before it is journaled: {msg:?}"
                );
            }
            (Node::Mt, Node::Ps, Message::Applied { applied_seq, .. })
            | (Node::Mt, Node::Ps, Message::StreamState { applied_seq, .. }) => {
                assert!(
                    *applied_seq <= self.journal_seq,
                    "Applied {applied_seq} before it is journaled"
                );
            }
            _ => {}
        }
    }

    // ---- storage ----

    fn agent_output(&mut self, o: agent::Output) {
        match o {
            agent::Output::Net(cmd) => self.net_cmd(Node::Agent, cmd),
            agent::Output::SourceWrite { io, disk, op } => {
                assert_eq!(disk, 0);
                let aligned_zero = matches!(op, SourceOp::Zero { .. }) && op.aligned();
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
                let (first, blocks) = op.block_span();
                let (s, e) = (first as usize * B, (first as usize + blocks as usize) * B);
                let data = (!aligned_zero).then(|| self.source[s..e].to_vec());
                self.source_at.push(self.source.clone());
                self.source_ops.push((io, op));
                self.local
                    .push_back(Local::Agent(agent::Input::SourceDone { io, data }));
            }
            agent::Output::SourceSync { io, .. } => self
                .local
                .push_back(Local::Agent(agent::Input::Synced { io })),
            agent::Output::Complete { io, result } => {
                assert!(
                    self.completed.insert(io, result).is_none(),
                    "io {io} completed twice"
                );
            }
            agent::Output::Reserve { disk, reserved } => self
                .local
                .push_back(Local::Agent(agent::Input::Reserved { disk, reserved })),
        }
    }

    fn ps_output(&mut self, o: ps::Output) {
        match o {
            ps::Output::Net(cmd) => self.net_cmd(Node::Ps, cmd),
            ps::Output::CacheAppend { id, header, data } => {
                let frame = protocol::encode(&Message::Batch(header.clone()), &data).unwrap();
                let loc = CacheLoc {
                    segment: 0,
                    offset: self.next_loc,
                };
                self.next_loc += frame.len() as u64;
                let entry = CachedBatch {
                    disk: header.disk.clone(),
                    epoch: header.epoch,
                    first_seq: header.first_seq,
                    last_seq: header.last_seq,
                    bytes: frame.len() as u64,
                    loc,
                };
                self.pending_cache.push_back((id, entry, frame));
                if !self.hold_cache {
                    self.persist_cache(usize::MAX);
                }
            }
            ps::Output::Forward { conn, disk, loc } => {
                let frame = self
                    .cache
                    .get(&loc)
                    .expect("forward of a batch not in the cache");
                let (msg, data, _) = protocol::decode(frame).unwrap().unwrap();
                let Message::Batch(h) = &msg else {
                    panic!("cache holds a {}", msg.kind())
                };
                assert_eq!(h.disk, disk);
                if self.conns.get(&conn).is_some_and(|c| c.open) {
                    let to = self.other_end(conn, Node::Ps);
                    self.net
                        .push_back((to, NetEvent::Received { conn, msg, data }));
                }
            }
            ps::Output::CacheRelease { disk, through } => {
                assert!(
                    through <= self.journal_seq,
                    "cache released past what is journaled"
                );
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

    /// Makes the first `n` pending cache appends durable.
    fn persist_cache(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, entry, frame)) = self.pending_cache.pop_front() else {
                return;
            };
            self.cache_persisted_seq = self.cache_persisted_seq.max(entry.last_seq);
            self.cache.insert(entry.loc, frame);
            let (loc, bytes) = (entry.loc, entry.bytes);
            self.cache_index.push(entry);
            self.local
                .push_back(Local::Ps(ps::Input::CachePersisted { id, loc, bytes }));
        }
    }

    fn mt_output(&mut self, o: mt::Output) {
        match o {
            mt::Output::Net(cmd) => self.net_cmd(Node::Mt, cmd),
            mt::Output::CreateReplica(meta) => {
                assert_eq!(meta.size_bytes, DISK_BYTES as u64);
                self.replica = vec![0; meta.size_bytes as usize];
            }
            mt::Output::SaveReplica(_) => {}
            mt::Output::JournalAppend { id, header, data } => {
                self.pending_journal.push_back((id, header, data));
                if !self.hold_journal {
                    self.persist_journal(usize::MAX);
                }
            }
        }
    }

    /// Makes the first `n` pending journal appends durable, applying them to the replica.
    fn persist_journal(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, h, data)) = self.pending_journal.pop_front() else {
                return;
            };
            h.validate().unwrap();
            assert_eq!(h.encoding, Encoding::Raw);
            assert_eq!(data.len() as u64, h.raw_bytes);
            // Exactly once, in order.
            assert_eq!(
                h.first_seq,
                self.journal_seq + 1,
                "journal append out of order or repeated: {h:?}"
            );
            let mut at = 0;
            for op in &h.ops {
                // Seq order is the order the writes reached the source disk.
                let (_, src) = &self.source_ops[op.seq as usize - 1];
                assert_eq!(
                    (op.block, op.blocks),
                    src.block_span(),
                    "seq {} is not the write carried out as #{}",
                    op.seq,
                    op.seq
                );
                let aligned_zero = matches!(src, SourceOp::Zero { .. }) && src.aligned();
                assert_eq!(
                    op.kind == OpKind::Zero,
                    aligned_zero,
                    "op kind of seq {}",
                    op.seq
                );
                let (s, len) = (op.block as usize * B, op.blocks as usize * B);
                match op.kind {
                    OpKind::Data => {
                        self.replica[s..s + len].copy_from_slice(&data[at..at + len]);
                        at += len;
                    }
                    OpKind::Zero => self.replica[s..s + len].fill(0),
                }
            }
            assert_eq!(at, data.len());
            self.journal_seq = h.last_seq;
            self.journal_bytes += data.len() as u64 + 64;
            self.journal_appends += 1;
            if h.consistent {
                assert!(
                    self.replica == self.source_at[h.last_seq as usize],
                    "replica differs from the source as it was at seq {}",
                    h.last_seq
                );
                self.replica_at.insert(h.last_seq, self.replica.clone());
            }
            self.local.push_back(Local::Mt(mt::Input::JournalPersisted {
                id,
                journal_bytes: self.journal_bytes,
            }));
        }
    }

    // ---- process server crash ----

    fn crash_ps(&mut self) {
        self.ps = None;
        self.pending_cache.clear(); // not synced: lost
        self.local.retain(|l| !matches!(l, Local::Ps(_)));
        self.net.retain(|(to, _)| *to != Node::Ps);
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && (c.ends.0 == Node::Ps || c.ends.1 == Node::Ps))
            .map(|(k, _)| *k)
            .collect();
        for conn in conns {
            let c = self.conns.get_mut(&conn).unwrap();
            c.open = false;
            let other = if c.ends.0 == Node::Ps {
                c.ends.1
            } else {
                c.ends.0
            };
            self.net.push_back((
                other,
                NetEvent::Closed {
                    conn,
                    reason: "process server crashed".into(),
                },
            ));
        }
    }

    fn restart_ps(&mut self) {
        let metas: Vec<CacheDiskMeta> = self.ps_meta.values().cloned().collect();
        let mut cached = self.cache_index.clone();
        cached.sort_by_key(|e| (e.disk.clone(), e.first_seq));
        self.ps = Some(ProcessServer::new(ps_settings(), metas, cached, self.now));
    }

    // ---- queries ----

    fn delivered_to(&self, node: Node, kind: &str) -> Vec<Message> {
        self.delivered
            .iter()
            .filter(|(n, m)| *n == node && m.kind() == kind)
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn assert_replica_is_source(&self) {
        assert!(
            self.replica == self.source,
            "replica differs from the source"
        );
    }
}

/// xorshift64: a deterministic workload without the rand crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A random write, unaligned write, or zeroing inside the disk.
fn random_op(c: &mut Cluster, rng: &mut Rng) -> IoId {
    match rng.below(6) {
        0 => {
            let off = rng.below(DISK_BLOCKS as u64 - 4) as usize * B;
            let len = (1 + rng.below(3)) as usize * B;
            let data = rng.bytes(len);
            c.write(off, data)
        }
        1 | 2 => {
            let off = rng.below(DISK_BYTES as u64 - 10_000) as usize;
            let len = 1 + rng.below(9_000) as usize;
            let data = rng.bytes(len);
            c.write(off, data)
        }
        3 => {
            let off = rng.below(DISK_BLOCKS as u64 - 2) as usize * B;
            c.zero(off, B * (1 + rng.below(2)) as usize)
        }
        4 => {
            let off = rng.below(DISK_BYTES as u64 - 10_000) as usize;
            c.zero(off, 1 + rng.below(9_000) as usize)
        }
        _ => {
            let off = rng.below(DISK_BYTES as u64 - 100) as usize;
            let len = 1 + rng.below(99) as usize;
            let data = rng.bytes(len);
            c.submit(
                SourceOp::Write {
                    offset: off as u64,
                    data,
                },
                true,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) writes reach the master target

#[test]
fn aligned_unaligned_and_zeroing_writes_reach_the_replica() {
    let mut c = Cluster::new(agent_settings(), true);
    c.write(0, vec![0xaa; B]);
    c.write(3 * B, vec![0xbb; 3 * B]);
    c.write(B + 100, vec![0xcc; 5000]); // unaligned, crosses two block boundaries
    c.write(10 * B - 1, vec![0xdd; 2]); // two bytes across a block boundary
    c.zero(4 * B, B); // aligned zeroing
    c.zero(3 * B + 17, 40); // unaligned zeroing
    c.submit(
        SourceOp::Zero {
            offset: 20 * B as u64,
            len: 2 * B as u64,
            punch: true,
        },
        false,
    );
    c.submit(
        SourceOp::Write {
            offset: (DISK_BYTES - 10) as u64,
            data: vec![0xee; 10],
        },
        true,
    ); // FUA, last bytes
    c.flush();
    c.write(0, vec![0x11; 10]); // overwrite after a flush
    c.settle();

    assert!(c.completed.values().all(|r| r.is_ok()));
    assert_eq!(c.completed.len(), 10);
    assert_eq!(
        c.journal_seq, 9,
        "nine writes, one seq each; a flush takes none"
    );
    c.assert_replica_is_source();
    let st = c.agent.stats().disks[0].clone();
    assert_eq!(
        (st.seq_written, st.seq_cached, st.seq_applied, st.rpo_ms),
        (9, 9, 9, 0)
    );
    let mt = c.mt.stats().replicas[0].clone();
    assert_eq!(mt.applied_seq, 9);
    assert!(mt.inconsistent.is_none());
    assert!(
        c.cache_index.is_empty(),
        "applied batches are released from the cache"
    );
    // Aligned zeroing travels as a zero op, without data.
    let zero_ops = c
        .delivered_to(Node::Mt, "Batch")
        .iter()
        .flat_map(|m| match m {
            Message::Batch(h) => h.ops.clone(),
            _ => vec![],
        })
        .filter(|o| o.kind == OpKind::Zero)
        .count();
    assert_eq!(zero_ops, 2);
}

// ---------------------------------------------------------------------------------------------
// (b) seq order and recovery points

#[test]
fn seq_order_is_write_order_and_every_batch_boundary_is_a_past_source_state() {
    let mut settings = agent_settings();
    settings.batch_bytes_max = 3 * BLOCK_BYTES;
    let mut c = Cluster::new(settings, true);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..40 {
        for _ in 0..1 + rng.below(8) {
            random_op(&mut c, &mut rng);
        }
        if round % 7 == 0 {
            c.flush();
        }
        c.advance(rng.below(15));
    }
    c.settle();
    // The harness checked, at every journal append, that op seq i is the i-th write carried out
    // and that the replica equals the source as it was at the batch's last seq.
    assert_eq!(c.source_ops.len() as u64, c.journal_seq);
    let order: Vec<IoId> = c.source_ops.iter().map(|(io, _)| *io).collect();
    let writes: Vec<IoId> = c
        .submitted
        .iter()
        .copied()
        .filter(|io| order.contains(io))
        .collect();
    assert_eq!(
        order, writes,
        "source writes are carried out in submission order"
    );
    assert!(
        c.replica_at.len() > 20,
        "many recovery points: {}",
        c.replica_at.len()
    );
    for (seq, img) in &c.replica_at {
        assert!(*img == c.source_at[*seq as usize], "boundary {seq}");
    }
    c.assert_replica_is_source();
    assert_eq!(c.mt.stats().replicas[0].points, c.replica_at.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// (c) acknowledgements follow durability

#[test]
fn batch_ack_only_after_cache_persisted_and_applied_only_after_journal_persisted() {
    let mut settings = agent_settings();
    settings.batch_bytes_max = BLOCK_BYTES; // one batch per block write
    let mut c = Cluster::new(settings, true);
    c.hold_cache = true;
    c.hold_journal = true;
    for i in 0..3 {
        c.write(i * B, vec![i as u8 + 1; B]);
    }
    c.advance(50);
    assert_eq!(
        c.completed.len(),
        3,
        "writes complete once on the source disk"
    );
    assert_eq!(
        c.pending_cache.len(),
        3,
        "three batches being appended to the cache"
    );
    assert!(
        c.delivered_to(Node::Agent, "BatchAck").is_empty(),
        "BatchAck before CachePersisted"
    );
    assert!(
        c.delivered_to(Node::Mt, "Batch").is_empty(),
        "forwarded before it is cached"
    );
    assert_eq!(c.agent.stats().disks[0].seq_cached, 0);

    // One append becomes durable: exactly that batch is acknowledged and forwarded.
    c.persist_cache(1);
    c.advance(5);
    let acks = c.delivered_to(Node::Agent, "BatchAck");
    assert_eq!(acks.len(), 1);
    assert!(matches!(
        acks[0],
        Message::BatchAck {
            cached_seq: 1,
            applied_seq: 0,
            ..
        }
    ));
    assert_eq!(c.delivered_to(Node::Mt, "Batch").len(), 1);
    assert_eq!(c.pending_journal.len(), 1);
    assert!(
        c.delivered_to(Node::Ps, "Applied").is_empty(),
        "Applied before JournalPersisted"
    );

    c.persist_cache(2);
    c.advance(5);
    assert_eq!(c.agent.stats().disks[0].seq_cached, 3);
    assert!(
        c.delivered_to(Node::Ps, "Applied").is_empty(),
        "Applied before JournalPersisted"
    );
    assert_eq!(c.agent.stats().disks[0].seq_applied, 0);

    c.persist_journal(1);
    c.advance(5);
    let applied = c.delivered_to(Node::Ps, "Applied");
    assert_eq!(applied.len(), 1);
    assert!(matches!(
        applied[0],
        Message::Applied { applied_seq: 1, .. }
    ));
    assert_eq!(c.agent.stats().disks[0].seq_applied, 1);

    c.hold_cache = false;
    c.hold_journal = false;
    c.persist_journal(usize::MAX);
    c.settle();
    c.assert_replica_is_source();
}

// ---------------------------------------------------------------------------------------------
// (d) process server restart

#[test]
fn process_server_restart_loses_nothing_and_repeats_nothing() {
    let mut settings = agent_settings();
    settings.batch_bytes_max = 2 * BLOCK_BYTES;
    let mut c = Cluster::new(settings, true);
    let mut rng = Rng(77);
    for _ in 0..10 {
        random_op(&mut c, &mut rng);
    }
    c.settle();
    let before = c.journal_appends;

    // Cached but not applied (journal held), then cached and not yet forwarded, then appended
    // but not durable when the process server dies.
    c.hold_journal = true;
    for _ in 0..12 {
        random_op(&mut c, &mut rng);
        c.advance(3);
    }
    c.advance(20);
    c.hold_cache = true;
    for _ in 0..6 {
        random_op(&mut c, &mut rng);
        c.advance(3);
    }
    c.advance(20);
    assert!(!c.pending_cache.is_empty(), "some appends are not durable");
    assert!(
        !c.pending_journal.is_empty(),
        "some batches are forwarded and not applied"
    );
    assert!(
        c.cache_index.len() > c.pending_journal.len(),
        "some cached batches are not yet forwarded"
    );
    c.crash_ps();
    c.hold_cache = false;
    c.advance(30);
    // The master target finishes what it had while the process server is down.
    c.hold_journal = false;
    c.persist_journal(usize::MAX);
    for _ in 0..5 {
        random_op(&mut c, &mut rng);
    }
    c.advance(100);
    assert!(
        c.completed.len() < c.submitted.len()
            || c.agent.stats().disks[0].seq_cached < c.agent.stats().disks[0].seq_written
    );
    c.restart_ps();
    c.settle();
    // The agent resent what the process server lost (appends that were not yet durable).
    let mut firsts: Vec<Seq> = c
        .delivered_to(Node::Ps, "Batch")
        .iter()
        .map(|m| match m {
            Message::Batch(h) => h.first_seq,
            _ => unreachable!(),
        })
        .collect();
    let sent = firsts.len();
    firsts.sort();
    firsts.dedup();
    assert!(
        firsts.len() < sent,
        "no batch was resent to the restarted process server"
    );
    // persist_journal asserted every append is the next seq range: nothing lost, nothing twice.
    assert!(c.journal_appends > before);
    assert_eq!(c.journal_seq, c.source_ops.len() as u64);
    assert!(c.completed.values().all(|r| r.is_ok()));
    c.assert_replica_is_source();
    assert!(c.mt.stats().replicas[0].inconsistent.is_none());
}

// ---------------------------------------------------------------------------------------------
// (e) master target alone

fn mt_alone() -> (MasterTarget, ConnId) {
    let now = Timestamp::from_millis(1000);
    let mut m = MasterTarget::new(mt_settings(), vec![], now);
    let conn = ConnId(9);
    m.handle(
        now,
        mt::Input::Net(NetEvent::Accepted {
            conn,
            peer: Node::Ps.hello(),
        }),
    );
    (m, conn)
}

fn mt_outputs(m: &mut MasterTarget) -> Vec<mt::Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn mt_recv(m: &mut MasterTarget, conn: ConnId, msg: Message, data: Vec<u8>) -> Vec<mt::Output> {
    m.handle(
        Timestamp::from_millis(1001),
        mt::Input::Net(NetEvent::Received { conn, msg, data }),
    );
    mt_outputs(m)
}

fn sent(outs: &[mt::Output]) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            mt::Output::Net(NetCommand::Send { msg, .. }) => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn closes(outs: &[mt::Output]) -> bool {
    outs.iter()
        .any(|o| matches!(o, mt::Output::Net(NetCommand::Close { .. })))
}

fn data_batch(epoch: u64, first: Seq, last: Seq) -> (BatchHeader, Vec<u8>) {
    let ops: Vec<Op> = (first..=last)
        .map(|s| Op {
            seq: s,
            block: s % 8,
            blocks: 1,
            kind: OpKind::Data,
        })
        .collect();
    let h = BatchHeader {
        disk: disk_id(),
        epoch: Epoch(epoch),
        first_seq: first,
        last_seq: last,
        first_time: Timestamp(1),
        last_time: Timestamp(2),
        consistent: true,
        raw_bytes: BatchHeader::data_bytes_needed(&ops),
        ops,
        encoding: Encoding::Raw,
    };
    let data = vec![first as u8; h.raw_bytes as usize];
    (h, data)
}

fn open(epoch: u64, first_seq: Seq) -> Message {
    Message::OpenStream {
        disk: disk_id(),
        epoch: Epoch(epoch),
        size_bytes: DISK_BYTES as u64,
        first_seq,
    }
}

/// Sends a batch and persists its append; returns the outputs of both steps.
fn mt_apply(
    m: &mut MasterTarget,
    conn: ConnId,
    epoch: u64,
    first: Seq,
    last: Seq,
) -> (Vec<mt::Output>, Vec<mt::Output>) {
    let (h, d) = data_batch(epoch, first, last);
    let outs = mt_recv(m, conn, Message::Batch(h), d);
    let id = outs
        .iter()
        .find_map(|o| match o {
            mt::Output::JournalAppend { id, .. } => Some(*id),
            _ => None,
        })
        .expect("a journal append");
    assert!(
        sent(&outs).is_empty(),
        "nothing is acknowledged before JournalPersisted: {outs:?}"
    );
    m.handle(
        Timestamp::from_millis(1002),
        mt::Input::JournalPersisted {
            id,
            journal_bytes: 100,
        },
    );
    let persisted = mt_outputs(m);
    (outs, persisted)
}

#[test]
fn master_target_applies_in_order_and_reacks_duplicates() {
    let (mut m, conn) = mt_alone();
    mt_outputs(&mut m);
    let outs = mt_recv(&mut m, conn, open(1, 1), vec![]);
    assert!(outs
        .iter()
        .any(|o| matches!(o, mt::Output::CreateReplica(r) if r.size_bytes == DISK_BYTES as u64)));
    assert!(matches!(
        sent(&outs)[..],
        [Message::StreamState {
            cached_seq: 0,
            applied_seq: 0,
            ..
        }]
    ));

    let (_, persisted) = mt_apply(&mut m, conn, 1, 1, 3);
    assert!(matches!(
        sent(&persisted)[..],
        [Message::Applied { applied_seq: 3, .. }]
    ));
    let (_, persisted) = mt_apply(&mut m, conn, 1, 4, 4);
    assert!(matches!(
        sent(&persisted)[..],
        [Message::Applied { applied_seq: 4, .. }]
    ));

    // Duplicates (a process server resending after a reconnect) are only re-acknowledged.
    for (first, last) in [(1, 3), (4, 4), (2, 3)] {
        let (h, d) = data_batch(1, first, last);
        let outs = mt_recv(&mut m, conn, Message::Batch(h), d);
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, mt::Output::JournalAppend { .. })),
            "duplicate {first}..={last} appended"
        );
        assert!(
            matches!(sent(&outs)[..], [Message::Applied { applied_seq: 4, .. }]),
            "{outs:?}"
        );
        assert!(!closes(&outs));
    }
    let r = &m.stats().replicas[0];
    assert_eq!((r.applied_seq, r.points), (4, 2));

    // A batch that skips seqs is refused.
    let (h, d) = data_batch(1, 6, 6);
    let outs = mt_recv(&mut m, conn, Message::Batch(h), d);
    assert!(matches!(sent(&outs)[..], [Message::Reject { .. }]));
    assert!(closes(&outs));
}

#[test]
fn master_target_fences_an_older_epoch() {
    let (mut m, conn) = mt_alone();
    mt_recv(&mut m, conn, open(2, 1), vec![]);
    mt_apply(&mut m, conn, 2, 1, 1);
    // An old primary's batch.
    let (h, d) = data_batch(1, 2, 2);
    let outs = mt_recv(&mut m, conn, Message::Batch(h), d);
    assert!(
        matches!(sent(&outs)[..], [Message::Reject { .. }]),
        "{outs:?}"
    );
    assert!(closes(&outs));
    assert!(!outs
        .iter()
        .any(|o| matches!(o, mt::Output::JournalAppend { .. })));
    // And an old primary's stream.
    let conn2 = ConnId(10);
    m.handle(
        Timestamp::from_millis(1003),
        mt::Input::Net(NetEvent::Accepted {
            conn: conn2,
            peer: Node::Ps.hello(),
        }),
    );
    let outs = mt_recv(&mut m, conn2, open(1, 2), vec![]);
    assert!(
        matches!(sent(&outs)[..], [Message::Reject { .. }]),
        "{outs:?}"
    );
    assert!(closes(&outs));
    assert_eq!(m.stats().replicas[0].applied_seq, 1);
}

#[test]
fn master_target_refuses_malformed_batches() {
    let (mut m, conn) = mt_alone();
    mt_recv(&mut m, conn, open(1, 1), vec![]);
    let mut bad: Vec<(BatchHeader, Vec<u8>)> = vec![];
    let (mut h, d) = data_batch(1, 1, 2);
    h.raw_bytes += 1; // header disagrees with its ops
    bad.push((h, d));
    let (h, mut d) = data_batch(1, 1, 2);
    d.pop(); // data part too short
    bad.push((h, d));
    let (mut h, d) = data_batch(1, 1, 2);
    h.ops[1].seq = 3; // skipped seq
    bad.push((h, d));
    let (mut h, d) = data_batch(1, 1, 1);
    h.ops[0].block = DISK_BLOCKS as u64; // past the end of the disk
    bad.push((h, d));
    let (mut h, d) = data_batch(1, 1, 1);
    h.encoding = Encoding::Zstd; // does not decompress
    bad.push((h, d));
    let (mut h, d) = data_batch(1, 1, 1);
    h.first_seq = 0;
    bad.push((h, d));
    for (h, d) in bad {
        let what = format!("{h:?}");
        let (mut m, conn) = mt_alone();
        mt_recv(&mut m, conn, open(1, 1), vec![]);
        let outs = mt_recv(&mut m, conn, Message::Batch(h), d);
        assert!(
            matches!(sent(&outs)[..], [Message::Reject { .. }]),
            "{what}: {outs:?}"
        );
        assert!(closes(&outs), "{what}");
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, mt::Output::JournalAppend { .. })),
            "{what}"
        );
    }
    // A batch before OpenStream is refused too.
    let (mut m, conn) = mt_alone();
    let (h, d) = data_batch(1, 1, 1);
    let outs = mt_recv(&mut m, conn, Message::Batch(h), d);
    assert!(matches!(sent(&outs)[..], [Message::Reject { .. }]));
}

#[test]
fn master_target_marks_a_gap_inconsistent() {
    let (mut m, conn) = mt_alone();
    mt_recv(&mut m, conn, open(1, 1), vec![]);
    mt_apply(&mut m, conn, 1, 1, 2);
    assert!(m.stats().replicas[0].inconsistent.is_none());
    // The agent crashed: the stream resumes at 10, seqs 3..=9 are lost.
    m.handle(
        Timestamp::from_millis(1005),
        mt::Input::Net(NetEvent::Closed {
            conn,
            reason: "x".into(),
        }),
    );
    let conn2 = ConnId(11);
    m.handle(
        Timestamp::from_millis(1005),
        mt::Input::Net(NetEvent::Accepted {
            conn: conn2,
            peer: Node::Ps.hello(),
        }),
    );
    let outs = mt_recv(&mut m, conn2, open(1, 10), vec![]);
    let saved = outs.iter().find_map(|o| match o {
        mt::Output::SaveReplica(meta) => Some(meta.clone()),
        _ => None,
    });
    let why = saved
        .expect("the inconsistency is persisted")
        .inconsistent
        .expect("marked inconsistent");
    assert!(why.contains("3..=9"), "{why}");
    assert!(m.stats().replicas[0].inconsistent.is_some());
    // The stream goes on from the new seq.
    let (_, persisted) = mt_apply(&mut m, conn2, 1, 10, 11);
    assert!(matches!(
        sent(&persisted)[..],
        [Message::Applied {
            applied_seq: 11,
            ..
        }]
    ));
    assert!(
        m.stats().replicas[0].inconsistent.is_some(),
        "still inconsistent until a resync"
    );
}

// ---------------------------------------------------------------------------------------------
// (f) agent backpressure

#[test]
fn agent_holds_writes_past_its_buffer_and_completes_them_after_acks() {
    let mut settings = agent_settings();
    settings.batch_bytes_max = BLOCK_BYTES;
    settings.buffer_bytes_max = 4 * BLOCK_BYTES;
    let mut c = Cluster::new(settings, false); // no process server
                                               // One write at a time (queue depth 1): the limit counts recorded writes, so writes already
                                               // in flight when it is reached still complete; the ones that arrive after it are held.
    let ios: Vec<IoId> = (0..10)
        .map(|i| {
            let io = c.write(i * B, vec![i as u8 + 1; B]);
            c.run();
            io
        })
        .collect();
    c.advance(200);
    let done: Vec<IoId> = ios
        .iter()
        .copied()
        .filter(|io| c.completed.contains_key(io))
        .collect();
    assert_eq!(
        done,
        ios[..4],
        "writes past the buffer limit are held, not failed"
    );
    assert_eq!(
        c.source_ops.len(),
        4,
        "held writes do not reach the source disk"
    );
    assert_eq!(c.agent.stats().disks[0].buffered_bytes, 4 * BLOCK_BYTES);
    assert!(!c.agent.has_room(0));

    c.restart_ps(); // the process server comes up for the first time
    c.settle();
    assert!(c.completed.values().all(|r| r.is_ok()));
    assert_eq!(c.completed.len(), 10);
    assert_eq!(
        c.source_ops.iter().map(|(io, _)| *io).collect::<Vec<_>>(),
        ios,
        "held writes keep their order"
    );
    c.assert_replica_is_source();
    assert!(c.agent.has_room(0));
}

// ---------------------------------------------------------------------------------------------
// (g) configuration server

#[test]
fn config_server_assigns_the_disk_to_the_registered_process_server_and_master_target() {
    let now = Timestamp::from_millis(5);
    let mut s = ConfigServer::new(cs_settings(), now);
    let (ca, cp, cm) = (ConnId(1), ConnId(2), ConnId(3));
    for (conn, node) in [(ca, Node::Agent), (cp, Node::Ps), (cm, Node::Mt)] {
        s.handle(
            now,
            cs::Input::Net(NetEvent::Accepted {
                conn,
                peer: node.hello(),
            }),
        );
    }
    let reg = |data: &str, disks: Vec<DiskInfo>| {
        Message::Register(Registration {
            data_addr: data.into(),
            api_addr: format!("{data}-api"),
            disks,
        })
    };
    let recv = |s: &mut ConfigServer, conn: ConnId, msg: Message| {
        s.handle(
            now,
            cs::Input::Net(NetEvent::Received {
                conn,
                msg,
                data: vec![],
            }),
        );
        std::iter::from_fn(|| s.poll_output())
            .map(|cs::Output::Net(cmd)| cmd)
            .filter_map(|cmd| match cmd {
                NetCommand::Send { conn, msg, .. } => Some((conn, msg)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // The agent first: nothing to place it on yet.
    let out = recv(
        &mut s,
        ca,
        reg(
            "",
            vec![DiskInfo {
                disk: disk_id(),
                size_bytes: DISK_BYTES as u64,
            }],
        ),
    );
    assert!(out.is_empty(), "{out:?}");
    let out = recv(&mut s, cp, reg("ps:7001", vec![]));
    assert!(out.is_empty(), "no master target yet: {out:?}");
    let out = recv(&mut s, cm, reg("mt:7002", vec![]));
    let assign = out
        .iter()
        .find(|(c, m)| *c == ca && matches!(m, Message::Assign(_)))
        .expect("Assign to the agent");
    let Message::Assign(a) = &assign.1 else {
        unreachable!()
    };
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].disk.clone(), a[0].epoch), (disk_id(), Epoch(1)));
    assert_eq!(
        (
            a[0].process_server.as_str(),
            a[0].process_server_addr.as_str()
        ),
        ("ps1", "ps:7001")
    );
    let routes = out
        .iter()
        .find(|(c, m)| *c == cp && matches!(m, Message::Routes(_)))
        .expect("Routes to the process server");
    let Message::Routes(r) = &routes.1 else {
        unreachable!()
    };
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].disk.clone(), r[0].epoch, r[0].size_bytes),
        (disk_id(), Epoch(1), DISK_BYTES as u64)
    );
    assert_eq!(
        (
            r[0].master_target.as_str(),
            r[0].master_target_addr.as_str()
        ),
        ("mt1", "mt:7002")
    );
    assert!(
        out.iter().all(|(c, _)| *c != cm),
        "the master target gets nothing"
    );

    let st = s.status();
    assert_eq!(st.components.len(), 3);
    assert_eq!(
        st.disks[0].master_target_api.as_deref(),
        Some("mt:7002-api")
    );

    // A message on an unknown connection closes it.
    s.handle(
        now,
        cs::Input::Net(NetEvent::Received {
            conn: ConnId(99),
            msg: open(1, 1),
            data: vec![],
        }),
    );
    assert!(matches!(
        s.poll_output(),
        Some(cs::Output::Net(NetCommand::Close { conn: ConnId(99) }))
    ));
}

#[test]
fn the_cluster_is_wired_by_the_config_server() {
    let c = Cluster::new(agent_settings(), true);
    assert_eq!(c.delivered_to(Node::Agent, "Assign").len(), 1);
    assert_eq!(c.delivered_to(Node::Ps, "Routes").len(), 1);
    assert_eq!(
        c.delivered_to(Node::Ps, "OpenStream").len(),
        1,
        "agent -> process server stream"
    );
    assert_eq!(
        c.delivered_to(Node::Mt, "OpenStream").len(),
        1,
        "process server -> master target stream"
    );
    assert!(c.agent.stats().disks[0].connected);
    assert!(c.ps.as_ref().unwrap().stats().disks[0].master_target_connected);
}

// ---------------------------------------------------------------------------------------------
// process server cache full: agents are told Busy and wait

#[test]
fn a_full_cache_makes_the_agent_wait_without_a_resend_storm() {
    let mut settings = agent_settings();
    settings.batch_bytes_max = BLOCK_BYTES;
    settings.window_batches_max = 4;
    let mut c = Cluster::new(settings, false);
    let mut pss = ps_settings();
    pss.cache_bytes_max = 3 * BLOCK_BYTES + 1000; // three cached batches
    pss.busy_retry_ms = 20;
    c.ps = Some(ProcessServer::new(pss.clone(), vec![], vec![], c.now));
    c.advance(30);
    c.hold_journal = true; // the master target is slow: nothing leaves the cache
    let mut rng = Rng(5);
    for i in 0..8 {
        let data = rng.bytes(B); // incompressible
        c.write(i * B, data);
        c.run();
    }
    c.advance(200);
    let busy = c.delivered_to(Node::Agent, "Busy").len();
    let batches = c.delivered_to(Node::Ps, "Batch").len();
    // Resends are paced by busy_retry_ms: about 4 per 20 ms over 200 ms, not a tight loop.
    assert!(busy > 0, "the cache filled up");
    assert!(
        batches < 100,
        "{batches} batches sent in 200 ms while the cache is full ({busy} Busy)"
    );
    assert_eq!(c.agent.stats().disks[0].seq_cached, 3);

    c.hold_journal = false;
    c.persist_journal(usize::MAX);
    c.settle();
    c.assert_replica_is_source();
}

/// The encodings of the batches the master target received, in order.
fn forwarded_encodings(c: &Cluster) -> Vec<Encoding> {
    c.delivered
        .iter()
        .filter_map(|(n, m)| match (n, m) {
            (Node::Mt, Message::Batch(h)) => Some(h.encoding),
            _ => None,
        })
        .collect()
}

/// Writes `n` compressible batches (one block each) while the master target holds its journal,
/// so that batches queue for the process server's window; then lets everything drain.
fn write_through_a_stalled_master_target(c: &mut Cluster, n: usize) {
    c.hold_journal = true;
    for i in 0..n {
        c.write((i % DISK_BLOCKS) * B, vec![i as u8 + 1; B]);
        c.run();
    }
    c.advance(50);
    c.hold_journal = false;
    c.persist_journal(usize::MAX);
    c.settle();
}

#[test]
fn adaptive_compression_compresses_only_while_batches_wait_for_the_link() {
    let mut settings = agent_settings();
    settings.batch_bytes_max = BLOCK_BYTES;
    let mut c = Cluster::new(settings, true);
    c.advance(30);
    // The master target keeps up: compressible batches still go raw (no CPU spent for nothing).
    for i in 0..3 {
        c.write(i * B, vec![7u8; B]);
        c.run();
        c.settle();
    }
    let kept_up = forwarded_encodings(&c);
    assert_eq!(kept_up.len(), 3, "{kept_up:?}");
    assert!(kept_up.iter().all(|e| *e == Encoding::Raw), "{kept_up:?}");
    // The master target stalls: batches wait for the window (3) and are compressed.
    write_through_a_stalled_master_target(&mut c, 12);
    let all = forwarded_encodings(&c);
    let zstd = all.iter().filter(|e| **e == Encoding::Zstd).count();
    assert!(zstd >= 6, "{all:?}");
    c.assert_replica_is_source();
}

#[test]
fn compression_off_and_always_do_what_they_say() {
    for (policy, want) in [
        (CompressionPolicy::Off, Encoding::Raw),
        (CompressionPolicy::Always, Encoding::Zstd),
    ] {
        let mut settings = agent_settings();
        settings.batch_bytes_max = BLOCK_BYTES;
        let mut c = Cluster::new(settings, true);
        c.ps.as_mut().unwrap().set_compression(policy, -1);
        c.advance(30);
        c.write(0, vec![9u8; B]);
        c.run();
        c.settle();
        write_through_a_stalled_master_target(&mut c, 8);
        let all = forwarded_encodings(&c);
        assert!(all.len() >= 9, "{policy:?}: {all:?}");
        assert!(all.iter().all(|e| *e == want), "{policy:?}: {all:?}");
        c.assert_replica_is_source();
    }
}
