//! An agent driven alone, message by message: its storage outputs carried out at once, its
//! connections to the configuration server (`CS`) and the process server (`PS`) accepted.

use super::*;
use haven_core::agent::{self, Agent, SourceOp};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::{Assignment, Message};
use haven_core::{ComponentId, ConnId, DiskId, Epoch, Machine, Seq, Timestamp};

pub const CS: ConnId = ConnId(1);
pub const PS: ConnId = ConnId(2);
pub const EPOCH: Epoch = Epoch(1);

pub struct A {
    pub agent: Agent,
    pub now: Timestamp,
    /// Messages sent to the process server, in order.
    pub to_ps: Vec<Message>,
    /// Connections the agent closed.
    pub closed: Vec<ConnId>,
    /// Connections to the process server the agent made (`PS` first).
    pub ps_conns: Vec<ConnId>,
    pub next_io: u64,
    /// `StartCopy` outputs seen (each answered `CopyDone` at once).
    pub copies_started: usize,
    /// Messages sent to the configuration server, in order.
    pub to_cs: Vec<Message>,
    /// The `Reserve` outputs' `reserved`, in order (each answered `Reserved` at once).
    pub reserves: Vec<u64>,
    /// `Complete` outputs, in order.
    pub completed: Vec<(agent::IoId, Result<(), String>)>,
    /// Every message sent to a process server, with its connection.
    pub ps_sends: Vec<(ConnId, Message)>,
    /// The addresses of the process-server connections made, as `ps_conns`.
    pub ps_addrs: Vec<String>,
    /// `Retired` outputs (disk indexes), in order.
    pub retired: Vec<usize>,
}

/// An assignment of `disk` to process server ps1 at `addr`, with no batch bounds of its own.
pub fn assignment(disk: DiskId, epoch: Epoch, addr: &str) -> Assignment {
    Assignment {
        disk,
        epoch,
        process_server: ComponentId::new("ps1").unwrap(),
        process_server_addr: addr.into(),
        batch_bytes_max: None,
        batch_delay_ms: None,
    }
}

impl A {
    /// An agent with one disk, registered and streaming to its process server (`StreamState`
    /// answered), nothing written yet.
    pub fn streaming() -> A {
        A::streaming_with(|_| {})
    }

    /// `streaming`, with settings changed by `f`.
    pub fn streaming_with(f: impl FnOnce(&mut agent::AgentSettings)) -> A {
        let mut a = A::assigned_with(f);
        let state = Message::StreamState {
            disk: disk_id(),
            epoch: EPOCH,
            cached_seq: 0,
            applied_seq: 0,
        };
        a.recv(PS, state);
        a.to_ps.clear();
        a
    }

    /// An agent with one disk, registered, assigned to its process server and its stream
    /// opening (`OpenStream` sent, not answered); settings changed by `f`.
    pub fn assigned_with(f: impl FnOnce(&mut agent::AgentSettings)) -> A {
        A::assigned_at(0, f)
    }

    /// `assigned_with`, the disk's stored seq reservation being `reserved`.
    pub fn assigned_at(reserved: Seq, f: impl FnOnce(&mut agent::AgentSettings)) -> A {
        let mut settings = agent_settings();
        settings.batch_bytes_max = haven_core::batch::BLOCK_BYTES; // one batch per block write
        f(&mut settings);
        let mut a = A::new(settings, vec![(disk_id(), DISK_BYTES as u64, reserved)]);
        let assign = assignment(disk_id(), EPOCH, Node::Ps.addr());
        a.recv(CS, Message::Assign(vec![assign]));
        assert!(
            a.to_ps.iter().any(|m| m.kind() == "OpenStream"),
            "{:?}",
            a.to_ps
        );
        a
    }

    /// An agent with `disks`, registered with the configuration server, none assigned yet.
    pub fn new(settings: agent::AgentSettings, disks: Vec<(DiskId, u64, Seq)>) -> A {
        let now = Timestamp::from_millis(1_000_000);
        let mut a = A {
            agent: Agent::new(settings, disks, now),
            now,
            to_ps: vec![],
            closed: vec![],
            ps_conns: vec![],
            next_io: 1,
            copies_started: 0,
            to_cs: vec![],
            reserves: vec![],
            completed: vec![],
            ps_sends: vec![],
            ps_addrs: vec![],
            retired: vec![],
        };
        a.run();
        a
    }

