//! What a master target knows about each replica beyond its data: the metadata it persists,
//! and the recovery points, which its core decides (every consistent batch ends one) and the
//! driver records.

use crate::ids::{DiskId, Epoch, Seq};
use crate::stats::ReplicaStats;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Points recorded between two records that wait for the disk. The journal is the truth for
/// points (a master target re-derives them from it when it opens a replica), so most records
/// need not be synced; one in this many is, which bounds what a crash makes the driver redo.
pub const POINTS_PER_SYNC: u64 = 64;

/// What the master target persists about a replica (besides its base, journal and points).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub size_bytes: u64,
    pub applied_seq: Seq,
    pub points: u64,
    pub journal_bytes: u64,
    pub inconsistent: Option<String>,
}

impl ReplicaMeta {
    /// What the master target reports of this replica (heartbeats, `/metrics`).
    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            disk: self.disk.clone(),
            epoch: self.epoch,
            size_bytes: self.size_bytes,
            applied_seq: self.applied_seq,
            points: self.points,
            journal_bytes: self.journal_bytes,
            inconsistent: self.inconsistent.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PointKind {
    /// Crash-consistent: the disk as a power cut at that write would have left it.
    Crash,
}

/// A recovery point as listed by a master target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRecord {
    pub seq: Seq,
    pub time: Timestamp,
    pub kind: PointKind,
}
