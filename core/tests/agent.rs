//! The agent driven alone, message by message, for orderings the cluster harness cannot pin
//! down (docs/simulation.md, "Core bugs found").

mod common;

use common::agent_alone::*;
use common::*;
use haven_core::protocol::{Assignment, Message};
use haven_core::stats::ReplicationMode;
use haven_core::{ComponentId, Epoch};

/// A full cache answers the first batch with `Busy` "wait 100 ms"; the batches the agent had
/// already sent behind it then arrive out of order and are answered `Busy` "resend now"
/// (`retry_after_ms: 0`). The later `Busy` must not cut the wait short: the agent resends
/// nothing until the 100 ms are over (found while fixing the simulation's bugs: agent and
/// process server looped on refusals).
///
/// Checked 2026-12-03 by reverting the fix (`Message::Busy` in core/src/agent/net.rs setting
/// `busy_until` to the latest Busy's time instead of the later of the two): this test fails with
/// "resent before the wait was over: [1, 2, 3, 1, 2, 3]"; so does
/// `a_full_cache_makes_the_agent_wait_without_a_resend_storm` in data_path.rs, after 20-30 s,
/// with "the cluster does not settle" (the resend loop never ends).
/// A streaming agent that wrote three blocks 1 ms apart and sent them as three batches (what it
/// sent is cleared).
fn three_batches_sent() -> A {
    let mut a = A::streaming();
    for block in 0..3 {
        a.write_block(block);
        a.advance(1);
    }
    a.advance(20);
    assert_eq!(a.batches_sent(), [1, 2, 3]);
    a.to_ps.clear();
    a
}

#[test]
fn a_later_busy_never_shortens_an_earlier_wait() {
    let mut a = three_batches_sent();

    let busy = |first_seq, retry_after_ms| Message::Busy {
        disk: disk_id(),
        first_seq,
        retry_after_ms,
    };
    a.recv(PS, busy(1, 100)); // batch 1: the cache is full
    a.recv(PS, busy(1, 0)); // batch 2: out of order
    a.recv(PS, busy(1, 0)); // batch 3: out of order
    a.advance(90);
    assert!(
        a.batches_sent().is_empty(),
        "resent before the wait was over: {:?}",
        a.batches_sent()
    );
    a.advance(20);
    assert_eq!(a.batches_sent(), [1, 2, 3], "resent once the wait is over");
}

/// A stream whose answers stop (its packets are lost in a partition, which TCP alone does not
/// notice) is closed after `STREAM_STALL_MS` of silence with batches outstanding, and reopened
/// (found by the turmoil level, where such a stream hung forever).
///
/// Checked 2026-12-03 by reverting the fix (`on_timers` in core/src/agent/handle.rs no longer
/// closing a stalled stream): this test fails with "the stalled stream to the process server is
/// not closed"; at the turmoil level `partitions_heal_and_replication_resumes` no longer ends
/// (the agent-process server partition's stream never recovers; still running after 180 s).
#[test]
fn a_stream_that_goes_silent_is_reopened() {
    let mut a = A::streaming();
    a.write_block(0);
    a.advance(20);
    assert_eq!(a.batches_sent(), [1]);
    a.to_ps.clear();
    // No answer at all, as across a partition that loses packets.
    a.advance(haven_core::agent::STREAM_STALL_MS - 100);
    assert!(
        a.closed.is_empty(),
        "closed before the stall bound: {:?}",
        a.closed
    );
    a.advance(200);
    assert_eq!(
        a.closed,
        [PS],
        "the stalled stream to the process server is not closed"
    );
    a.advance(100); // past the reconnect delay
    assert_eq!(a.ps_conns.len(), 2, "reconnected: {:?}", a.ps_conns);
    assert!(
        matches!(a.to_ps[..], [Message::OpenStream { first_seq: 1, .. }]),
        "the new stream reopens at the unanswered batch: {:?}",
        a.to_ps
    );
}

