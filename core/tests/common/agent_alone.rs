//! An agent driven alone, message by message: its storage outputs carried out at once, its
//! connections to the configuration server (`CS`) and the process server (`PS`) accepted.

use super::*;
use haven_core::agent::{self, Agent, AgentDisk, SourceOp, COPY_CHUNK_BYTES};
use haven_core::batch::BatchHeader;
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
    /// Each disk's source image: source writes change it, copy reads read it.
    pub images: Vec<Vec<u8>>,
    /// `CopyRead` outputs (disk, offset), each answered at once from `images`.
    pub copy_reads: Vec<(usize, u64)>,
    /// `CopyCached` outputs (disk indexes), in order.
    pub copies_cached: Vec<usize>,
    /// The epoch of each `CopyCached`.
    pub copied_epochs: Vec<Epoch>,
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
    /// Every batch sent, with its data part, in order.
    pub batches: Vec<(BatchHeader, Vec<u8>)>,
}

/// A disk whose copy is cached at the process server already (nothing to copy).
pub fn copied_disk(disk: DiskId, size_bytes: u64, reserved: Seq) -> AgentDisk {
    AgentDisk {
        resume: None,
        disk,
        size_bytes,
        reserved,
        copied: Some(EPOCH),
    }
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
        let disk = copied_disk(disk_id(), DISK_BYTES as u64, reserved);
        let mut a = A::new(settings, vec![disk]);
        let assign = assignment(disk_id(), EPOCH, Node::Ps.addr());
        a.recv(CS, Message::Assign(vec![assign]));
        assert!(
            a.to_ps.iter().any(|m| m.kind() == "OpenStream"),
            "{:?}",
            a.to_ps
        );
        a
    }

    /// An agent with `disks` (all zeros), registered with the configuration server, none
    /// assigned yet.
    pub fn new(settings: agent::AgentSettings, disks: Vec<AgentDisk>) -> A {
        let now = Timestamp::from_millis(1_000_000);
        let images = disks
            .iter()
            .map(|d| vec![0; d.size_bytes as usize])
            .collect();
        let mut a = A {
            agent: Agent::new(settings, disks, now),
            now,
            to_ps: vec![],
            closed: vec![],
            ps_conns: vec![],
            next_io: 1,
            images,
            copy_reads: vec![],
            copies_cached: vec![],
            copied_epochs: vec![],
            to_cs: vec![],
            reserves: vec![],
            completed: vec![],
            ps_sends: vec![],
            ps_addrs: vec![],
            retired: vec![],
            batches: vec![],
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

    /// The process server acknowledges disk0's stream as cached through everything written.
    pub fn ack_all_cached(&mut self) {
        let cached_seq = self.agent.stats().disks[0].seq_written;
        let ack = Message::BatchAck {
            disk: disk_id(),
            epoch: EPOCH,
            cached_seq,
            applied_seq: 0,
        };
        self.recv(PS, ack);
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
                agent::Output::SourceWrite { io, disk, op } => {
                    let data = self.apply(disk, &op);
                    Some(agent::Input::SourceDone { io, data })
                }
                agent::Output::CopyRead { disk, offset } => {
                    self.copy_reads.push((disk, offset));
                    let image = &self.images[disk];
                    let end = (offset + COPY_CHUNK_BYTES).min(image.len() as u64);
                    let data = image[offset.min(end) as usize..end as usize].to_vec();
                    Some(agent::Input::CopyData { disk, offset, data })
                }
                agent::Output::CopyCached { disk, epoch } => {
                    self.copies_cached.push(disk);
                    self.copied_epochs.push(epoch);
                    None
                }
                agent::Output::SourceSync { io, .. } => Some(agent::Input::Synced { io }),
                agent::Output::Net(NetCommand::Connect { token, addr, .. }) => {
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
                agent::Output::Net(NetCommand::Send { conn, msg, data }) if conn != CS => {
                    if let Message::Batch(h) = &msg {
                        self.batches.push((h.clone(), data.to_vec()));
                    }
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

    /// Carries out a source op on the image of `disk`; returns the blocks it touched as they
    /// are now (None for aligned zeroing), as a driver does.
    fn apply(&mut self, disk: usize, op: &SourceOp) -> Option<Vec<u8>> {
        let image = &mut self.images[disk];
        let (first, blocks) = op.block_span();
        match op {
            SourceOp::Write { offset, data } => {
                image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
            }
            SourceOp::Zero { offset, len, .. } => {
                image[*offset as usize..(*offset + *len) as usize].fill(0);
                if op.aligned() {
                    return None;
                }
            }
        }
        let start = first as usize * B;
        Some(image[start..start + blocks as usize * B].to_vec())
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
