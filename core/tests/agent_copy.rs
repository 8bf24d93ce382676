//! The initial copy as the agent's core runs it: a chunk read per tick, zero chunks skipped,
//! writes interleaved in seq order, the batch that ends the copy the first consistent point,
//! `CopyCached` once the process server holds it all, and the ordering rules between copy reads
//! and source writes.

mod common;

use common::agent_alone::*;
use common::*;
use haven_core::agent::{self, Agent, AgentDisk, SourceOp, COPY_CHUNK_BYTES};
use haven_core::batch::{self as batch, OpKind, BLOCK_BYTES};
use haven_core::protocol::Message;
use haven_core::stats::ReplicationMode;
use haven_core::{Machine, Timestamp};

const CHUNK: u64 = COPY_CHUNK_BYTES;

fn not_copied(size_bytes: u64) -> AgentDisk {
    AgentDisk {
        resume: None,
        disk: disk_id(),
        size_bytes,
        reserved: 0,
        copied: None,
    }
}

/// An agent with one disk of `size_bytes` to copy, its image filled by `fill`, assigned and
/// streaming; batches up to 8 MiB (so that a batch holds several chunks).
fn copying(size_bytes: u64, fill: impl FnOnce(&mut Vec<u8>)) -> A {
    let mut settings = agent_settings();
    settings.batch_bytes_max = 8 << 20;
    settings.buffer_bytes_max = 64 << 20;
    let mut a = A::new(settings, vec![not_copied(size_bytes)]);
    fill(&mut a.images[0]);
    a.recv(
        CS,
        Message::Assign(vec![assignment(disk_id(), EPOCH, Node::Ps.addr())]),
    );
    let state = Message::StreamState {
        disk: disk_id(),
        epoch: EPOCH,
        cached_seq: 0,
        applied_seq: 0,
    };
    a.recv(PS, state);
    assert_eq!(a.agent.stats().disks[0].mode, ReplicationMode::InitialCopy);
    a.to_ps.clear();
    a
}

/// The replica the batches sent build from a zero image, applied in seq order.
fn replica(a: &A, size: usize) -> Vec<u8> {
    let mut image = vec![0u8; size];
    let mut batches = a.batches.clone();
    batches.sort_by_key(|(h, _)| h.first_seq);
    for (h, data) in batches {
        let raw = batch::decompress(&h, data).unwrap();
        let mut at = 0;
        for op in &h.ops {
            let (start, len) = (op.block as usize * B, op.blocks as usize * B);
            match op.kind {
                OpKind::Data => {
                    image[start..start + len].copy_from_slice(&raw[at..at + len]);
                    at += len;
                }
                OpKind::Zero => image[start..start + len].fill(0),
            }
        }
    }
    image
}

fn write(a: &mut A, offset: u64, byte: u8, len: usize) {
    let io = a.next_io;
    a.next_io += 1;
    let op = SourceOp::Write {
        offset,
        data: vec![byte; len],
    };
    a.input(agent::Input::Write {
        io,
        disk: 0,
        op,
        fua: false,
    });
}

