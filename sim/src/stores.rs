//! Crash-faithful in-memory stores, one per role. Each keeps a durable part (synced) and a
//! pending part (emitted by the role, not yet answered). A crash drops the pending part; a
//! restart rebuilds the role from the durable part only. A store can also be told to fail
//! (disk full, I/O error): the role's next write fails and the role stops.

use haven_core::agent::IoId;
use haven_core::batch::{BatchHeader, OpKind, BLOCK_BYTES};
use haven_core::master_target::ReplicaMeta;
use haven_core::process_server::{CacheDiskMeta, CacheLoc, CachedBatch};
use haven_core::protocol::{self, Message};
use haven_core::{DiskId, Seq, Timestamp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const B: usize = BLOCK_BYTES as usize;

/// A failure a store can be told to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFault {
    Full,
    Io,
}

impl DiskFault {
    pub fn error(self) -> &'static str {
        match self {
            DiskFault::Full => "No space left on device (os error 28)",
            DiskFault::Io => "Input/output error (os error 5)",
        }
    }
}

/// Answers a store owes its role, in emission order, each ready at a time.
pub struct Pending<T> {
    q: VecDeque<(Timestamp, T)>,
    last: Timestamp,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            q: VecDeque::new(),
            last: Timestamp::ZERO,
        }
    }
}

impl<T> Pending<T> {
    pub fn push(&mut self, at: Timestamp, item: T) {
        let at = at.max(self.last);
        self.last = at;
        self.q.push_back((at, item));
    }
    pub fn ready(&self, now: Timestamp) -> bool {
        self.q.front().is_some_and(|(t, _)| *t <= now)
    }
    pub fn next_due(&self) -> Option<Timestamp> {
        self.q.front().map(|(t, _)| *t)
    }
    pub fn pop(&mut self) -> Option<T> {
        self.q.pop_front().map(|(_, x)| x)
    }
    pub fn len(&self) -> usize {
        self.q.len()
    }
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    pub fn clear(&mut self) {
        self.q.clear();
    }
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.q.iter().map(|(_, x)| x)
    }
}

/// What the agent's store owes: the source disk's answers and the seq reservation.
pub enum AgentAnswer {
    /// `version`: the source version this write produced (see `Workload`).
    SourceDone {
        io: IoId,
        version: usize,
        data: Option<Vec<u8>>,
    },
    SourceFailed {
        io: IoId,
        error: String,
    },
    Synced {
        io: IoId,
    },
    Reserved {
        disk: usize,
        reserved: Seq,
    },
}

#[derive(Default)]
pub struct AgentStore {
    /// The durable seq reservation of disk 0.
    pub reserved: Seq,
    pub pending: Pending<AgentAnswer>,
    pub fault: Option<DiskFault>,
}

impl AgentStore {
    /// Answers the oldest request, making what it stands for durable.
    pub fn complete(&mut self) -> Option<AgentAnswer> {
        let a = self.pending.pop()?;
        if let AgentAnswer::Reserved { reserved, .. } = &a {
            self.reserved = self.reserved.max(*reserved);
        }
        Some(a)
    }
    pub fn crash(&mut self) {
        self.pending.clear();
    }
}

/// The configuration server's redb: records become durable only when their persist is answered.
#[derive(Default)]
pub struct CsStore {
    pub durable: haven_core::config_server::ConfigState,
    pub pending: Pending<(u64, Vec<haven_core::config_server::Record>)>,
}

impl CsStore {
    /// Answers the oldest persist: its records are now durable (one transaction).
    pub fn complete(&mut self) -> Option<u64> {
        let (id, records) = self.pending.pop()?;
        self.durable.apply(&records);
        Some(id)
    }
    pub fn crash(&mut self) {
        self.pending.clear();
    }
}

/// The process server's cache and metadata.
#[derive(Default)]
pub struct PsStore {
    /// Saved at once (a small file replaced atomically).
    pub metas: BTreeMap<DiskId, CacheDiskMeta>,
    /// Written records (durable or not) with their frames.
    entries: BTreeMap<CacheLoc, (CachedBatch, Vec<u8>)>,
    durable: BTreeSet<CacheLoc>,
    next_loc: u64,
    /// Highest seq ever durably cached.
    pub synced_seq: Seq,
    /// Seq ranges ever durably cached (what the process server may acknowledge).
    pub durable_ranges: Vec<(Seq, Seq)>,
    /// (append id, where, record bytes)
    pub pending: Pending<(u64, CacheLoc, u64)>,
    pub fault: Option<DiskFault>,
}

impl PsStore {
    pub fn append(&mut self, header: &BatchHeader, data: &[u8]) -> Result<(CacheLoc, u64), String> {
        let frame = protocol::encode(&Message::Batch(header.clone()), data)
            .map_err(|e| format!("cache frame: {e}"))?;
        let loc = CacheLoc {
            segment: 0,
            offset: self.next_loc,
        };
        let bytes = frame.len() as u64;
        self.next_loc += bytes;
        let b = CachedBatch {
            disk: header.disk.clone(),
            epoch: header.epoch,
            first_seq: header.first_seq,
            last_seq: header.last_seq,
            bytes,
            loc,
        };
        self.entries.insert(loc, (b, frame));
        Ok((loc, bytes))
    }

