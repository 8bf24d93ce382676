//! The process server: a durable cache between agents and master targets.
//!
//! A batch from an agent is validated, compressed (`batch::compress`), and handed to the driver
//! as `CacheAppend`; only when the driver reports `CachePersisted` (appended and fsync'd) does the
//! agent get its `BatchAck`. Cached batches are forwarded to the disk's master target in seq
//! order (`Forward`: the driver sends the cached frame as it is), resent after a reconnect, and
//! released from the cache (`CacheRelease`) only once the master target says `Applied`.
//! While the master target is away the cache grows up to `cache_bytes_max`; past it, agents are
//! told `Busy` and hold their writes. After a restart the driver feeds back every cached batch
//! (`ProcessServer::new`), and forwarding resumes where the master target stands.
//! An `OpenStream` that brings a new epoch or size is answered with `StreamState` only once
//! that metadata is durable (`DiskSaved`), so the agent never streams under an epoch that a
//! crash of the process server would forget.

mod handle;
mod streams;
mod timers;

use crate::batch::BatchHeader;
use crate::deadlines::Deadlines;
use crate::ids::{ComponentId, ConnId, DiskId, Epoch, Seq};
use crate::net::{ConnEpochs, ConnectToken, NetCommand, NetEvent};
use crate::protocol::Message;
use crate::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const CS_TOKEN: ConnectToken = u64::MAX;
/// A master-target stream waiting for an answer this long is reconnected (see the agent's).
pub const STREAM_STALL_MS: u64 = crate::agent::STREAM_STALL_MS;

#[derive(Clone, Debug)]
pub struct ProcessServerSettings {
    pub component: ComponentId,
    pub config_server_addr: String,
    /// Address agents use to reach this process server (registered with the configuration server).
    pub data_addr: String,
    /// Most bytes the cache may hold; past it agents are told to wait.
    pub cache_bytes_max: u64,
    /// Batches forwarded to a master target and not yet applied, per disk.
    pub window_batches_max: usize,
    pub heartbeat_interval_ms: u64,
    pub reconnect_delay_ms: u64,
    /// How long an agent told `Busy` waits before resending.
    pub busy_retry_ms: u64,
}

/// Where a cached batch lives, as the driver's cache store names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheLoc {
    pub segment: u64,
    pub offset: u64,
}

/// A cached batch as core tracks it: no data, no op list (those stay on disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBatch {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// Bytes the cached record takes.
    pub bytes: u64,
    pub loc: CacheLoc,
}

/// A disk known to the process server, as persisted in its metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheDiskMeta {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub size_bytes: u64,
    pub applied_seq: Seq,
}

#[derive(Debug)]
pub enum Input {
    Net(NetEvent),
    /// `CacheAppend{id}` is appended and synced (each append is answered on its own).
    CachePersisted {
        id: u64,
        loc: CacheLoc,
        bytes: u64,
    },
    /// `SaveDisk{save: Some(save)}` is durable (saves are answered in the order emitted).
    DiskSaved {
        save: u64,
    },
    Tick,
}

#[derive(Debug)]
pub enum Output {
    Net(NetCommand),
    /// Append this batch (compressed) to the disk's cache and fsync; then answer `CachePersisted`.
    CacheAppend {
        id: u64,
        header: BatchHeader,
        data: Vec<u8>,
    },
    /// Send the cached batch at `loc` to `conn` as it is.
    Forward {
        conn: ConnId,
        disk: DiskId,
        loc: CacheLoc,
    },
    /// Batches of `disk` through `through` may be deleted from the cache.
    CacheRelease {
        disk: DiskId,
        through: Seq,
    },
    /// Persist what is known of a disk. With `save` (a new epoch or size, which a stream waits
    /// for), durably, then answer `DiskSaved{save}`; without, losing it only causes resends.
    SaveDisk {
        save: Option<u64>,
        meta: CacheDiskMeta,
    },
    /// Delete what is persisted of a disk whose protection ended (after its `CacheRelease`).
    ForgetDisk(DiskId),
}

use crate::batch::CompressionPolicy;
use crate::net::Link;

#[derive(Debug)]
struct DiskCache {
    meta: CacheDiskMeta,
    entries: VecDeque<CachedBatch>,
    /// The first `sent` entries have been forwarded on the current link (sends are in order).
    sent: usize,
    /// Highest seq durably cached.
    cached_seq: Seq,
    /// Next seq expected from the agent (past what is cached or being appended).
    expect_seq: Seq,
    agent: Option<ConnId>,
    /// The master target's reason for refusing this disk's stream, until it takes it again.
    refused: Option<String>,
    /// The newest save of a new epoch or size not yet durable.
    saving: Option<u64>,
    /// The agent connection whose `StreamState` waits for `saving`.
    state_for: Option<ConnId>,
    route: Option<String>,
    link: Link,
    cached_bytes: u64,
    /// When the master target last answered (or when nothing was outstanding).
    progress_at: Timestamp,
}

pub struct ProcessServer {
    settings: ProcessServerSettings,
    disks: BTreeMap<DiskId, DiskCache>,
    /// Appends handed to the driver and not yet durable: id -> (disk, first, last, epoch, bytes).
    appending: BTreeMap<u64, (DiskId, Seq, Seq, Epoch, u64)>,
    appending_bytes: u64,
    next_append: u64,
    next_save: u64,
    /// Each disk's earliest timer (reconnect, stall), filed again after every input that
    /// concerned the disk.
    wake: Deadlines<DiskId>,
    /// The disks the current input concerns (or all of them), filled during `handle`.
    touched: Vec<DiskId>,
    touched_all: bool,
    /// The epoch each agent connection was made for.
    peers: ConnEpochs,
    /// Connections this process server closed and has not yet heard `Closed` of: one entry
    /// per open connection at most.
    closing: BTreeSet<ConnId>,
    cs: Link,
    next_token: ConnectToken,
    next_heartbeat: Timestamp,
    bytes_in: u64,
    bytes_out: u64,
    compression_level: i32,
    compression: CompressionPolicy,
    out: VecDeque<Output>,
    now: Timestamp,
}

impl DiskCache {
    /// The master-target connection, if one is open.
    fn link_conn(&self) -> Option<ConnId> {
        match self.link {
            Link::Opening(c) | Link::Ready(c) => Some(c),
            _ => None,
        }
    }

    /// True when the master-target stream waits for an answer (so silence means trouble).
    fn waiting(&self) -> bool {
        match self.link {
            Link::Opening(_) => true,
            Link::Ready(_) => self.sent > 0,
            _ => false,
        }
    }
}