#[test]
fn a_disk_is_copied_a_chunk_per_tick_and_the_batch_ending_it_is_consistent() {
    let size = 4 * CHUNK;
    let mut a = copying(size, |img| {
        img[..B].fill(0xaa);
        img[(2 * CHUNK) as usize + 5 * B..(2 * CHUNK) as usize + 6 * B].fill(0xbb);
    });
    a.advance(1);
    assert_eq!(a.copy_reads, [(0, 0)], "one read per tick");
    a.advance(3);
    assert_eq!(
        a.copy_reads,
        [(0, 0), (0, CHUNK), (0, 2 * CHUNK), (0, 3 * CHUNK)]
    );
    // Chunks 0 and 2 hold data; 1 and 3 are zeros and take no seq. Their batch is closed when
    // the copy reaches the end, before its delay, as a copy batch (not a point: a replica that
    // lost writes learns from it that a whole copy follows); then the disk's last block is
    // recorded once more (zeros) in the batch that is the first consistent point.
    let chunk_blocks = (CHUNK / BLOCK_BYTES) as u32;
    let last = size / BLOCK_BYTES - 1;
    assert_eq!(
        a.batch_headers(),
        [(1, 0, chunk_blocks, false), (3, last, 1, true)]
    );
    let (h, _) = &a.batches[0];
    assert_eq!((h.first_seq, h.last_seq, h.ops.len()), (1, 2, 2));
    assert_eq!(h.ops[1].block, 2 * CHUNK / BLOCK_BYTES);
    assert_eq!(a.batches[1].0.ops[0].kind, OpKind::Zero);
    assert_eq!(replica(&a, size as usize), a.images[0]);
    assert_eq!(a.agent.stats().disks[0].mode, ReplicationMode::Data);
    a.advance(100);
    assert_eq!(a.copy_reads.len(), 4, "a finished copy reads no more");

    // The process server caches the copy: the agent says so once.
    assert!(a.copies_cached.is_empty());
    let ack = |cached_seq| Message::BatchAck {
        disk: disk_id(),
        epoch: EPOCH,
        cached_seq,
        applied_seq: 0,
    };
    a.recv(PS, ack(2));
    assert!(a.copies_cached.is_empty(), "seq 3 is not cached yet");
    a.recv(PS, ack(3));
    assert_eq!(a.copies_cached, [0]);
    a.advance(10);
    assert_eq!(a.copies_cached, [0]);
}

/// Writes made during the copy take seqs between the chunks: a write to a chunk already read
/// comes after it, a write to a chunk not yet read is read with it. The replica built from the
/// batches equals the source, whatever the interleaving.
#[test]
fn writes_during_the_copy_interleave_and_the_replica_equals_the_source() {
    let size = 3 * CHUNK;
    let mut a = copying(size, |img| img.fill(0x11));
    a.advance(1); // chunk 0 read
    write(&mut a, 8 * BLOCK_BYTES, 0x22, B); // into chunk 0, after its read
    write(&mut a, CHUNK + 3 * BLOCK_BYTES, 0x33, 2 * B); // into chunk 1, before its read
    write(&mut a, 2 * CHUNK + 100, 0x44, 10); // into chunk 2, unaligned
    a.advance(1); // chunk 1 read
    write(&mut a, CHUNK, 0x55, B); // into chunk 1, after its read
    a.advance(30);
    assert_eq!(a.copy_reads.len(), 3);
    let consistent: Vec<bool> = a.batch_headers().iter().map(|h| h.3).collect();
    assert_eq!(consistent.last(), Some(&true), "{:?}", a.batch_headers());
    assert_eq!(replica(&a, size as usize), a.images[0]);
    // Writes after the copy are consistent points of their own.
    write(&mut a, 0, 0x66, B);
    a.advance(30);
    assert_eq!(replica(&a, size as usize), a.images[0]);
    assert!(a.batch_headers().iter().last().unwrap().3);
}

/// An all-zero disk: the first read finds nothing; the disk's last block (zeros) is recorded
/// as a zero op twice: a copy batch (so that a replica that lost writes before it knows a
/// whole copy follows; without it, a re-protected empty disk stayed INCONSISTENT for good),
/// then the consistent point, without any write.
#[test]
fn an_all_zero_disk_gets_a_copy_batch_and_its_consistent_point_from_zero_ops() {
    let mut a = copying(DISK_BYTES as u64, |_| {});
    a.advance(20);
    assert_eq!(a.copy_reads, [(0, 0)]);
    let last = DISK_BLOCKS as u64 - 1;
    assert_eq!(a.batch_headers(), [(1, last, 1, false), (2, last, 1, true)]);
    for (h, _) in &a.batches {
        assert_eq!(h.ops[0].kind, OpKind::Zero);
        assert_eq!(h.raw_bytes, 0);
    }
}

/// A disk copied before (its copy is cached) is not copied again at start.
#[test]
fn a_disk_already_copied_is_not_copied_again() {
    let mut a = A::streaming();
    a.advance(50);
    assert!(a.copy_reads.is_empty(), "{:?}", a.copy_reads);
    assert_eq!(a.agent.stats().disks[0].mode, ReplicationMode::Data);
}

