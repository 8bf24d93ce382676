//! A process server driven alone, message by message: one disk, its master-target stream and
//! its agent's stream opened by hand.

use super::*;
use haven_core::batch::{BatchHeader, CompressionPolicy, Encoding, Op, OpKind};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::process_server::{self as ps, CacheDiskMeta, ProcessServer};
use haven_core::protocol::{self, Message, Route};
use haven_core::{ComponentId, ConnId, Epoch, Machine, Seq, Timestamp};

pub const CS: ConnId = ConnId(1);
pub const MT: ConnId = ConnId(2);
pub const AGENT: ConnId = ConnId(3);
pub const EPOCH: Epoch = Epoch(1);

pub struct Ps {
    pub ps: ProcessServer,
    pub now: Timestamp,
}

impl Ps {
    /// A process server that knows the disk (`applied_seq` as its metadata says), is registered
    /// with the configuration server, has its master-target stream opening (`OpenStream` sent,
    /// not answered) and the agent's stream open at `first_seq`.
    pub fn new(settings: ps::ProcessServerSettings, applied_seq: Seq, first_seq: Seq) -> Ps {
        let now = Timestamp::from_millis(1_000_000);
        let meta = CacheDiskMeta {
            disk: disk_id(),
            epoch: EPOCH,
            size_bytes: DISK_BYTES as u64,
            applied_seq,
        };
        let mut p = Ps {
            ps: ProcessServer::new(settings, vec![meta], vec![], now),
            now,
        };
        p.ps.set_compression(CompressionPolicy::Off, -1);
        let out = p.outputs();
        let token = connect_token(&out, Node::Cs.addr());
        p.ps.handle(
            now,
            ps::Input::Net(NetEvent::Connected {
                token,
                conn: CS,
                peer: Node::Cs.hello(),
            }),
        );
        let route = Route {
            disk: disk_id(),
            epoch: EPOCH,
            size_bytes: DISK_BYTES as u64,
            master_target: ComponentId::new("mt1").unwrap(),
            master_target_addr: Node::Mt.addr().into(),
        };
        p.outputs();
        let out = p.recv(CS, Message::Routes(vec![route]), vec![]);
        let token = connect_token(&out, Node::Mt.addr());
        p.ps.handle(
            now,
            ps::Input::Net(NetEvent::Connected {
                token,
                conn: MT,
                peer: Node::Mt.hello(),
            }),
        );
        let out = p.outputs();
        assert!(
            sent(&out, MT).iter().any(|m| m.kind() == "OpenStream"),
            "{out:?}"
        );
        p.ps.handle(
            now,
            ps::Input::Net(NetEvent::Accepted {
                conn: AGENT,
                peer: Node::Agent.hello_at(EPOCH),
            }),
        );
        let open = Message::OpenStream {
            disk: disk_id(),
            epoch: EPOCH,
            size_bytes: DISK_BYTES as u64,
            first_seq,
        };
        let out = p.recv(AGENT, open, vec![]);
        assert!(
            sent(&out, AGENT).iter().any(|m| m.kind() == "StreamState"),
            "{out:?}"
        );
        p
    }

    pub fn outputs(&mut self) -> Vec<ps::Output> {
        std::iter::from_fn(|| self.ps.poll_output()).collect()
    }

    pub fn recv(&mut self, conn: ConnId, msg: Message, data: Vec<u8>) -> Vec<ps::Output> {
        let ev = NetEvent::Received { conn, msg, data };
        self.ps.handle(self.now, ps::Input::Net(ev));
        self.outputs()
    }

    /// The agent sends a one-block batch of seq `seq`.
    pub fn batch(&mut self, seq: Seq) -> Vec<ps::Output> {
        let (header, data) = one_block_batch(seq);
        self.recv(AGENT, Message::Batch(header), data)
    }
}

pub fn one_block_batch(seq: Seq) -> (BatchHeader, Vec<u8>) {
    let data = Rng(seq * 7919 + 1).bytes(B);
    let header = BatchHeader {
        disk: disk_id(),
        epoch: EPOCH,
        first_seq: seq,
        last_seq: seq,
        first_time: Timestamp::from_millis(seq),
        last_time: Timestamp::from_millis(seq),
        consistent: true,
        ops: vec![Op {
            seq,
            block: seq,
            blocks: 1,
            kind: OpKind::Data,
        }],
        encoding: Encoding::Raw,
        raw_bytes: B as u64,
    };
    (header, data)
}

pub fn connect_token(out: &[ps::Output], to: &str) -> u64 {
    out.iter()
        .find_map(|o| match o {
            ps::Output::Net(NetCommand::Connect { token, addr, .. }) if addr == to => Some(*token),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Connect to {to}: {out:?}"))
}

/// The messages the outputs send on `conn`.
pub fn sent(out: &[ps::Output], conn: ConnId) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            ps::Output::Net(NetCommand::Send { conn: c, msg, .. }) if *c == conn => {
                Some(msg.clone())
            }
            _ => None,
        })
        .collect()
}

/// The one `CacheAppend` among the outputs: its id and the bytes of the record it makes.
pub fn appended(out: &[ps::Output]) -> (u64, u64) {
    let mut appends = out.iter().filter_map(|o| match o {
        ps::Output::CacheAppend { id, header, data } => {
            let frame = protocol::encode(&Message::Batch(header.clone()), data).unwrap();
            Some((*id, frame.len() as u64))
        }
        _ => None,
    });
    let a = appends
        .next()
        .unwrap_or_else(|| panic!("no CacheAppend: {out:?}"));
    assert!(appends.next().is_none(), "{out:?}");
    a
}

/// The master target's answer to the stream's `OpenStream`: it holds everything through
/// `applied`.
pub fn stream_state(applied: Seq) -> Message {
    Message::StreamState {
        disk: disk_id(),
        epoch: EPOCH,
        cached_seq: applied,
        applied_seq: applied,
    }
}
