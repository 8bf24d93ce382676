//! The master target alone: in-order application, re-acknowledged duplicates, epoch fencing,
//! malformed batches and gaps.

mod common;

use common::mt_alone::*;
use common::*;
use haven_core::batch::{BatchHeader, Encoding};
use haven_core::master_target as mt;
use haven_core::net::NetEvent;
use haven_core::protocol::Message;
use haven_core::Machine;
use haven_core::{ConnId, Timestamp};

// ---------------------------------------------------------------------------------------------
// (e) master target alone

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