/// The ordering rules, with completions held back: no read while a source write of the disk
/// is in flight, and no write starts while a read is outstanding (its chunk takes the seq
/// first).
#[test]
fn reads_wait_for_writes_in_flight_and_writes_wait_for_an_outstanding_read() {
    let now = Timestamp::from_millis(1_000);
    let mut agent = Agent::new(agent_settings(), vec![not_copied(DISK_BYTES as u64)], now);
    let outputs = |agent: &mut Agent| -> Vec<agent::Output> {
        let mut out = vec![];
        while let Some(o) = agent.poll_output() {
            match o {
                agent::Output::Reserve { disk, reserved } => {
                    agent.handle(now, agent::Input::Reserved { disk, reserved })
                }
                agent::Output::Net(_) => {}
                o => out.push(o),
            }
        }
        out
    };
    let kinds = |out: &[agent::Output]| -> Vec<&'static str> {
        out.iter()
            .map(|o| match o {
                agent::Output::CopyRead { .. } => "read",
                agent::Output::SourceWrite { .. } => "write",
                agent::Output::Complete { .. } => "complete",
                _ => "other",
            })
            .collect()
    };
    outputs(&mut agent);
    let write = |io| agent::Input::Write {
        io,
        disk: 0,
        op: SourceOp::Write {
            offset: 0,
            data: vec![9; B],
        },
        fua: false,
    };
    // A write in flight: a tick asks for no read.
    agent.handle(now, write(1));
    assert_eq!(kinds(&outputs(&mut agent)), ["write"]);
    agent.handle(now, agent::Input::Tick);
    assert!(
        outputs(&mut agent).is_empty(),
        "no read while a write is in flight"
    );
    agent.handle(
        now,
        agent::Input::SourceDone {
            io: 1,
            data: Some(vec![9; B]),
        },
    );
    assert_eq!(kinds(&outputs(&mut agent)), ["complete"]);
    assert!(
        agent.poll_timeout().is_some_and(|t| t <= now),
        "a read is due now"
    );
    agent.handle(now, agent::Input::Tick);
    assert_eq!(kinds(&outputs(&mut agent)), ["read"]);
    // A read outstanding: a new write waits for it.
    agent.handle(now, write(2));
    assert!(
        outputs(&mut agent).is_empty(),
        "the write waits for the read"
    );
    let mut data = vec![0u8; DISK_BYTES];
    data[..B].fill(9);
    agent.handle(
        now,
        agent::Input::CopyData {
            disk: 0,
            offset: 0,
            data,
        },
    );
    assert_eq!(kinds(&outputs(&mut agent)), ["write"]);
}

/// The copy is recorded with the epoch it was made under. An agent that was away while its
/// disk was unprotected and protected again never hears the retirement: an `Assign` of a newer
/// epoch than its copy's copies the disk again (the new protection's replica is empty); one of
/// the copy's own epoch, or a copy recorded without an epoch (older stores), does not.
#[test]
fn a_newer_epoch_than_the_copys_copies_the_disk_again() {
    let copies_after_assign = |copied: Option<haven_core::Epoch>, epoch: u64| {
        let mut disk = not_copied(4 * CHUNK);
        disk.copied = copied;
        let mut a = A::new(agent_settings(), vec![disk]);
        let assign = assignment(disk_id(), haven_core::Epoch(epoch), Node::Ps.addr());
        a.recv(CS, Message::Assign(vec![assign]));
        a.advance(5);
        a.copy_reads.len()
    };
    let e = haven_core::Epoch;
    assert!(
        copies_after_assign(Some(e(1)), 2) > 0,
        "a newer epoch: copied again"
    );
    assert_eq!(
        copies_after_assign(Some(e(2)), 2),
        0,
        "the copy's own epoch"
    );
    assert_eq!(copies_after_assign(Some(e(0)), 2), 0, "no epoch recorded");
    assert!(copies_after_assign(None, 1) > 0, "never copied");

    // And the copy that ends is recorded under the epoch it was streamed under.
    let mut a = copying(CHUNK, |_| {});
    for _ in 0..20 {
        a.advance(1);
        a.ack_all_cached();
    }
    assert_eq!(a.copies_cached, [0]);
    assert_eq!(a.copied_epochs, [EPOCH]);
}
