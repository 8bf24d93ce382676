//! Public types of the segment log: settings, locations, stats and errors.

use std::io;
use std::path::{Path, PathBuf};

/// Default size at which a new segment is started.
pub const DEFAULT_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Default largest accepted record body.
pub const DEFAULT_RECORD_BYTES_MAX: u64 = 256 << 20;
/// Hard limit on a body: the on-disk length field is a u32.
pub const RECORD_BYTES_LIMIT: u64 = u32::MAX as u64;

/// Tunables of a [`SegmentLog`](super::SegmentLog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSettings {
    /// Start a new segment when the current one would grow past this.
    pub segment_bytes_max: u64,
    /// Largest record body accepted on append and trusted when reading; a
    /// length field above it is treated as corruption.
    pub record_bytes_max: u64,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        SegmentSettings {
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            record_bytes_max: DEFAULT_RECORD_BYTES_MAX,
        }
    }
}

impl SegmentSettings {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.record_bytes_max > RECORD_BYTES_LIMIT {
            return Err(SegmentError::Settings {
                what: format!(
                    "record_bytes_max {} exceeds the format limit {RECORD_BYTES_LIMIT}",
                    self.record_bytes_max
                ),
            });
        }
        if self.segment_bytes_max == 0 {
            return Err(SegmentError::Settings {
                what: "segment_bytes_max must be positive".into(),
            });
        }
        Ok(())
    }
}

/// Where a record lives: segment index and byte offset of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordLoc {
    pub segment: u64,
    pub offset: u64,
}

/// A record's location and keys, without its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub loc: RecordLoc,
    pub first: u64,
    pub last: u64,
    pub body_len: u32,
}

/// Size of the log on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentStats {
    pub segments: usize,
    /// Sum of valid bytes in all segments (headers included).
    pub bytes: u64,
}

/// Errors of the segment log. Messages say what the operator should do.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment log I/O error on {}: {source}; check that the disk is healthy, mounted read-write and not full, then restart", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("segment log {}: record at offset {offset} of segment {segment:016x}.seg is corrupt ({what}); the file was damaged after it was written (a torn record from a crash only occurs at the end of the newest segment and is repaired automatically). Restore the directory from a replica or backup, or, accepting the loss of their records, move this segment and all later ones out of the directory and restart", dir.display())]
    Corrupt {
        dir: PathBuf,
        segment: u64,
        offset: u64,
        what: String,
    },
    #[error("record body of {len} bytes exceeds record_bytes_max {max}; split the data into smaller records or raise record_bytes_max")]
    TooLarge { len: u64, max: u64 },
    #[error("no valid record at segment {:016x} offset {}: {what}; this is a caller bug (stale or invented location), please report it", loc.segment, loc.offset)]
    BadLocation { loc: RecordLoc, what: String },
    #[error("invalid segment log settings: {what}; fix the configuration")]
    Settings { what: String },
    #[error("segment log {} is unusable after an earlier sync failure (written data may have been lost); restart the process so the log is reopened and rescanned", dir.display())]
    Poisoned { dir: PathBuf },
}

pub type Result<T, E = SegmentError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}
