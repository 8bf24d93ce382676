//! The master target alone: in-order application, re-acknowledged duplicates, epoch fencing,
//! malformed batches and gaps.

mod common;

use common::mt_alone::*;
use common::*;
use haven_core::batch::{BatchHeader, Encoding};
use haven_core::master_target as mt;
use haven_core::net::{NetCommand, NetEvent};
use haven_core::protocol::Message;
use haven_core::Machine;
use haven_core::{ConnId, Epoch, Timestamp};

// ---------------------------------------------------------------------------------------------
// (e) master target alone

#[test]
fn master_target_applies_in_order_and_reacks_duplicates() {
    let (mut m, conn) = mt_alone();
    mt_outputs(&mut m);
    let outs = mt_open(&mut m, conn, 1, 1);
    assert!(outs
        .iter()
        .any(|o| matches!(o, mt::Output::CreateReplica { meta: r, .. } if r.size_bytes == DISK_BYTES as u64)));
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
    mt_open(&mut m, conn, 2, 1);
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
    let outs = mt_open(&mut m, conn2, 1, 2);
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
    mt_open(&mut m, conn, 1, 1);
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
        mt_open(&mut m, conn, 1, 1);
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

/// `OpenStream` again on the stream's own connection, past a gap: the stream is closed until
/// the gap is durable, so a batch sent meanwhile is refused, not appended.
#[test]
fn a_reopen_on_the_same_connection_waits_for_its_save_too() {
    let (mut m, conn) = mt_alone();
    mt_open(&mut m, conn, 1, 1);
    mt_apply(&mut m, conn, 1, 1, 2);
    let outs = mt_recv(&mut m, conn, open(1, 10), vec![]);
    let save = outs.iter().find_map(save_of).expect("the gap is saved");
    let (h, d) = data_batch(1, 10, 10);
    let early = mt_recv(&mut m, conn, Message::Batch(h), d);
    assert!(
        !early
            .iter()
            .any(|o| matches!(o, mt::Output::JournalAppend { .. })),
        "appended before the gap was durable: {early:?}"
    );
    assert!(closes(&early), "{early:?}");
    m.handle(
        Timestamp::from_millis(1002),
        mt::Input::ReplicaSaved { save },
    );
    assert!(stream_state_on(&mt_outputs(&mut m), conn));
}

/// A new replica whose stream starts past seq 1 (a disk protected again) is not consistent
/// until its copy arrives, and says so without calling the earlier writes lost.
#[test]
fn a_new_replica_starting_past_seq_1_waits_for_its_copy() {
    let (mut m, conn) = mt_alone();
    let outs = mt_open(&mut m, conn, 1, 103);
    let why = outs
        .iter()
        .find_map(|o| match o {
            mt::Output::CreateReplica { meta, .. } => meta.inconsistent.clone(),
            _ => None,
        })
        .expect("created inconsistent");
    assert!(why.contains("new replica starting at seq 103"), "{why}");
    assert!(!why.contains("lost"), "{why}");
}

#[test]
fn master_target_marks_a_gap_inconsistent() {
    let (mut m, conn) = mt_alone();
    mt_open(&mut m, conn, 1, 1);
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
    let outs = mt_open(&mut m, conn2, 1, 10);
    let saved = outs.iter().find_map(|o| match o {
        mt::Output::SaveReplica { meta, .. } => Some(meta.clone()),
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

/// Whether `outs` tell the process server on `conn` where the stream stands.
fn stream_state_on(outs: &[mt::Output], on: ConnId) -> bool {
    outs.iter().any(|o| {
        matches!(o, mt::Output::Net(NetCommand::Send { conn, msg: Message::StreamState { .. }, .. }) if *conn == on)
    })
}

#[test]
fn master_target_opens_a_stream_only_once_the_new_replica_is_durable() {
    let (mut m, conn) = mt_alone();
    let outs = mt_recv(&mut m, conn, open(1, 1), vec![]);
    let save = outs.iter().find_map(save_of).expect("CreateReplica");
    assert!(
        !stream_state_on(&outs, conn),
        "StreamState before the replica is saved: {outs:?}"
    );
    // A batch before the stream is open is refused, and nothing is appended.
    let (h, d) = data_batch(1, 1, 1);
    let early = mt_recv(&mut m, conn, Message::Batch(h), d);
    assert!(closes(&early), "{early:?}");
    assert!(!early
        .iter()
        .any(|o| matches!(o, mt::Output::JournalAppend { .. })));
    // A new connection opens again; the save's answer opens the stream on it alone.
    let conn2 = ConnId(12);
    mt_accept(&mut m, conn2, 1);
    let outs = mt_recv(&mut m, conn2, open(1, 1), vec![]);
    assert!(
        outs.iter().all(|o| save_of(o).is_none()),
        "saved twice: {outs:?}"
    );
    assert!(!stream_state_on(&outs, conn2));
    m.handle(
        Timestamp::from_millis(1002),
        mt::Input::ReplicaSaved { save },
    );
    let outs = mt_outputs(&mut m);
    assert!(stream_state_on(&outs, conn2), "{outs:?}");
    assert!(!stream_state_on(&outs, conn));
    let (_, persisted) = mt_apply(&mut m, conn2, 1, 1, 1);
    assert!(matches!(
        sent(&persisted)[..],
        [Message::Applied { applied_seq: 1, .. }]
    ));
}

#[test]
fn master_target_tells_a_stream_past_a_gap_where_it_stands_only_once_the_gap_is_durable() {
    let (mut m, conn) = mt_alone();
    mt_open(&mut m, conn, 1, 1);
    mt_apply(&mut m, conn, 1, 1, 2);
    m.handle(
        Timestamp::from_millis(1003),
        mt::Input::Net(closed_event(conn)),
    );
    let conn2 = ConnId(11);
    mt_accept(&mut m, conn2, 2);
    let outs = mt_recv(&mut m, conn2, open(2, 10), vec![]);
    let save = outs
        .iter()
        .find_map(save_of)
        .expect("the gap and the epoch are saved");
    assert!(!stream_state_on(&outs, conn2), "{outs:?}");
    // The process server goes away before the save is durable: nobody is told anything.
    m.handle(
        Timestamp::from_millis(1004),
        mt::Input::Net(closed_event(conn2)),
    );
    m.handle(
        Timestamp::from_millis(1005),
        mt::Input::ReplicaSaved { save },
    );
    let outs = mt_outputs(&mut m);
    assert!(sent(&outs).is_empty(), "{outs:?}");
    // It comes back: the durable state needs no new save, so the stream opens at once.
    let conn3 = ConnId(13);
    mt_accept(&mut m, conn3, 2);
    let outs = mt_recv(&mut m, conn3, open(2, 10), vec![]);
    assert!(outs.iter().all(|o| save_of(o).is_none()), "{outs:?}");
    assert!(
        matches!(
            sent(&outs)[..],
            [Message::StreamState {
                applied_seq: 2,
                epoch: Epoch(2),
                ..
            }]
        ),
        "{outs:?}"
    );
}

#[test]
fn master_target_an_older_save_answered_does_not_open_the_stream() {
    let (mut m, conn) = mt_alone();
    mt_open(&mut m, conn, 1, 1);
    // Two epoch changes (each on a connection of its own), two saves in flight: only the
    // answer to the newer opens the stream.
    let (conn2, conn3) = (ConnId(12), ConnId(13));
    mt_accept(&mut m, conn2, 2);
    let first = mt_recv(&mut m, conn2, open(2, 1), vec![]);
    let first = first.iter().find_map(save_of).expect("a save for epoch 2");
    mt_accept(&mut m, conn3, 3);
    let second = mt_recv(&mut m, conn3, open(3, 1), vec![]);
    let second = second.iter().find_map(save_of).expect("a save for epoch 3");
    m.handle(
        Timestamp::from_millis(1002),
        mt::Input::ReplicaSaved { save: first },
    );
    let outs = mt_outputs(&mut m);
    assert!(!stream_state_on(&outs, conn) && !stream_state_on(&outs, conn3));
    m.handle(
        Timestamp::from_millis(1003),
        mt::Input::ReplicaSaved { save: second },
    );
    let outs = mt_outputs(&mut m);
    assert!(stream_state_on(&outs, conn3), "{outs:?}");
    assert!(
        matches!(
            sent(&outs)[..],
            [Message::StreamState {
                epoch: Epoch(3),
                ..
            }]
        ),
        "{outs:?}"
    );
}

/// A connection is made for one epoch (its `Hello` says which): an `OpenStream` under another
/// is refused before anything is created or saved, and one never accepted is refused too.
#[test]
fn master_target_opens_a_stream_only_under_its_connections_hello_epoch() {
    let (mut m, conn) = mt_alone(); // Accepted for epoch 1.
    let outs = mt_recv(&mut m, conn, open(2, 1), vec![]);
    assert!(outs.iter().all(|o| save_of(o).is_none()), "{outs:?}");
    assert!(closes(&outs), "{outs:?}");
    match &sent(&outs)[..] {
        [Message::Reject { reason }] => assert!(
            reason.contains("epoch e2") && reason.contains("made for epoch e1"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(m.stats().replicas.is_empty());
    let stranger = ConnId(30);
    let outs = mt_recv(&mut m, stranger, open(1, 1), vec![]);
    assert!(
        matches!(sent(&outs)[..], [Message::Reject { .. }]),
        "{outs:?}"
    );
    assert!(m.stats().replicas.is_empty());
    // The same connection under its own epoch opens; closed, its epoch is forgotten.
    let outs = mt_open(&mut m, conn, 1, 1);
    assert!(stream_state_on(&outs, conn), "{outs:?}");
    m.handle(
        Timestamp::from_millis(1002),
        mt::Input::Net(closed_event(conn)),
    );
    let outs = mt_recv(&mut m, conn, open(1, 1), vec![]);
    assert!(
        matches!(sent(&outs)[..], [Message::Reject { .. }]),
        "{outs:?}"
    );
}

fn closed_event(conn: ConnId) -> NetEvent {
    NetEvent::Closed {
        conn,
        reason: "gone".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The master target's link to the configuration server, its timers, `Retire` and `OpenStream`.

const CS_CONN: ConnId = ConnId(1);

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn mt_net(m: &mut mt::MasterTarget, ms: u64, ev: NetEvent) -> Vec<mt::Output> {
    m.handle(at(ms), mt::Input::Net(ev));
    mt_outputs(m)
}

fn mt_tick(m: &mut mt::MasterTarget, ms: u64) -> Vec<mt::Output> {
    m.handle(at(ms), mt::Input::Tick);
    mt_outputs(m)
}

fn connects(outs: &[mt::Output]) -> usize {
    outs.iter()
        .filter(|o| {
            matches!(o, mt::Output::Net(NetCommand::Connect { addr, .. }) if addr == Node::Cs.addr())
        })
        .count()
}

/// The configuration server's connection comes up on `conn` at `ms`; returns what was sent.
fn cs_connected(m: &mut mt::MasterTarget, ms: u64, conn: ConnId) -> Vec<mt::Output> {
    mt_net(
        m,
        ms,
        NetEvent::Connected {
            token: u64::MAX,
            conn,
            peer: Node::Cs.hello(),
        },
    )
}

/// What was sent on `conn`.
fn sent_on(outs: &[mt::Output], on: ConnId) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            mt::Output::Net(NetCommand::Send { conn, msg, .. }) if *conn == on => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn heartbeats(outs: &[mt::Output]) -> usize {
    sent_on(outs, CS_CONN)
        .iter()
        .filter(|m| matches!(m, Message::MasterTargetHeartbeat(_)))
        .count()
}

fn closed(conn: ConnId) -> NetEvent {
    NetEvent::Closed {
        conn,
        reason: "gone".into(),
    }
}

/// A master target registered with the configuration server (on `CS_CONN`) with a replica of
/// epoch `epoch` streamed on the process server's connection; everything sent so far drained.
fn mt_with_replica(epoch: u64) -> (mt::MasterTarget, ConnId) {
    let (mut m, ps) = mt_alone();
    mt_outputs(&mut m);
    cs_connected(&mut m, 1000, CS_CONN);
    mt_open(&mut m, ps, epoch, 1);
    (m, ps)
}

fn retire(disk: haven_core::DiskId, epoch: u64) -> Message {
    Message::Retire(vec![haven_core::protocol::Retired {
        disk,
        epoch: Epoch(epoch),
    }])
}

fn removed(outs: &[mt::Output]) -> bool {
    outs.iter()
        .any(|o| matches!(o, mt::Output::RemoveReplica(d) if *d == disk_id()))
}

#[test]
fn master_target_heartbeats_every_interval_while_registered() {
    let (mut m, _) = mt_alone();
    let outs = mt_outputs(&mut m);
    assert_eq!(connects(&outs), 1, "{outs:?}");
    assert_eq!(m.poll_timeout(), Some(at(2000)), "the next heartbeat");
    let outs = cs_connected(&mut m, 1000, CS_CONN);
    assert!(matches!(
        sent_on(&outs, CS_CONN)[..],
        [Message::Register(_)]
    ));
    assert_eq!(mt_tick(&mut m, 1999).len(), 0);
    let outs = mt_tick(&mut m, 2000);
    assert_eq!(heartbeats(&outs), 1, "{outs:?}");
    assert_eq!(m.poll_timeout(), Some(at(3000)));
    assert_eq!(heartbeats(&mt_tick(&mut m, 2500)), 0);
    assert_eq!(heartbeats(&mt_tick(&mut m, 3000)), 1);
    assert_eq!(heartbeats(&mt_tick(&mut m, 3001)), 0);
    assert_eq!(m.poll_timeout(), Some(at(4000)));
}

#[test]
fn master_target_reconnects_to_the_config_server_after_a_backoff() {
    let (mut m, _) = mt_alone();
    mt_outputs(&mut m);
    cs_connected(&mut m, 1000, CS_CONN);
    // The configuration server's connection drops: reconnect after reconnect_delay_ms (50).
    let outs = mt_net(&mut m, 1200, closed(CS_CONN));
    assert_eq!(connects(&outs), 0, "{outs:?}");
    assert_eq!(m.poll_timeout(), Some(at(1250)), "the backoff deadline");
    assert_eq!(connects(&mt_tick(&mut m, 1249)), 0);
    assert_eq!(connects(&mt_tick(&mut m, 1250)), 1);
    assert_eq!(
        m.poll_timeout(),
        Some(at(2000)),
        "connecting: the heartbeat"
    );
    // No heartbeat goes out while not connected.
    assert_eq!(mt_tick(&mut m, 2000).len(), 0);
    // A failed attempt backs off again.
    let outs = mt_net(
        &mut m,
        2100,
        NetEvent::ConnectFailed {
            token: u64::MAX,
            reason: "refused".into(),
        },
    );
    assert_eq!(connects(&outs), 0);
    assert_eq!(m.poll_timeout(), Some(at(2150)));
    assert_eq!(connects(&mt_tick(&mut m, 2150)), 1);
    // Connected again: registers again, then heartbeats on the new connection.
    let conn = ConnId(2);
    let outs = cs_connected(&mut m, 2200, conn);
    assert!(matches!(sent_on(&outs, conn)[..], [Message::Register(_)]));
    let outs = mt_tick(&mut m, 3000);
    assert!(
        matches!(
            sent_on(&outs, conn)[..],
            [Message::MasterTargetHeartbeat(_)]
        ),
        "{outs:?}"
    );
}

#[test]
fn master_target_a_closed_stream_leaves_the_config_server_link_alone() {
    let (mut m, ps) = mt_with_replica(1);
    let outs = mt_net(&mut m, 1100, closed(ps));
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(m.poll_timeout(), Some(at(2000)));
    assert_eq!(connects(&mt_tick(&mut m, 1200)), 0);
    assert_eq!(heartbeats(&mt_tick(&mut m, 2000)), 1, "still registered");
}

#[test]
fn master_target_a_closed_connection_ends_only_its_own_stream() {
    let (mut m, ps) = mt_with_replica(1);
    // Another connection (a second process server) closes: the stream on `ps` goes on.
    let other = ConnId(20);
    mt_net(
        &mut m,
        1001,
        NetEvent::Accepted {
            conn: other,
            peer: Node::Ps.hello(),
        },
    );
    mt_net(&mut m, 1001, closed(other));
    let (_, persisted) = mt_apply(&mut m, ps, 1, 1, 1);
    assert!(matches!(
        sent_on(&persisted, ps)[..],
        [Message::Applied { applied_seq: 1, .. }]
    ));
    // An append in flight when its stream closes: nothing is sent to the closed connection,
    // and a batch on it is refused (its stream ended).
    let (h, d) = data_batch(1, 2, 2);
    let outs = mt_recv(&mut m, ps, Message::Batch(h), d);
    let id = outs
        .iter()
        .find_map(|o| match o {
            mt::Output::JournalAppend { id, .. } => Some(*id),
            _ => None,
        })
        .expect("appended");
    mt_net(&mut m, 1002, closed(ps));
    m.handle(
        at(1003),
        mt::Input::JournalPersisted {
            id,
            journal_bytes: 200,
        },
    );
    let outs = mt_outputs(&mut m);
    assert!(sent(&outs).is_empty(), "{outs:?}");
    assert_eq!(m.stats().replicas[0].applied_seq, 2, "still applied");
    let (h, d) = data_batch(1, 3, 3);
    let outs = mt_recv(&mut m, ps, Message::Batch(h), d);
    assert!(
        matches!(sent(&outs)[..], [Message::Reject { .. }]),
        "{outs:?}"
    );
}

#[test]
fn master_target_takes_retire_only_from_the_config_server() {
    let (mut m, ps) = mt_with_replica(1);
    let outs = mt_recv(&mut m, ps, retire(disk_id(), 1), vec![]);
    assert!(!removed(&outs), "{outs:?}");
    assert!(matches!(sent_on(&outs, ps)[..], [Message::Reject { .. }]));
    assert!(closes(&outs));
    assert_eq!(m.stats().replicas.len(), 1);
    // From the configuration server: removed, and its stream closed.
    let (mut m, ps) = mt_with_replica(1);
    let outs = mt_recv(&mut m, CS_CONN, retire(disk_id(), 1), vec![]);
    assert!(removed(&outs), "{outs:?}");
    assert!(outs
        .iter()
        .any(|o| matches!(o, mt::Output::Net(NetCommand::Close { conn }) if *conn == ps)));
    assert!(sent(&outs).is_empty(), "{outs:?}");
    assert!(m.stats().replicas.is_empty());
    // Once the configuration server's connection closed, a Retire on it is not taken.
    let (mut m, _) = mt_with_replica(1);
    mt_net(&mut m, 1001, closed(CS_CONN));
    let outs = mt_recv(&mut m, CS_CONN, retire(disk_id(), 1), vec![]);
    assert!(!removed(&outs), "{outs:?}");
    assert_eq!(m.stats().replicas.len(), 1);
}

#[test]
fn master_target_retire_keeps_a_replica_of_a_newer_epoch() {
    for (retired, gone) in [(1, false), (2, true), (3, true)] {
        let (mut m, _) = mt_with_replica(2);
        let outs = mt_recv(&mut m, CS_CONN, retire(disk_id(), retired), vec![]);
        assert_eq!(removed(&outs), gone, "retired epoch {retired}: {outs:?}");
        assert_eq!(
            m.stats().replicas.is_empty(),
            gone,
            "retired epoch {retired}"
        );
    }
    // Another disk's retirement leaves this one alone.
    let (mut m, _) = mt_with_replica(2);
    let other = haven_core::DiskId::new("disk9").unwrap();
    let outs = mt_recv(&mut m, CS_CONN, retire(other, 2), vec![]);
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(m.stats().replicas.len(), 1);
}

#[test]
fn master_target_refuses_a_size_not_a_positive_multiple_of_a_block() {
    for size in [0, 4097, DISK_BYTES as u64 + 1] {
        let (mut m, ps) = mt_alone();
        mt_outputs(&mut m);
        let msg = Message::OpenStream {
            disk: disk_id(),
            epoch: Epoch(1),
            size_bytes: size,
            first_seq: 1,
        };
        let outs = mt_recv(&mut m, ps, msg, vec![]);
        assert!(
            matches!(sent(&outs)[..], [Message::Reject { .. }]),
            "{size}: {outs:?}"
        );
        assert!(closes(&outs));
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, mt::Output::CreateReplica { .. })),
            "{size}"
        );
        assert!(m.stats().replicas.is_empty());
    }
}

#[test]
fn master_target_persists_a_new_epoch_only_when_it_changes() {
    let (mut m, ps) = mt_alone();
    mt_outputs(&mut m);
    let saves = |outs: &[mt::Output]| -> Vec<mt::ReplicaMeta> {
        outs.iter()
            .filter_map(|o| match o {
                mt::Output::SaveReplica { meta, .. } => Some(meta.clone()),
                _ => None,
            })
            .collect()
    };
    let outs = mt_open(&mut m, ps, 1, 1);
    assert!(
        saves(&outs).is_empty(),
        "created, nothing else to save: {outs:?}"
    );
    // The same epoch again (a process server reconnecting): nothing to save.
    let outs = mt_open(&mut m, ps, 1, 1);
    assert!(saves(&outs).is_empty(), "{outs:?}");
    assert!(matches!(sent(&outs)[..], [Message::StreamState { .. }]));
    // A failover's new epoch is persisted, so that a restart still fences the old one.
    let outs = mt_open(&mut m, ps, 3, 1);
    let saved = saves(&outs);
    assert_eq!(saved.len(), 1, "{outs:?}");
    assert_eq!(saved[0].epoch, Epoch(3));
    assert!(saved[0].inconsistent.is_none());
    assert!(matches!(
        sent(&outs)[..],
        [Message::StreamState {
            epoch: Epoch(3),
            ..
        }]
    ));
}

/// The core decides the recovery points: the end of every consistent batch, with its time, and
/// one record in `POINTS_PER_SYNC` synced to disk.
#[test]
fn master_target_makes_each_consistent_batch_a_point_and_syncs_one_in_points_per_sync() {
    let (mut m, conn) = mt_alone();
    mt_open(&mut m, conn, 1, 1);
    let mut synced = vec![];
    for seq in 1..=2 * mt::POINTS_PER_SYNC + 10 {
        let (mut h, d) = data_batch(1, seq, seq);
        h.consistent = seq % 2 == 1 || seq > 10;
        h.last_time = Timestamp(1000 + seq);
        let outs = mt_recv(&mut m, conn, Message::Batch(h.clone()), d);
        let (id, point, sync_point) = outs
            .iter()
            .find_map(|o| match o {
                mt::Output::JournalAppend {
                    id,
                    point,
                    sync_point,
                    ..
                } => Some((*id, point.clone(), *sync_point)),
                _ => None,
            })
            .expect("an append");
        let want = h.consistent.then_some(mt::PointRecord {
            seq,
            time: Timestamp(1000 + seq),
            kind: mt::PointKind::Crash,
        });
        assert_eq!(point, want, "seq {seq}");
        if sync_point {
            assert!(point.is_some(), "a sync without a point at seq {seq}");
            synced.push(seq);
        }
        m.handle(
            Timestamp::from_millis(1002),
            mt::Input::JournalPersisted {
                id,
                journal_bytes: seq,
            },
        );
        mt_outputs(&mut m);
    }
    // Seqs 1..=10: 5 points (the odd ones); then one per seq. The 64th and 128th points.
    assert_eq!(synced, [69, 133]);
    let points = m.stats().replicas[0].points;
    assert_eq!(points, 5 + 2 * mt::POINTS_PER_SYNC);
}
