//! The agent driven alone: its timers (heartbeats, the batch delay, `Busy` waits, stalled
//! streams), its send window, `poll_timeout`, seq reservations and failed source writes.

mod common;

use common::agent_alone::*;
use common::*;
use haven_core::agent::{self, SourceOp, SEQ_RESERVE_CHUNK, STREAM_STALL_MS};
use haven_core::batch::BLOCK_BYTES;
use haven_core::protocol::Message;
use haven_core::Machine;

fn heartbeats(a: &A) -> usize {
    a.to_cs
        .iter()
        .filter(|m| matches!(m, Message::AgentHeartbeat(_)))
        .count()
}

fn busy(first_seq: u64, retry_after_ms: u64) -> Message {
    Message::Busy {
        disk: disk_id(),
        first_seq,
        retry_after_ms,
    }
}

fn ack(cached_seq: u64, applied_seq: u64) -> Message {
    Message::BatchAck {
        disk: disk_id(),
        epoch: EPOCH,
        cached_seq,
        applied_seq,
    }
}

#[test]
fn the_agent_heartbeats_every_interval() {
    let mut a = A::streaming();
    assert!(
        matches!(a.to_cs[..], [Message::Register(_)]),
        "{:?}",
        a.to_cs
    );
    a.advance(999);
    assert_eq!(heartbeats(&a), 0);
    a.advance(1);
    assert_eq!(heartbeats(&a), 1, "heartbeat_interval_ms is 1000");
    a.advance(1000);
    assert_eq!(heartbeats(&a), 2);
}

#[test]
fn a_batch_not_full_is_closed_after_the_batch_delay() {
    let mut a = A::streaming_with(|s| s.batch_bytes_max = 4 * BLOCK_BYTES);
    a.write_block(0);
    a.write_block(1);
    a.advance(9);
    assert!(a.batches_sent().is_empty(), "{:?}", a.to_ps);
    a.advance(1);
    assert_eq!(a.batches_sent(), [1], "batch_delay_ms is 10");
    assert_eq!(a.batch_headers()[0].2, 1);
    let Message::Batch(h) = &a.to_ps[0] else {
        panic!()
    };
    assert_eq!((h.first_seq, h.last_seq), (1, 2));
}

