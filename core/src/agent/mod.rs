//! The agent: intercepts every write to its protected disks and streams them, in order, to a
//! process server.
//!
//! Flow of one write: the NBD server hands it in as `Input::Write`; the agent emits
//! `Output::SourceWrite`, which the driver carries out on the source disk *in emission order*
//! and answers with `Input::SourceDone` carrying the whole blocks the write touched, as the disk
//! holds them right after it. Only then is the next seq assigned, so seq order is the order in
//! which writes reached the disk. The write completes (`Output::Complete`) at once, or after
//! `SourceSync`/`Synced` for FUA. Batches close on size, on time and on FLUSH, are sent to the
//! process server in order, and are dropped only when it says they are cached.
//!
//! Backpressure: when buffered batches pass `buffer_bytes_max`, new writes are held (not
//! failed) until the process server acknowledges enough.

mod stream;

pub use stream::{Stream, RPO_MARKS_MAX};

use crate::batch::BLOCK_BYTES;
use crate::deadlines::Deadlines;
use crate::ids::{ComponentId, ConnId, DiskId, Epoch, Seq};
use crate::net::{ConnectToken, NetCommand, NetEvent};
use crate::protocol::{DiskInfo, Message, Registration};
use crate::stats::AgentStats;
use crate::time::{earliest, Timestamp};
use std::collections::VecDeque;

/// Seqs reserved per durable reservation; a crash skips at most this many.
pub const SEQ_RESERVE_CHUNK: u64 = 1 << 20;
/// A stream with batches in flight (or an open request) and no answer for this long is
/// considered dead and reconnected: TCP alone may take many minutes to notice a silent peer.
pub const STREAM_STALL_MS: u64 = 10_000;
const CS_TOKEN: ConnectToken = u64::MAX;

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub component: ComponentId,
    pub config_server_addr: String,
    /// A batch closes when its data reaches this size.
    pub batch_bytes_max: u64,
    /// A batch closes this long after its first write.
    pub batch_delay_ms: u64,
    /// Writes are held while batches not yet cached by the process server exceed this.
    pub buffer_bytes_max: u64,
    /// Batches sent to the process server and not yet acknowledged, per disk.
    pub window_batches_max: usize,
    pub heartbeat_interval_ms: u64,
    pub reconnect_delay_ms: u64,
}

/// An NBD request or initial-copy chunk, named by the driver.
pub type IoId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOp {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// Zero `len` bytes; `punch` deallocates (trim) where the disk can.
    Zero {
        offset: u64,
        len: u64,
        punch: bool,
    },
}

impl SourceOp {
    /// The whole blocks this op touches: (first block, block count).
    pub fn block_span(&self) -> (u64, u32) {
        let (offset, len) = match self {
            SourceOp::Write { offset, data } => (*offset, data.len() as u64),
            SourceOp::Zero { offset, len, .. } => (*offset, *len),
        };
        let first = offset / BLOCK_BYTES;
        let end = (offset + len).div_ceil(BLOCK_BYTES);
        (first, (end - first) as u32)
    }
    /// True when the op covers whole blocks, so its result is known without reading back.
    pub fn aligned(&self) -> bool {
        let (offset, len) = match self {
            SourceOp::Write { offset, data } => (*offset, data.len() as u64),
            SourceOp::Zero { offset, len, .. } => (*offset, *len),
        };
        offset.is_multiple_of(BLOCK_BYTES) && len.is_multiple_of(BLOCK_BYTES)
    }
}

#[derive(Debug)]
pub enum Input {
    Net(NetEvent),
    /// A workload write (already bounds-checked by the NBD server).
    Write {
        io: IoId,
        disk: usize,
        op: SourceOp,
        fua: bool,
    },
    Flush {
        io: IoId,
        disk: usize,
    },
    /// The driver carried out `CopyRead{disk}`: `data` is whole blocks of the source read at
    /// `offset` (at or after the offset asked for: holes may be skipped). Empty: the disk holds
    /// no data at or after the offset asked for.
    CopyData {
        disk: usize,
        offset: u64,
        data: Vec<u8>,
    },
    /// The driver carried out `SourceWrite{io}`; `data` holds the touched blocks as they are
    /// now (None when the op was aligned zeroing).
    SourceDone {
        io: IoId,
        data: Option<Vec<u8>>,
    },
    SourceFailed {
        io: IoId,
        error: String,
    },
    Synced {
        io: IoId,
    },
    /// A seq reservation is durable.
    Reserved {
        disk: usize,
        reserved: Seq,
    },
    /// Timers may have expired.
    Tick,
}