    pub fn complete(&mut self) -> Option<(u64, CacheLoc, u64)> {
        let (id, loc, bytes) = self.pending.pop()?;
        self.durable.insert(loc);
        if let Some((b, _)) = self.entries.get(&loc) {
            self.synced_seq = self.synced_seq.max(b.last_seq);
            self.durable_ranges.push((b.first_seq, b.last_seq));
        }
        Some((id, loc, bytes))
    }

    /// The frame at `loc`, if it is durable.
    pub fn frame(&self, loc: CacheLoc) -> Result<&[u8], String> {
        let (_, f) = self
            .entries
            .get(&loc)
            .ok_or_else(|| format!("Forward of {loc:?}, not in the cache"))?;
        if !self.durable.contains(&loc) {
            return Err(format!("Forward of {loc:?} before it is synced"));
        }
        Ok(f)
    }

    pub fn release(&mut self, disk: &DiskId, through: Seq) {
        let durable = &mut self.durable;
        self.entries.retain(|loc, (b, _)| {
            let gone = &b.disk == disk && b.last_seq <= through;
            if gone {
                durable.remove(loc);
            }
            !gone
        });
    }

    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|(b, _)| b.bytes).sum()
    }

    pub fn crash(&mut self) {
        let durable = &self.durable;
        self.entries.retain(|loc, _| durable.contains(loc));
        self.pending.clear();
    }

    /// What `ProcessServer::new` gets after a restart.
    pub fn recover(&self) -> (Vec<CacheDiskMeta>, Vec<CachedBatch>) {
        let metas = self.metas.values().cloned().collect();
        let cached = self.entries.values().map(|(b, _)| b.clone()).collect();
        (metas, cached)
    }
}

/// One durable journal entry of the replica.
pub struct JournalEntry {
    pub header: BatchHeader,
    pub data: Vec<u8>,
}

/// The master target's replica: metadata, base image and journal (single disk).
#[derive(Default)]
pub struct MtStore {
    pub metas: BTreeMap<DiskId, ReplicaMeta>,
    /// The replica as the durable journal leaves it.
    pub replica: Vec<u8>,
    pub digest: crate::rng::BlockDigest,
    pub journal: Vec<JournalEntry>,
    pub journal_bytes: u64,
    /// Recovery points listed: (seq, index of the journal entry that ends there).
    pub points: Vec<(Seq, usize)>,
    /// (append id, header, raw data)
    pub pending: Pending<(u64, BatchHeader, Vec<u8>)>,
    /// Last seq appended (durable or pending).
    pub appended_seq: Seq,
    pub fault: Option<DiskFault>,
}

impl MtStore {
    pub fn durable_seq(&self) -> Seq {
        self.journal.last().map_or(0, |e| e.header.last_seq)
    }

    /// Makes the oldest append durable; returns (id, journal bytes, the entry's index).
    pub fn complete(&mut self) -> Option<(u64, u64, usize)> {
        let (id, header, data) = self.pending.pop()?;
        apply(&mut self.replica, &header, &data);
        for op in &header.ops {
            let (first, n) = (op.block as usize, op.blocks as usize);
            self.digest.update(&self.replica, B, first, n);
        }
        self.journal_bytes += data.len() as u64;
        if header.consistent {
            self.points.push((header.last_seq, self.journal.len()));
        }
        self.journal.push(JournalEntry { header, data });
        Some((id, self.journal_bytes, self.journal.len() - 1))
    }

    pub fn crash(&mut self) {
        self.pending.clear();
        self.appended_seq = self.durable_seq();
    }

    /// What `MasterTarget::new` gets after a restart: the metadata, with what the journal says.
    pub fn recover(&self) -> Vec<ReplicaMeta> {
        self.metas
            .values()
            .map(|m| {
                let mut m = m.clone();
                m.applied_seq = self.durable_seq();
                m.points = self.points.len() as u64;
                m.journal_bytes = self.journal_bytes;
                m
            })
            .collect()
    }
}

/// Applies a raw batch to an image.
pub fn apply(img: &mut [u8], h: &BatchHeader, data: &[u8]) {
    let mut at = 0;
    for op in &h.ops {
        let (s, len) = (op.block as usize * B, op.blocks as usize * B);
        match op.kind {
            OpKind::Data => {
                img[s..s + len].copy_from_slice(&data[at..at + len]);
                at += len;
            }
            OpKind::Zero => img[s..s + len].fill(0),
        }
    }
}

impl PsStore {
    pub fn entries_len(&self) -> usize {
        self.entries.len()
    }
}