    pub fn input(&mut self, i: agent::Input) {
        self.agent.handle(self.now, i);
        self.run();
    }

    pub fn recv(&mut self, conn: ConnId, msg: Message) {
        let data = vec![];
        self.input(agent::Input::Net(NetEvent::Received { conn, msg, data }));
    }

    /// Advances the clock by `ms`, one tick per millisecond.
    pub fn advance(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now = self.now.plus_millis(1);
            self.input(agent::Input::Tick);
        }
    }

    pub fn write_block(&mut self, block: usize) {
        self.write_block_on(0, block);
    }

    /// Writes one block of disk number `disk`.
    pub fn write_block_on(&mut self, disk: usize, block: usize) {
        let io = self.next_io;
        self.next_io += 1;
        let op = SourceOp::Write {
            offset: (block * B) as u64,
            data: vec![block as u8 + 1; B],
        };
        let fua = false;
        self.input(agent::Input::Write { io, disk, op, fua });
    }

    /// Carries out the agent's outputs: storage at once, connections to the configuration
    /// server (`CS`) and the process server (`PS`) accepted.
    pub fn run(&mut self) {
        while let Some(o) = self.agent.poll_output() {
            let next = match o {
                agent::Output::Reserve { disk, reserved } => {
                    self.reserves.push(reserved);
                    Some(agent::Input::Reserved { disk, reserved })
                }
                agent::Output::Complete { io, result } => {
                    self.completed.push((io, result));
                    None
                }
                agent::Output::SourceWrite { io, op, .. } => {
                    let data = match op {
                        SourceOp::Write { data, .. } => Some(data),
                        SourceOp::Zero { .. } => None,
                    };
                    Some(agent::Input::SourceDone { io, data })
                }
                agent::Output::SourceSync { io, .. } => Some(agent::Input::Synced { io }),
                agent::Output::StartCopy { disk } => {
                    self.copies_started += 1;
                    Some(agent::Input::CopyDone { disk })
                }
                agent::Output::Net(NetCommand::Connect { token, addr }) => {
                    let (conn, peer) = if addr == Node::Cs.addr() {
                        (CS, Node::Cs.hello())
                    } else {
                        let conn = ConnId(PS.0 + 10 * self.ps_conns.len() as u64);
                        self.ps_conns.push(conn);
                        self.ps_addrs.push(addr);
                        (conn, Node::Ps.hello())
                    };
                    Some(agent::Input::Net(NetEvent::Connected { token, conn, peer }))
                }
                agent::Output::Net(NetCommand::Send { conn, msg, .. }) if conn != CS => {
                    self.ps_sends.push((conn, msg.clone()));
                    self.to_ps.push(msg);
                    None
                }
                agent::Output::Retired { disk } => {
                    self.retired.push(disk);
                    None
                }
                agent::Output::Net(NetCommand::Send { msg, .. }) => {
                    self.to_cs.push(msg);
                    None
                }
                agent::Output::Net(NetCommand::Close { conn }) => {
                    self.closed.push(conn);
                    let reason = "closed".into();
                    Some(agent::Input::Net(NetEvent::Closed { conn, reason }))
                }
            };
            if let Some(i) = next {
                self.agent.handle(self.now, i);
            }
        }
    }

    /// A chunk of the initial copy: `blocks` blocks at `block`.
    pub fn copy_chunk(&mut self, block: u64, blocks: usize, last: bool) {
        let data = vec![0xc0 + block as u8; blocks * B];
        self.input(agent::Input::CopyChunk {
            disk: 0,
            block,
            data,
            last,
        });
    }

    /// The headers of the batches sent: (first seq, first block, blocks, consistent).
    pub fn batch_headers(&self) -> Vec<(u64, u64, u32, bool)> {
        self.to_ps
            .iter()
            .filter_map(|m| match m {
                Message::Batch(h) => {
                    Some((h.first_seq, h.ops[0].block, h.ops[0].blocks, h.consistent))
                }
                _ => None,
            })
            .collect()
    }

    pub fn batches_sent(&self) -> Vec<u64> {
        self.to_ps
            .iter()
            .filter_map(|m| match m {
                Message::Batch(h) => Some(h.first_seq),
                _ => None,
            })
            .collect()
    }
}
