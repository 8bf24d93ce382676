//! The workload: writes to the agent through the same input as NBD writes (overlapping,
//! unaligned, large and small, trims, zeroes, flushes, FUA), carried out on the source disk,
//! with the full history kept so that the source can be rebuilt as it was at any seq.

use crate::rng::{BlockDigest, Rng};
use haven_core::agent::{self, IoId, SourceOp};
use haven_core::batch::BLOCK_BYTES;
use haven_core::{Seq, Timestamp};
use std::collections::BTreeMap;

const B: usize = BLOCK_BYTES as usize;

/// An agent names each NBD request with one `IoId` across its disks: the workload of the disk
/// in slot `s` numbers its requests from `s << IO_SLOT_SHIFT` (slot 0 from 1, as when there
/// was one disk).
pub const IO_SLOT_SHIFT: u32 = 40;

/// The agent's disk slot a request id belongs to.
pub fn slot_of_io(io: IoId) -> usize {
    (io >> IO_SLOT_SHIFT) as usize
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadParams {
    /// Writes (trims and zeroes included); flushes come on top.
    pub writes: usize,
    /// Requests per simulated second (0: as fast as the queue allows).
    pub rate: u64,
    /// Most requests outstanding (the NBD queue depth).
    pub depth: usize,
    /// Percent of requests that are flushes.
    pub flush: u64,
    /// Largest write, in blocks.
    pub max_blocks: u64,
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            writes: 300,
            rate: 0,
            depth: 8,
            flush: 5,
            max_blocks: 4,
        }
    }
}

/// One write as carried out on the source.
pub struct SourceRecord {
    pub offset: u64,
    pub len: u64,
    /// None: zeroes.
    pub data: Option<Vec<u8>>,
    pub span: (u64, u32),
    pub aligned_zero: bool,
    /// The touched blocks right after the write.
    pub blocks: Vec<u8>,
}

pub struct Workload {
    pub p: WorkloadParams,
    /// The agent's disk slot this workload writes to.
    pub slot: usize,
    rng: Rng,
    pub source: Vec<u8>,
    /// Version v of the source is the disk after `history[..v]`.
    pub history: Vec<SourceRecord>,
    digests: Vec<u64>,
    digest: BlockDigest,
    /// Which source version each seq ends at.
    pub seq_version: BTreeMap<Seq, usize>,
    pub left: usize,
    outstanding: BTreeMap<IoId, bool>,
    next_io: IoId,
    pub next_arrival: Timestamp,
    pub completed: u64,
    pub failed: u64,
    /// Requests outstanding when the agent crashed (the NBD client saw the connection drop).
    pub lost: u64,
}

