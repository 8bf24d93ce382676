//! Statistics each component reports to the configuration server in its heartbeat.

use crate::ids::{DiskId, Epoch, Seq};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// The ordered write stream is shipped; every batch boundary is a recovery point.
    Data,
    /// Initial copy in progress: the replica is not yet consistent.
    InitialCopy,
    /// Waiting for a reservation of sequence numbers to be persisted, or for the process server.
    Starting,
    /// Not protected: the agent serves the disk without replicating it.
    Unprotected,
}

impl ReplicationMode {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Data => "data",
            ReplicationMode::InitialCopy => "initial-copy",
            ReplicationMode::Starting => "starting",
            ReplicationMode::Unprotected => "unprotected",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDiskStats {
    pub disk: DiskId,
    pub mode: ReplicationMode,
    pub size_bytes: u64,
    pub seq_written: Seq,
    pub seq_cached: Seq,
    pub seq_applied: Seq,
    pub rpo_ms: u64,
    pub bytes_written: u64,
    pub buffered_bytes: u64,
    pub connected: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    pub disks: Vec<AgentDiskStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDiskStats {
    pub disk: DiskId,
    pub cached_seq: Seq,
    pub applied_seq: Seq,
    pub cached_batches: u64,
    pub cached_bytes: u64,
    pub master_target_connected: bool,
    /// Why the disk's master target refused its stream the last time, until it accepts it
    /// again (a replica of another size, an older epoch): replication of the disk is stuck
    /// until the operator acts.
    #[serde(default)]
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessServerStats {
    pub disks: Vec<CacheDiskStats>,
    pub cache_bytes: u64,
    pub cache_bytes_max: u64,
    /// Raw data bytes received from agents.
    pub bytes_in: u64,
    /// Bytes sent to master targets (after compression).
    pub bytes_out: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStats {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub size_bytes: u64,
    pub applied_seq: Seq,
    pub points: u64,
    pub journal_bytes: u64,
    /// Set when the replica cannot be trusted (a gap in the stream); says why.
    pub inconsistent: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterTargetStats {
    pub replicas: Vec<ReplicaStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `haven status` and the metrics show these names; docs/api.md lists them.
    #[test]
    fn replication_modes_have_the_names_status_shows() {
        let names = [
            ReplicationMode::Data,
            ReplicationMode::InitialCopy,
            ReplicationMode::Starting,
            ReplicationMode::Unprotected,
        ]
        .map(ReplicationMode::name);
        assert_eq!(names, ["data", "initial-copy", "starting", "unprotected"]);
    }
}
