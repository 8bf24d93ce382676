//! One protected disk's change stream on the agent: seq assignment, batching, the buffer of
//! batches not yet cached by the process server, and the RPO bookkeeping.

use crate::batch::{BatchHeader, Encoding, Op, OpKind, BLOCK_BYTES};
use crate::ids::{DiskId, Epoch, Seq};
use crate::net::Payload;
use crate::stats::{AgentDiskStats, ReplicationMode};
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most (seq, time) marks kept for RPO; past it the oldest two merge (RPO is then overstated,
/// never understated).
pub const RPO_MARKS_MAX: usize = 65_536;

/// A batch being filled.
#[derive(Debug)]
pub struct OpenBatch {
    pub first_seq: Seq,
    pub first_time: Timestamp,
    pub last_time: Timestamp,
    pub ops: Vec<Op>,
    pub data: Vec<u8>,
}

/// A closed batch, kept until the process server says it is cached.
#[derive(Debug)]
pub struct QueuedBatch {
    pub header: BatchHeader,
    pub data: Payload,
}

#[derive(Debug)]
pub struct Stream {
    pub disk: DiskId,
    pub size_bytes: u64,
    pub epoch: Epoch,
    /// Next seq to assign.
    pub next_seq: Seq,
    /// Seqs up to this one are durably reserved: after a crash the agent starts above it.
    pub reserved: Seq,
    pub reserving: bool,
    pub open: Option<OpenBatch>,
    pub queue: VecDeque<QueuedBatch>,
    /// How many batches at the front of `queue` are sent and not yet acknowledged: batches go
    /// out in queue order and are unsent as a suffix, so the sent ones are always a prefix, and
    /// counting them costs nothing (no scan of a long queue on every timer or send).
    pub sent: usize,
    pub queued_bytes: u64,
    pub cached_seq: Seq,
    pub applied_seq: Seq,
    /// (last seq of a batch, time of its first write), for batches not yet applied.
    rpo_marks: VecDeque<(Seq, Timestamp)>,
    pub bytes_written: u64,
    /// The disk's initial copy; while it reads, batches are not crash-consistent points.
    pub(super) copy: super::copy::CopyState,
    /// The protection ended (`Retire`): writes reach the disk but are not streamed.
    pub retired: bool,
    /// The epoch the disk's cached copy was made under (see `AgentDisk::copied`).
    pub copied_under: Option<Epoch>,
    /// Batch bounds of this disk's policy (None: the agent's settings).
    pub batch_bytes_max: Option<u64>,
    pub batch_delay_ms: Option<u64>,
    /// The disk's canonical path on this machine, reported at registration (empty: unknown).
    pub source_path: String,
}

impl Stream {
    pub fn new(disk: DiskId, size_bytes: u64, reserved: Seq) -> Stream {
        Stream {
            disk,
            size_bytes,
            epoch: Epoch(0),
            next_seq: reserved + 1,
            reserved,
            reserving: false,
            open: None,
            queue: VecDeque::new(),
            sent: 0,
            queued_bytes: 0,
            cached_seq: 0,
            applied_seq: 0,
            rpo_marks: VecDeque::new(),
            bytes_written: 0,
            copy: super::copy::CopyState::Idle,
            retired: false,
            copied_under: None,
            batch_bytes_max: None,
            batch_delay_ms: None,
            source_path: String::new(),
        }
    }

    /// Stops streaming: everything buffered is dropped (the protection ended, nobody will take
    /// it), and the stream reads as caught up.
    pub fn retire(&mut self) {
        self.retired = true;
        self.copied_under = None;
        self.copy = super::copy::CopyState::Idle;
        self.open = None;
        self.queue.clear();
        self.sent = 0;
        self.queued_bytes = 0;
        self.rpo_marks.clear();
        self.cached_seq = self.seq_written();
        self.applied_seq = self.seq_written();
    }

    /// Starts the initial copy from the disk's first byte.
    pub fn start_copy(&mut self) {
        self.copy = super::copy::CopyState::Reading {
            next: 0,
            reading: false,
            batch_closed: false,
        };
    }

    /// True while the initial copy reads: the disk's batches are not crash-consistent points.
    pub fn copying(&self) -> bool {
        matches!(self.copy, super::copy::CopyState::Reading { .. })
    }

    pub fn buffered_bytes(&self) -> u64 {
        self.queued_bytes + self.open.as_ref().map_or(0, |b| b.data.len() as u64)
    }

    /// The oldest seq this agent still holds (queued or open), or the next one to assign.
    pub fn oldest_held_seq(&self) -> Seq {
        self.queue
            .front()
            .map(|b| b.header.first_seq)
            .or_else(|| self.open.as_ref().map(|b| b.first_seq))
            .unwrap_or(self.next_seq)
    }

    pub fn seq_written(&self) -> Seq {
        self.next_seq - 1
    }

    /// Records one applied source op under the next seq. `data` is the blocks' content after the
    /// op (None: they read as zeros). Returns true if the open batch reached its size bound.
    pub fn record(
        &mut self,
        now: Timestamp,
        block: u64,
        blocks: u32,
        data: Option<Vec<u8>>,
        batch_bytes_max: u64,
    ) -> bool {
        debug_assert!(
            self.next_seq <= self.reserved,
            "seq used before its reservation is durable"
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        let open = self.open.get_or_insert_with(|| OpenBatch {
            first_seq: seq,
            first_time: now,
            last_time: now,
            ops: Vec::new(),
            data: Vec::new(),
        });
        open.last_time = now;
        let kind = if data.is_some() {
            OpKind::Data
        } else {
            OpKind::Zero
        };
        if let Some(d) = data {
            assert_eq!(
                d.len() as u64,
                blocks as u64 * BLOCK_BYTES,
                "op data must be whole blocks"
            );
            if open.data.is_empty() {
                open.data = d;
            } else {
                open.data.extend_from_slice(&d);
            }
        }
        open.ops.push(Op {
            seq,
            block,
            blocks,
            kind,
        });
        self.bytes_written += blocks as u64 * BLOCK_BYTES;
        open.data.len() as u64 >= batch_bytes_max
    }

    /// Closes the open batch, if any, into the send queue.
    pub fn close_batch(&mut self) {
        let Some(open) = self.open.take() else { return };
        let last_seq = open.ops.last().expect("an open batch has ops").seq;
        if let super::copy::CopyState::Reading { batch_closed, .. } = &mut self.copy {
            *batch_closed = true;
        }
        let header = BatchHeader {
            disk: self.disk.clone(),
            epoch: self.epoch,
            first_seq: open.first_seq,
            last_seq,
            first_time: open.first_time,
            last_time: open.last_time,
            consistent: !self.copying(),
            raw_bytes: open.data.len() as u64,
            ops: open.ops,
            encoding: Encoding::Raw,
        };
        debug_assert!(header.validate().is_ok());
        self.queued_bytes += open.data.len() as u64;
        self.queue.push_back(QueuedBatch {
            header,
            data: Arc::new(open.data),
        });
        if self.rpo_marks.len() >= RPO_MARKS_MAX {
            let (_, t) = self.rpo_marks.pop_front().expect("full");
            self.rpo_marks.front_mut().expect("full").1 = t;
        }
        self.rpo_marks.push_back((last_seq, open.first_time));
    }

    /// The process server has batches through `cached` durably, the master target through `applied`.
    pub fn acked(&mut self, cached: Seq, applied: Seq) {
        self.cached_seq = self.cached_seq.max(cached);
        self.applied_seq = self.applied_seq.max(applied);
        while self
            .queue
            .front()
            .is_some_and(|b| b.header.last_seq <= self.cached_seq)
        {
            let b = self.queue.pop_front().expect("front exists");
            self.sent = self.sent.saturating_sub(1);
            self.queued_bytes -= b.data.len() as u64;
        }
        while self
            .rpo_marks
            .front()
            .is_some_and(|m| m.0 <= self.applied_seq)
        {
            self.rpo_marks.pop_front();
        }
    }

    /// Marks every batch from `first_seq` on as not sent (reconnect, busy).
    pub fn unsend_from(&mut self, first_seq: Seq) {
        let keep = self
            .queue
            .partition_point(|b| b.header.last_seq < first_seq);
        self.sent = self.sent.min(keep);
    }

    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// Whether some queued batch is not sent yet.
    pub fn has_unsent(&self) -> bool {
        self.sent < self.queue.len()
    }

    /// Recovery point objective now: how long ago the oldest write not yet applied at the master
    /// target was made; 0 when everything written is applied.
    pub fn rpo_ms(&self, now: Timestamp) -> u64 {
        if self.applied_seq >= self.seq_written() {
            return 0;
        }
        let oldest = self
            .rpo_marks
            .iter()
            .find(|m| m.0 > self.applied_seq)
            .map(|m| m.1)
            .or_else(|| self.open.as_ref().map(|b| b.first_time));
        oldest.map_or(0, |t| now.millis_since(t))
    }

    pub fn stats(&self, now: Timestamp, connected: bool) -> AgentDiskStats {
        let mode = if self.retired {
            ReplicationMode::Unprotected
        } else if self.copying() {
            ReplicationMode::InitialCopy
        } else if self.next_seq > self.reserved || self.epoch == Epoch(0) {
            ReplicationMode::Starting
        } else {
            ReplicationMode::Data
        };
        AgentDiskStats {
            disk: self.disk.clone(),
            mode,
            size_bytes: self.size_bytes,
            seq_written: self.seq_written(),
            seq_cached: self.cached_seq,
            seq_applied: self.applied_seq,
            rpo_ms: self.rpo_ms(now),
            bytes_written: self.bytes_written,
            buffered_bytes: self.buffered_bytes(),
            connected,
        }
    }
}
