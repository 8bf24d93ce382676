//! A master target alone, fed by hand: one process server connection, batches built in the test.

use super::{disk_id, mt_settings, Node, DISK_BYTES};
use haven_core::batch::{BatchHeader, Encoding, Op, OpKind};
use haven_core::master_target::{self as mt, MasterTarget};
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::Message;
use haven_core::Machine;
use haven_core::{ConnId, Epoch, Seq, Timestamp};

pub fn mt_alone() -> (MasterTarget, ConnId) {
    let now = Timestamp::from_millis(1000);
    let mut m = MasterTarget::new(mt_settings(), vec![], now);
    let conn = ConnId(9);
    m.handle(
        now,
        mt::Input::Net(NetEvent::Accepted {
            conn,
            peer: Node::Ps.hello_at(Epoch(1)),
        }),
    );
    (m, conn)
}

/// A process server's connection made for `epoch` is accepted on `conn`.
pub fn mt_accept(m: &mut MasterTarget, conn: ConnId, epoch: u64) {
    let peer = Node::Ps.hello_at(Epoch(epoch));
    m.handle(
        Timestamp::from_millis(1001),
        mt::Input::Net(NetEvent::Accepted { conn, peer }),
    );
}

pub fn mt_outputs(m: &mut MasterTarget) -> Vec<mt::Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

pub fn mt_recv(m: &mut MasterTarget, conn: ConnId, msg: Message, data: Vec<u8>) -> Vec<mt::Output> {
    m.handle(
        Timestamp::from_millis(1001),
        mt::Input::Net(NetEvent::Received { conn, msg, data }),
    );
    mt_outputs(m)
}

/// Opens the stream of disk0 on `conn`, accepted anew for `epoch` (as a process server opens a
/// connection per stream and epoch), and makes every replica save it asks for durable; the
/// outputs of both steps.
pub fn mt_open(m: &mut MasterTarget, conn: ConnId, epoch: u64, first_seq: Seq) -> Vec<mt::Output> {
    mt_accept(m, conn, epoch);
    let mut outs = mt_recv(m, conn, open(epoch, first_seq), vec![]);
    let saves: Vec<u64> = outs.iter().filter_map(save_of).collect();
    for save in saves {
        m.handle(
            Timestamp::from_millis(1001),
            mt::Input::ReplicaSaved { save },
        );
        outs.extend(mt_outputs(m));
    }
    outs
}

/// The save id of a `CreateReplica` or `SaveReplica`.
pub fn save_of(o: &mt::Output) -> Option<u64> {
    match o {
        mt::Output::CreateReplica { save, .. } | mt::Output::SaveReplica { save, .. } => {
            Some(*save)
        }
        _ => None,
    }
}

pub fn sent(outs: &[mt::Output]) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            mt::Output::Net(NetCommand::Send { msg, .. }) => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

pub fn closes(outs: &[mt::Output]) -> bool {
    outs.iter()
        .any(|o| matches!(o, mt::Output::Net(NetCommand::Close { .. })))
}

pub fn data_batch(epoch: u64, first: Seq, last: Seq) -> (BatchHeader, Vec<u8>) {
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

pub fn open(epoch: u64, first_seq: Seq) -> Message {
    Message::OpenStream {
        disk: disk_id(),
        epoch: Epoch(epoch),
        size_bytes: DISK_BYTES as u64,
        first_seq,
    }
}

/// Sends a batch and persists its append; returns the outputs of both steps.
pub fn mt_apply(
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
