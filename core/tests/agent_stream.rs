//! One disk's change stream on the agent (`agent::Stream`) driven directly: bytes written, the
//! recovery point objective as batches are cached and applied, and the mode it reports; where a
//! clean stop resumes it.

mod common;

use common::agent_alone::*;
use common::*;
use haven_core::agent::Stream;
use haven_core::batch::BLOCK_BYTES;
use haven_core::protocol::Message;
use haven_core::stats::ReplicationMode;
use haven_core::{Epoch, Timestamp};

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// A stream of epoch 1 with seqs 1..=100 reserved.
fn stream() -> Stream {
    let mut s = Stream::new(disk_id(), DISK_BYTES as u64, 0);
    s.reserved = 100;
    s.epoch = Epoch(1);
    s
}

fn write(s: &mut Stream, ms: u64, block: u64, blocks: u32) {
    let data = vec![block as u8; blocks as usize * B];
    s.record(at(ms), block, blocks, Some(data), u64::MAX);
}

#[test]
fn bytes_written_counts_every_block_of_every_op() {
    let mut s = stream();
    write(&mut s, 1000, 0, 2);
    assert_eq!(s.stats(at(1000), true).bytes_written, 2 * B as u64);
    s.record(at(1001), 4, 3, None, u64::MAX); // zeroing counts too
    write(&mut s, 1002, 9, 1);
    let st = s.stats(at(1002), true);
    assert_eq!(st.bytes_written, 6 * B as u64);
    assert_eq!(st.seq_written, 3);
    assert_eq!(st.buffered_bytes, 3 * B as u64, "zeros carry no data");
}

#[test]
fn rpo_is_the_age_of_the_oldest_write_not_applied() {
    let mut s = stream();
    assert_eq!(s.rpo_ms(at(5000)), 0, "nothing written");
    write(&mut s, 1000, 0, 1);
    s.close_batch(); // batch 1, first written at 1000
    write(&mut s, 1500, 1, 1);
    s.close_batch(); // batch 2, at 1500
    write(&mut s, 1800, 2, 1); // open batch 3, at 1800
    assert_eq!(s.rpo_ms(at(2000)), 1000);
    assert_eq!(s.stats(at(2000), true).rpo_ms, 1000);
    // Cached is not applied: the RPO still counts from the first write.
    s.acked(2, 0);
    assert_eq!(s.rpo_ms(at(2000)), 1000);
    assert_eq!(s.queue.len(), 0, "cached batches leave the buffer");
    s.acked(2, 1);
    assert_eq!(s.rpo_ms(at(2000)), 500);
    s.acked(2, 2);
    assert_eq!(s.rpo_ms(at(2000)), 200, "the open batch's first write");
    s.close_batch();
    assert_eq!(s.rpo_ms(at(2100)), 300);
    s.acked(3, 3);
    assert_eq!(s.rpo_ms(at(2100)), 0, "everything applied");
    assert_eq!(s.stats(at(9000), true).rpo_ms, 0);
}

#[test]
fn mode_is_starting_until_seqs_are_reserved_and_an_epoch_is_assigned() {
    // Seqs not reserved yet (a fresh stream: next seq 1, reserved 0).
    let mut s = Stream::new(disk_id(), DISK_BYTES as u64, 0);
    s.epoch = Epoch(1);
    assert_eq!(s.stats(at(0), false).mode, ReplicationMode::Starting);
    // Reserved, but no epoch assigned.
    s.reserved = 10;
    s.epoch = Epoch(0);
    assert_eq!(s.stats(at(0), false).mode, ReplicationMode::Starting);
    // Both: streaming data.
    s.epoch = Epoch(1);
    assert_eq!(s.stats(at(0), true).mode, ReplicationMode::Data);
    // Down to the last reserved seq: still data.
    s.reserved = 1;
    assert_eq!(s.next_seq, 1);
    assert_eq!(s.stats(at(0), true).mode, ReplicationMode::Data);
    // Past it: waiting for a reservation.
    write(&mut s, 0, 0, 1);
    assert_eq!(s.stats(at(0), true).mode, ReplicationMode::Starting);
    // Copying and retired take precedence.
    s.reserved = 10;
    s.start_copy();
    assert_eq!(s.stats(at(0), true).mode, ReplicationMode::InitialCopy);
    s.retire();
    assert_eq!(s.stats(at(0), true).mode, ReplicationMode::Unprotected);
}

/// A clean stop: the agent has resume points only once nothing it wrote is held (every batch
/// acknowledged as cached); a start with one resumes the stream there (`OpenStream` says so,
/// no gap), and one past the durable reservation is ignored.
#[test]
fn a_clean_stop_resumes_the_stream_where_it_was() {
    let mut a = A::streaming_with(|s| s.batch_bytes_max = 64 * BLOCK_BYTES);
    a.write_block(0);
    a.write_block(1);
    assert_eq!(a.agent.resume_points(), None, "an open batch is held");
    a.advance(10);
    assert_eq!(a.agent.resume_points(), None, "sent, not yet cached");
    let last = a.agent.stats().disks[0].seq_written;
    a.ack_all_cached();
    let resume = a.agent.resume_points().expect("drained");
    assert_eq!(resume, [last + 1]);

    let reserved = *a.reserves.last().expect("a reservation");
    let start = |resume: Option<u64>| {
        let mut disk = copied_disk(disk_id(), DISK_BYTES as u64, reserved);
        disk.resume = resume;
        let mut b = A::new(agent_settings(), vec![disk]);
        let assign = assignment(disk_id(), EPOCH, Node::Ps.addr());
        b.recv(CS, Message::Assign(vec![assign]));
        b.to_ps
            .iter()
            .find_map(|m| match m {
                Message::OpenStream { first_seq, .. } => Some(*first_seq),
                _ => None,
            })
            .expect("OpenStream")
    };
    assert_eq!(start(Some(last + 1)), last + 1, "resumed: no gap");
    assert_eq!(
        start(None),
        reserved + 1,
        "after a crash: past the reservation"
    );
    assert_eq!(
        start(Some(reserved + 2)),
        reserved + 1,
        "past the reservation: ignored"
    );
}
