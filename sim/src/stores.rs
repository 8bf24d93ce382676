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
        /// The agent's disk slot the write went to.
        disk: usize,
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
    /// The durable seq reservation of each disk (by the agent's slot).
    pub reserved: Vec<Seq>,
    pub pending: Pending<AgentAnswer>,
    pub fault: Option<DiskFault>,
}

impl AgentStore {
    pub fn new(disks: usize) -> AgentStore {
        AgentStore {
            reserved: vec![0; disks],
            ..AgentStore::default()
        }
    }

    /// Answers the oldest request, making what it stands for durable.
    pub fn complete(&mut self) -> Option<AgentAnswer> {
        let a = self.pending.pop()?;
        if let AgentAnswer::Reserved { disk, reserved } = &a {
            self.reserved[*disk] = self.reserved[*disk].max(*reserved);
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

/// A process server's store request not yet durable.
pub enum PsWork {
    /// A cache append: (append id, where, record bytes).
    Append(u64, CacheLoc, u64),
    /// A disk's metadata saved, answered with `DiskSaved` if it has a save id.
    Save(Option<u64>, CacheDiskMeta),
}

/// The process server's cache and metadata.
#[derive(Default)]
pub struct PsStore {
    /// Durable metadata (a save is durable when its `PsWork::Save` completes).
    pub metas: BTreeMap<DiskId, CacheDiskMeta>,
    /// Written records (durable or not) with their frames.
    entries: BTreeMap<CacheLoc, (CachedBatch, Vec<u8>)>,
    durable: BTreeSet<CacheLoc>,
    next_loc: u64,
    /// Highest seq ever durably cached, per disk.
    pub synced_seq: BTreeMap<DiskId, Seq>,
    /// Seq ranges ever durably cached, per disk (what the process server may acknowledge).
    pub durable_ranges: BTreeMap<DiskId, Vec<(Seq, Seq)>>,
    pub pending: Pending<PsWork>,
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

    /// Completes the oldest pending work: a save makes its metadata durable.
    pub fn complete(&mut self) -> Option<PsWork> {
        let work = self.pending.pop()?;
        let (id, loc, bytes) = match work {
            PsWork::Append(id, loc, bytes) => (id, loc, bytes),
            PsWork::Save(save, meta) => {
                self.metas.insert(meta.disk.clone(), meta.clone());
                return Some(PsWork::Save(save, meta));
            }
        };
        self.durable.insert(loc);
        if let Some((b, _)) = self.entries.get(&loc) {
            let synced = self.synced_seq.entry(b.disk.clone()).or_default();
            *synced = (*synced).max(b.last_seq);
            let ranges = self.durable_ranges.entry(b.disk.clone()).or_default();
            ranges.push((b.first_seq, b.last_seq));
        }
        Some(PsWork::Append(id, loc, bytes))
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

/// One replica on a master target: metadata, base image and journal.
pub struct Replica {
    pub meta: ReplicaMeta,
    /// The replica as the durable journal leaves it.
    pub image: Vec<u8>,
    pub digest: crate::rng::BlockDigest,
    pub journal: Vec<JournalEntry>,
    pub journal_bytes: u64,
    /// Recovery points listed: (seq, index of the journal entry that ends there).
    pub points: Vec<(Seq, usize)>,
    /// Last seq appended (durable or pending).
    pub appended_seq: Seq,
}

impl Replica {
    /// An empty replica (a sparse base, an empty journal).
    pub fn new(meta: ReplicaMeta) -> Replica {
        let image = vec![0; meta.size_bytes as usize];
        Replica {
            digest: crate::rng::BlockDigest::new(&image, B),
            image,
            meta,
            journal: vec![],
            journal_bytes: 0,
            points: vec![],
            appended_seq: 0,
        }
    }

    pub fn durable_seq(&self) -> Seq {
        self.journal.last().map_or(0, |e| e.header.last_seq)
    }
}

/// A master target's store: its replicas, and its appends not yet durable (one queue, in
/// emission order, whatever the disk).
#[derive(Default)]
pub struct MtStore {
    pub replicas: BTreeMap<DiskId, Replica>,
    pub pending: Pending<MtWork>,
    pub fault: Option<DiskFault>,
}

/// A master target's store request not yet durable.
pub enum MtWork {
    /// A journal append: (append id, header, raw data, whether the core made it a point).
    Append(u64, BatchHeader, Vec<u8>, bool),
    /// A replica's metadata saved (and its replica created, if `create`).
    Save {
        save: u64,
        meta: ReplicaMeta,
        create: bool,
    },
}

impl MtStore {
    /// Durable through this seq for `disk` (0 if it has no replica here).
    pub fn durable_seq(&self, disk: &DiskId) -> Seq {
        self.replicas.get(disk).map_or(0, Replica::durable_seq)
    }

    /// Appends of `disk` in flight.
    pub fn pending_of(&self, disk: &DiskId) -> usize {
        self.pending
            .iter()
            .filter(|w| matches!(w, MtWork::Append(_, h, ..) if &h.disk == disk))
            .count()
    }

    /// Makes an append durable, recording a recovery point at its end if `point`; returns
    /// (disk, journal bytes, the entry's index).
    pub fn complete_append(
        &mut self,
        header: BatchHeader,
        data: Vec<u8>,
        point: bool,
    ) -> Result<(DiskId, u64, usize), String> {
        let disk = header.disk.clone();
        let r = self
            .replicas
            .get_mut(&disk)
            .ok_or_else(|| format!("journal append for {disk}, which has no replica"))?;
        apply(&mut r.image, &header, &data);
        for op in &header.ops {
            let (first, n) = (op.block as usize, op.blocks as usize);
            r.digest.update(&r.image, B, first, n);
        }
        r.journal_bytes += data.len() as u64;
        if point {
            r.points.push((header.last_seq, r.journal.len()));
        }
        r.journal.push(JournalEntry { header, data });
        Ok((disk, r.journal_bytes, r.journal.len() - 1))
    }

    pub fn crash(&mut self) {
        self.pending.clear();
        for r in self.replicas.values_mut() {
            r.appended_seq = r.durable_seq();
        }
    }

    /// What `MasterTarget::new` gets after a restart: the metadata, with what the journal says.
    pub fn recover(&self) -> Vec<ReplicaMeta> {
        self.replicas
            .values()
            .map(|r| {
                let mut m = r.meta.clone();
                m.applied_seq = r.durable_seq();
                m.points = r.points.len() as u64;
                m.journal_bytes = r.journal_bytes;
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