#[test]
fn at_most_a_window_of_batches_is_in_flight() {
    let mut a = A::streaming();
    for block in 0..6 {
        a.write_block(block);
    }
    a.advance(20);
    assert_eq!(a.batches_sent(), [1, 2, 3, 4], "window_batches_max is 4");
    a.recv(PS, ack(2, 0));
    assert_eq!(a.batches_sent(), [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_busy_wait_ends_on_time_and_sets_the_timeout() {
    let mut a = A::streaming();
    a.write_block(0);
    a.advance(20);
    assert_eq!(a.batches_sent(), [1]);
    a.to_ps.clear();
    a.recv(PS, busy(1, 100));
    assert_eq!(
        a.agent.poll_timeout(),
        Some(a.now.plus_millis(100)),
        "the wake-up is the end of the wait"
    );
    a.advance(99);
    assert!(a.batches_sent().is_empty());
    a.advance(1);
    assert_eq!(
        a.batches_sent(),
        [1],
        "resent when the wait ends, not later"
    );
}

/// With more batches than the window after a wait, those left unsent do not make
/// `poll_timeout` a time already past (the driver would spin).
#[test]
fn unsent_batches_behind_a_full_window_set_no_past_timeout() {
    let mut a = A::streaming();
    for block in 0..6 {
        a.write_block(block);
    }
    a.advance(20);
    assert!(
        a.agent.poll_timeout() > Some(a.now),
        "{:?}",
        a.agent.poll_timeout()
    );
    a.to_ps.clear();
    a.recv(PS, busy(1, 100));
    a.advance(100);
    assert_eq!(a.batches_sent(), [1, 2, 3, 4]);
    assert!(
        a.agent.poll_timeout() > Some(a.now),
        "{:?}",
        a.agent.poll_timeout()
    );
    a.advance(1);
    assert!(
        a.agent.poll_timeout() > Some(a.now),
        "{:?}",
        a.agent.poll_timeout()
    );
}

/// A wait as long as the stall bound, with nothing in flight, is not a stall: the stream is
/// not closed, and the batch is resent when the wait ends.
#[test]
fn a_long_busy_wait_is_not_a_stall() {
    let mut a = A::streaming();
    a.write_block(0);
    a.advance(20);
    a.to_ps.clear();
    a.recv(PS, busy(1, STREAM_STALL_MS));
    a.advance(STREAM_STALL_MS);
    assert!(a.closed.is_empty(), "{:?}", a.closed);
    assert_eq!(a.batches_sent(), [1]);
}

/// An `OpenStream` never answered is a stall too: the stream is closed and opened again.
#[test]
fn an_unanswered_open_stream_is_retried() {
    let mut a = A::assigned_with(|_| {});
    a.to_ps.clear();
    assert_eq!(
        a.agent.poll_timeout(),
        Some(a.now.plus_millis(1000)),
        "the heartbeat comes before the stall bound"
    );
    a.advance(STREAM_STALL_MS - 1);
    assert!(a.closed.is_empty());
    a.advance(1);
    assert_eq!(a.closed, [PS], "the unanswered stream is closed");
    a.advance(100);
    assert_eq!(a.ps_conns.len(), 2);
    assert!(
        matches!(a.to_ps[..], [Message::OpenStream { .. }]),
        "{:?}",
        a.to_ps
    );
}

#[test]
fn poll_timeout_is_the_next_heartbeat_or_the_batch_deadline() {
    let mut a = A::streaming_with(|s| s.batch_bytes_max = 4 * BLOCK_BYTES);
    a.advance(300);
    let heartbeat = a.now.plus_millis(700);
    assert_eq!(a.agent.poll_timeout(), Some(heartbeat));
    a.write_block(0);
    assert_eq!(a.agent.poll_timeout(), Some(a.now.plus_millis(10)));
    a.advance(10);
    assert_eq!(a.agent.poll_timeout(), Some(heartbeat));
}

/// One reservation of `SEQ_RESERVE_CHUNK` seqs above the stored one at start, and none again
/// before half of it is used.
#[test]
fn seqs_are_reserved_a_chunk_at_a_time() {
    let mut a = A::streaming();
    assert_eq!(a.reserves, [SEQ_RESERVE_CHUNK]);
    for block in 0..10 {
        a.write_block(block);
        a.advance(1);
    }
    a.advance(20);
    assert_eq!(a.reserves, [SEQ_RESERVE_CHUNK], "no reservation per write");
    // After a restart: above the stored reservation, which no new seq reuses.
    let a = A::assigned_at(5000, |_| {});
    assert_eq!(a.reserves, [5000 + SEQ_RESERVE_CHUNK]);
    assert!(
        matches!(
            a.to_ps[..],
            [Message::OpenStream {
                first_seq: 5001,
                ..
            }]
        ),
        "{:?}",
        a.to_ps
    );
}

/// The source disk refuses a write: the workload gets the error, nothing is streamed, and the
/// next write goes on as usual.
#[test]
fn a_failed_source_write_completes_with_its_error() {
    let mut a = A::streaming();
    let op = SourceOp::Write {
        offset: 0,
        data: vec![7; B],
    };
    let io = 100;
    a.agent.handle(
        a.now,
        agent::Input::Write {
            io,
            disk: 0,
            op,
            fua: false,
        },
    );
    let out: Vec<_> = std::iter::from_fn(|| a.agent.poll_output()).collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, agent::Output::SourceWrite { io: 100, .. })),
        "{out:?}"
    );
    let error = "EIO".to_string();
    a.input(agent::Input::SourceFailed { io, error });
    assert_eq!(a.completed, [(io, Err("EIO".to_string()))]);
    a.write_block(3);
    a.advance(20);
    assert_eq!(a.completed.len(), 2);
    assert_eq!(a.completed[1].0, 1);
    assert!(a.completed[1].1.is_ok());
    assert_eq!(
        a.batch_headers(),
        [(1, 3, 1, true)],
        "the failed write took no seq"
    );
}