#[derive(Debug)]
pub enum Output {
    Net(NetCommand),
    /// Carry out `op` on the source disk, in emission order, then answer `SourceDone`.
    SourceWrite {
        io: IoId,
        disk: usize,
        op: SourceOp,
    },
    /// fsync the source disk, then answer `Synced`.
    SourceSync {
        io: IoId,
        disk: usize,
    },
    /// Reply to the NBD request.
    Complete {
        io: IoId,
        result: Result<(), String>,
    },
    /// Persist `reserved` as the disk's seq reservation, then answer `Reserved`.
    Reserve {
        disk: usize,
        reserved: Seq,
    },
    /// Read the source disk's first chunk holding data at or after `offset`: up to
    /// `COPY_CHUNK_BYTES` from a multiple of it (holes may be skipped), whole blocks (the last
    /// block padded with zeros), carried out in emission order like a `SourceWrite`; answer
    /// `CopyData`.
    CopyRead {
        disk: usize,
        offset: u64,
    },
    /// The process server holds the whole initial copy of the disk, streamed under `epoch`:
    /// persist that it is copied under that epoch, so that a restart does not copy it again and
    /// a later protection (a new epoch) does.
    CopyCached {
        disk: usize,
        epoch: Epoch,
    },
    /// The disk's protection ended: persist that it is not copied, so that a later protection
    /// (or a restart during one) copies it again.
    Retired {
        disk: usize,
    },
}

use crate::net::Link;

#[derive(Debug)]
struct Pending {
    disk: usize,
    fua: bool,
    span: (u64, u32),
}

pub struct Agent {
    settings: AgentSettings,
    streams: Vec<Stream>,
    links: Vec<Link>,
    ps_addrs: Vec<Option<String>>,
    busy_until: Vec<Timestamp>,
    /// When each disk's stream last made progress (an answer from the process server).
    progress_at: Vec<Timestamp>,
    cs: Link,
    held: VecDeque<Input>,
    /// Source writes emitted and not yet done, in emission order.
    pending: VecDeque<(IoId, Pending)>,
    batch_deadline: Vec<Option<Timestamp>>,
    /// Each disk's earliest timer (batch close, reconnect, stall, busy), filed again after
    /// every input that touched the disk: a tick visits only the disks that are due.
    wake: Deadlines<usize>,
    /// The disks the current input touched (filled during `handle`, drained at its end).
    touched: Vec<usize>,
    next_heartbeat: Timestamp,
    next_token: ConnectToken,
    out: VecDeque<Output>,
    now: Timestamp,
}

mod copy;
mod handle;
mod net;

pub use copy::COPY_CHUNK_BYTES;

/// One disk as the driver found it when the agent starts.
#[derive(Clone, Debug)]
pub struct AgentDisk {
    pub disk: DiskId,
    pub size_bytes: u64,
    /// The durable seq reservation.
    pub reserved: Seq,
    /// The epoch under which a copy of the whole disk is cached at the process server
    /// (`CopyCached` was persisted); `Some(Epoch(0))` when copied under an epoch not recorded;
    /// `None`: not copied, the agent copies it. An `Assign` of a newer epoch than the copy's
    /// (the disk protected again while this agent was away) copies it again.
    pub copied: Option<Epoch>,
    /// The next seq a clean stop left (every seq before it cached at the process server): the
    /// stream resumes there, with no gap. `None` after a crash: the stream starts past the
    /// reservation.
    pub resume: Option<Seq>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_is_aligned_only_when_its_offset_and_length_both_are() {
        let write = |offset: u64, len: usize| SourceOp::Write {
            offset,
            data: vec![1; len],
        };
        assert!(write(BLOCK_BYTES, 2 * BLOCK_BYTES as usize).aligned());
        assert!(!write(0, 100).aligned(), "aligned offset, short length");
        assert!(
            !write(100, BLOCK_BYTES as usize).aligned(),
            "unaligned offset"
        );
        let zero = |offset: u64, len: u64| SourceOp::Zero {
            offset,
            len,
            punch: false,
        };
        assert!(zero(0, BLOCK_BYTES).aligned());
        assert!(!zero(BLOCK_BYTES, 10).aligned());
        assert!(!zero(10, BLOCK_BYTES).aligned());
    }
}