/// A stream with nothing outstanding is idle, not stalled: however long it stays quiet after
/// its last batch was acknowledged, it is not closed.
#[test]
fn an_idle_stream_is_not_taken_for_a_stalled_one() {
    let mut a = A::streaming();
    a.write_block(0);
    a.advance(20);
    assert_eq!(a.batches_sent(), [1]);
    let ack = Message::BatchAck {
        disk: disk_id(),
        epoch: EPOCH,
        cached_seq: 1,
        applied_seq: 1,
    };
    a.recv(PS, ack);
    a.advance(haven_core::agent::STREAM_STALL_MS + 500);
    assert!(a.closed.is_empty(), "an idle stream closed: {:?}", a.closed);
    assert_eq!(a.ps_conns, [PS]);
    assert!(a.agent.stats().disks[0].connected);
}

/// `Retire` ends the protection: what was buffered is dropped, the stream reads as caught up,
/// later writes reach the disk without being buffered or streamed, and a new assignment
/// starts over with a full copy.
#[test]
fn a_retired_disk_drops_its_buffer_and_streams_nothing() {
    let mut a = three_batches_sent();
    let s = &a.agent.stats().disks[0];
    assert_eq!(s.mode, ReplicationMode::Data);
    assert_eq!(s.buffered_bytes, 3 * B as u64);
    assert!(s.rpo_ms > 0);

    let retired = haven_core::protocol::Retired {
        disk: disk_id(),
        epoch: EPOCH,
    };
    a.recv(CS, Message::Retire(vec![retired]));
    assert_eq!(a.closed, [PS], "the stream is closed");
    let s = &a.agent.stats().disks[0];
    assert_eq!(s.mode, ReplicationMode::Unprotected);
    assert_eq!(s.buffered_bytes, 0);
    assert_eq!((s.seq_written, s.seq_cached, s.seq_applied), (3, 3, 3));
    assert_eq!(s.rpo_ms, 0);
    // Writes go on, unbuffered and unstreamed.
    for block in 0..8 {
        a.write_block(block);
        a.advance(1);
    }
    a.advance(200);
    assert!(a.to_ps.is_empty(), "{:?}", a.to_ps);
    let s = &a.agent.stats().disks[0];
    assert_eq!((s.seq_written, s.buffered_bytes), (3, 0));
    assert_eq!(s.mode, ReplicationMode::Unprotected);
    // Protected again: a full copy first.
    let assign = Assignment {
        disk: disk_id(),
        epoch: Epoch(2),
        process_server: ComponentId::new("ps1").unwrap(),
        process_server_addr: Node::Ps.addr().into(),
        batch_bytes_max: None,
        batch_delay_ms: None,
    };
    a.recv(CS, Message::Assign(vec![assign]));
    assert!(
        matches!(a.to_ps[..], [Message::OpenStream { first_seq: 4, .. }]),
        "{:?}",
        a.to_ps
    );
    assert_eq!(a.agent.stats().disks[0].mode, ReplicationMode::InitialCopy);
    // The copy reads the whole (small) disk in one chunk, with the writes made meanwhile. Its
    // batch filled at once (one block per batch here), so the disk's last block is recorded
    // once more to carry the first recovery point of the new protection.
    let reads_before = a.copy_reads.len();
    let conn = *a.ps_conns.last().unwrap();
    a.recv(conn, stream_state_at(Epoch(2), 3));
    a.advance(20);
    assert_eq!(a.copy_reads[reads_before..], [(0, 0)]);
    let last = DISK_BLOCKS as u64 - 1;
    assert_eq!(
        a.batch_headers(),
        [(4, 0, DISK_BLOCKS as u32, false), (5, last, 1, true)]
    );
    assert_eq!(a.agent.stats().disks[0].mode, ReplicationMode::Data);
}

fn stream_state_at(epoch: Epoch, cached_seq: u64) -> Message {
    Message::StreamState {
        disk: disk_id(),
        epoch,
        cached_seq,
        applied_seq: cached_seq,
    }
}