impl Workload {
    pub fn new(p: WorkloadParams, rng: Rng, disk_bytes: usize, slot: usize) -> Workload {
        let source = vec![0; disk_bytes];
        let digest = BlockDigest::new(&source, B);
        let digests = vec![digest.sum];
        Workload {
            digest,
            left: p.writes,
            p,
            rng,
            source,
            history: vec![],
            digests,
            seq_version: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            next_io: ((slot as u64) << IO_SLOT_SHIFT) + 1,
            slot,
            next_arrival: Timestamp::ZERO,
            completed: 0,
            failed: 0,
            lost: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.left == 0 && self.outstanding.is_empty()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    pub fn can_submit(&self, now: Timestamp) -> bool {
        self.left > 0 && self.outstanding.len() < self.p.depth && self.next_arrival <= now
    }

    /// When the next request may go, if one is waiting only for time.
    pub fn next_due(&self) -> Option<Timestamp> {
        (self.left > 0 && self.outstanding.len() < self.p.depth).then_some(self.next_arrival)
    }

    /// The next NBD request.
    pub fn next_request(&mut self, now: Timestamp) -> agent::Input {
        let disk_bytes = self.source.len() as u64;
        let io = self.next_io;
        self.next_io += 1;
        if self.p.rate > 0 {
            let gap = self.rng.below(2 * 1000 / self.p.rate.max(1) + 1);
            self.next_arrival = now.plus_millis(gap);
        }
        let rng = &mut self.rng;
        if rng.chance(self.p.flush) {
            self.outstanding.insert(io, true);
            return agent::Input::Flush {
                io,
                disk: self.slot,
            };
        }
        self.outstanding.insert(io, false);
        self.left -= 1;
        let max_blocks = self.p.max_blocks.clamp(1, disk_bytes / BLOCK_BYTES);
        let (op, fua) = match rng.below(10) {
            0..=3 => {
                let blocks = 1 + rng.below(max_blocks);
                let off = rng.below(disk_bytes / BLOCK_BYTES - blocks + 1) * BLOCK_BYTES;
                let mut data = vec![0; (blocks * BLOCK_BYTES) as usize];
                rng.fill(&mut data);
                (SourceOp::Write { offset: off, data }, rng.chance(10))
            }
            4..=6 => {
                let len = 1 + rng.below((max_blocks - 1).max(1) * BLOCK_BYTES);
                let off = rng.below(disk_bytes - len + 1);
                let mut data = vec![0; len as usize];
                rng.fill(&mut data);
                (SourceOp::Write { offset: off, data }, rng.chance(20))
            }
            7 => {
                let blocks = 1 + rng.below(max_blocks);
                let off = rng.below(disk_bytes / BLOCK_BYTES - blocks + 1) * BLOCK_BYTES;
                let punch = rng.chance(50);
                let len = blocks * BLOCK_BYTES;
                (
                    SourceOp::Zero {
                        offset: off,
                        len,
                        punch,
                    },
                    false,
                )
            }
            _ => {
                let len = 1 + rng.below(2 * BLOCK_BYTES);
                let off = rng.below(disk_bytes - len + 1);
                let punch = false;
                (
                    SourceOp::Zero {
                        offset: off,
                        len,
                        punch,
                    },
                    false,
                )
            }
        };
        agent::Input::Write {
            io,
            disk: self.slot,
            op,
            fua,
        }
    }

    /// Carries out a source write; returns (version, the touched blocks as they are now, or
    /// None for aligned zeroing).
    pub fn carry_out(&mut self, op: &SourceOp) -> (usize, Option<Vec<u8>>) {
        let (offset, len, data) = match op {
            SourceOp::Write { offset, data } => {
                let o = *offset as usize;
                self.source[o..o + data.len()].copy_from_slice(data);
                (*offset, data.len() as u64, Some(data.clone()))
            }
            SourceOp::Zero { offset, len, .. } => {
                let o = *offset as usize;
                self.source[o..o + *len as usize].fill(0);
                (*offset, *len, None)
            }
        };
        let span = op.block_span();
        let aligned_zero = matches!(op, SourceOp::Zero { .. }) && op.aligned();
        let (s, e) = (span.0 as usize * B, (span.0 + span.1 as u64) as usize * B);
        let blocks = self.source[s..e].to_vec();
        self.digest
            .update(&self.source, B, span.0 as usize, span.1 as usize);
        self.digests.push(self.digest.sum);
        self.history.push(SourceRecord {
            offset,
            len,
            data,
            span,
            aligned_zero,
            blocks: blocks.clone(),
        });
        (self.history.len(), (!aligned_zero).then_some(blocks))
    }

    /// A request was answered.
    pub fn complete(&mut self, io: IoId, ok: bool) -> Result<(), String> {
        if self.outstanding.remove(&io).is_none() {
            return Err(format!("io {io} completed twice or never asked"));
        }
        if ok {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
        Ok(())
    }

    /// The agent crashed: its NBD connection dropped; what was outstanding is in doubt.
    pub fn agent_crashed(&mut self) {
        self.lost += self.outstanding.len() as u64;
        self.outstanding.clear();
    }

    pub fn digest_at(&self, version: usize) -> u64 {
        self.digests[version]
    }

    pub fn record_of_seq(&self, seq: Seq) -> Option<&SourceRecord> {
        let v = *self.seq_version.get(&seq)?;
        Some(&self.history[v - 1])
    }

    pub fn max_seq(&self) -> Seq {
        self.seq_version.keys().next_back().copied().unwrap_or(0)
    }

    /// Rebuilds the source as it was at `version`.
    pub fn image_at(&self, version: usize) -> Vec<u8> {
        let mut r = Replay::new(self.source.len());
        r.advance(self, version);
        r.img
    }
}

/// Rebuilds source versions one after another.
pub struct Replay {
    pub img: Vec<u8>,
    pub version: usize,
}

impl Replay {
    pub fn new(bytes: usize) -> Replay {
        Replay {
            img: vec![0; bytes],
            version: 0,
        }
    }
    pub fn advance(&mut self, w: &Workload, to: usize) {
        while self.version < to {
            let r = &w.history[self.version];
            let (o, l) = (r.offset as usize, r.len as usize);
            match &r.data {
                Some(d) => self.img[o..o + l].copy_from_slice(d),
                None => self.img[o..o + l].fill(0),
            }
            self.version += 1;
        }
    }
}
