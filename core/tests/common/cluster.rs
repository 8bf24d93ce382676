//! The `Cluster`: the four roles wired together, its clock and workload, and the network that
//! routes `NetCommand`s between them through the real framing.

use super::{cs_settings, disk_id, mt_settings, ps_settings, Node, DISK_BYTES};
use haven_core::agent::{self, Agent, AgentSettings, IoId, SourceOp};
use haven_core::batch::BatchHeader;
use haven_core::config_server::{self as cs, ConfigServer};
use haven_core::master_target::{self as mt, MasterTarget};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::process_server::{self as ps, CacheDiskMeta, CacheLoc, CachedBatch, ProcessServer};
use haven_core::protocol::{self, Message};
use haven_core::Machine;
use haven_core::{ConnId, DiskId, Seq, Timestamp};
use std::collections::{BTreeMap, VecDeque};

pub(super) enum Local {
    Agent(agent::Input),
    Ps(ps::Input),
    Mt(mt::Input),
}

pub(super) struct Conn {
    pub(super) ends: (Node, Node),
    pub(super) open: bool,
}

pub struct Cluster {
    pub now: Timestamp,
    pub cs: ConfigServer,
    pub ps: Option<ProcessServer>,
    pub mt: MasterTarget,
    pub agent: Agent,
    pub(super) net: VecDeque<(Node, NetEvent)>,
    pub(super) conns: BTreeMap<ConnId, Conn>,
    pub(super) next_conn: u64,
    pub(super) local: VecDeque<Local>,
    /// Every Received message, in delivery order: (to, message).
    pub delivered: Vec<(Node, Message)>,
    /// Outputs about a protection's end or restart, as text (`Retired disk 0`, ...).
    pub lifecycle: Vec<String>,

    // Agent storage.
    pub source: Vec<u8>,
    /// source_at[seq]: the source disk right after write `seq` (index 0: before any write).
    pub source_at: Vec<Vec<u8>>,
    /// Source ops in the order the agent carried them out; op i got seq i + 1.
    pub source_ops: Vec<(IoId, SourceOp)>,
    pub(super) next_io: IoId,
    pub submitted: Vec<IoId>,
    pub completed: BTreeMap<IoId, Result<(), String>>,

    // Process server storage.
    pub hold_cache: bool,
    pub pending_cache: VecDeque<(u64, CachedBatch, Vec<u8>)>,
    pub cache: BTreeMap<CacheLoc, Vec<u8>>,
    pub cache_index: Vec<CachedBatch>,
    pub ps_meta: BTreeMap<DiskId, CacheDiskMeta>,
    pub(super) next_loc: u64,
    pub cache_persisted_seq: Seq,

    // Master target storage.
    pub hold_journal: bool,
    /// (append id, header, raw data, whether the core made its end a recovery point)
    pub pending_journal: VecDeque<(u64, BatchHeader, Vec<u8>, bool)>,
    pub replica: Vec<u8>,
    /// replica_at[seq]: the replica at each batch boundary.
    pub replica_at: BTreeMap<Seq, Vec<u8>>,
    pub journal_seq: Seq,
    pub journal_bytes: u64,
    pub journal_appends: usize,
}

impl Cluster {
    pub fn new(agent_settings: AgentSettings, with_ps: bool) -> Cluster {
        let now = Timestamp::from_millis(1_000_000);
        let mut c = Cluster {
            now,
            cs: ConfigServer::new(cs_settings(), Default::default(), now),
            ps: with_ps.then(|| ProcessServer::new(ps_settings(), vec![], vec![], now)),
            mt: MasterTarget::new(mt_settings(), vec![], now),
            agent: Agent::new(
                agent_settings,
                vec![super::agent_alone::copied_disk(
                    disk_id(),
                    DISK_BYTES as u64,
                    0,
                )],
                now,
            ),
            net: VecDeque::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            local: VecDeque::new(),
            lifecycle: vec![],
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

    pub(super) fn drain(&mut self) {
        // A few rounds settle the roles' local outputs; thousands mean they never go quiet (a
        // role that answers each of its own outputs with another).
        for _ in 0..10_000 {
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
            // The configuration server's store is instant here (the simulation models it).
            let mut persisted = vec![];
            while let Some(o) = self.cs.poll_output() {
                any = true;
                match o {
                    cs::Output::Net(cmd) => self.net_cmd(Node::Cs, cmd),
                    cs::Output::Persist { id, .. } => persisted.push(id),
                    cs::Output::CommandDone { .. } => {}
                }
            }
            for id in persisted {
                self.cs.handle(self.now, cs::Input::Persisted { id });
            }
            if !any {
                return;
            }
        }
        panic!("the roles' outputs never stop");
    }

    /// Feeds one pending input; false when nothing is pending.
    pub(super) fn step(&mut self) -> bool {
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

    pub fn run(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the cluster does not settle");
    }

    /// Advances the clock `ms` milliseconds, one tick per millisecond.
    pub fn advance(&mut self, ms: u64) {
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
    pub fn settle(&mut self) {
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

    pub fn submit(&mut self, op: SourceOp, fua: bool) -> IoId {
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

    pub fn write(&mut self, offset: usize, data: Vec<u8>) -> IoId {
        self.submit(
            SourceOp::Write {
                offset: offset as u64,
                data,
            },
            false,
        )
    }

    pub fn zero(&mut self, offset: usize, len: usize) -> IoId {
        self.submit(
            SourceOp::Zero {
                offset: offset as u64,
                len: len as u64,
                punch: false,
            },
            false,
        )
    }

    pub fn flush(&mut self) -> IoId {
        let io = self.next_io;
        self.next_io += 1;
        self.submitted.push(io);
        self.local
            .push_back(Local::Agent(agent::Input::Flush { io, disk: 0 }));
        io
    }

    // ---- network ----

    pub(super) fn other_end(&self, conn: ConnId, me: Node) -> Node {
        let (a, b) = self.conns[&conn].ends;
        if a == me {
            b
        } else {
            a
        }
    }

    pub(super) fn is_up(&self, node: Node) -> bool {
        node != Node::Ps || self.ps.is_some()
    }

    pub(super) fn net_cmd(&mut self, from: Node, cmd: NetCommand) {
        match cmd {
            NetCommand::Connect { token, addr, epoch } => {
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
                        peer: from.hello_at(epoch),
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

    pub(super) fn close(&mut self, conn: ConnId) {
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
    pub(super) fn check_promise(&self, from: Node, to: Node, msg: &Message) {
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

    // ---- queries ----

    pub fn delivered_to(&self, node: Node, kind: &str) -> Vec<Message> {
        self.delivered
            .iter()
            .filter(|(n, m)| *n == node && m.kind() == kind)
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn assert_replica_is_source(&self) {
        assert!(
            self.replica == self.source,
            "replica differs from the source"
        );
    }
}
