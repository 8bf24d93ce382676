//! Crash-faithful simulated storage.
//!
//! Two simulated disks share the model in this module:
//!
//! * [`SimVfs`] implements [`haven_runtime::vfs::Vfs`] (files and directories) for the segment
//!   log and the stores built on it;
//! * [`SimRedbDisk`] / [`SimRedbBackend`] implement [`redb::StorageBackend`] (one file) for the
//!   redb metadata store.
//!
//! # The crash model
//!
//! Every file keeps two byte images: `current`, which reads see, and `durable`, which is what a
//! crash leaves behind. Writes, length changes and hole punches change `current` and are logged
//! as *unsynced changes*; `sync_data` makes `current` durable and clears the log. A crash
//! replaces `current` by the durable image, so **whatever was not synced is gone**.
//!
//! With *tear* enabled a crash is a little kinder, and nastier: a seed-chosen prefix of the
//! file's unsynced changes survives on top of the durable image (the page cache wrote some of
//! them back before power was lost), and the last surviving change, if it is a write, may survive
//! only in part: the first `k` bytes of it, `k` chosen from the seed. That partial write is a
//! *torn write*: the bytes before the tear are new, the bytes after it are whatever the durable
//! image held there (zeros past its end).
//!
//! Names (for [`SimVfs`]) follow the same rule at directory level: creating or removing a file or
//! directory changes the current namespace; the change is durable only once the parent directory
//! is synced (`sync_dir`). After a crash an unsynced new name is gone and an unsynced removal is
//! undone (the file reappears with its durable contents).
//!
//! After a crash the same handle represents the disk after reboot. Handles opened before it carry
//! an older *generation* and every operation on them fails with "stale handle after crash", so a
//! process that "died" cannot scribble on the rebooted disk.
//!
//! # Faults
//!
//! [`FaultKind::DiskFull`] makes operations that need space fail with
//! [`std::io::ErrorKind::StorageFull`] (ENOSPC); [`FaultKind::Io`] makes every operation fail
//! with an EIO-like error. `fail_after(n, kind)` lets `n` more operations succeed first;
//! `set_fault` switches a fault on or off now. A failed operation changes nothing. Faults persist
//! across crashes (a full disk stays full) until cleared. Errors are `io::Error` values; nothing
//! here panics on a fault.
//!
//! Everything is deterministic: ordered maps only, no clock, and the only randomness is the seed
//! passed to a crash.

pub mod redb_backend;
pub mod vfs;

pub use redb_backend::{SimRedbBackend, SimRedbDisk};
pub use vfs::{SimFile, SimVfs};

use std::io;

/// Which fault an injected failure models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No space left (ENOSPC): operations that allocate space fail.
    DiskFull,
    /// Device error (EIO): every operation fails.
    Io,
    /// Directory listings are refused (EACCES, as for a directory whose read permission was
    /// taken away); everything else works, so a missing directory is not what it looks like.
    Unlistable,
}

/// What an operation does, for fault matching and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpClass {
    Read,
    /// Needs space: writes, growing, creating names.
    Write,
    /// Changes data without needing space (truncate, punch, remove).
    Modify,
    Sync,
    /// Metadata queries (len, existence).
    Query,
    /// Listing a directory.
    List,
}

/// Operation counts of a simulated disk, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// All operations attempted, failed ones included.
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub syncs: u64,
    /// Operations that failed because of an injected fault.
    pub faults: u64,
    pub crashes: u64,
    /// Bytes written by `write_at` / `write` (successful calls).
    pub bytes_written: u64,
}

/// Fault injection state plus counters, shared by both disks.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// `Some((n, kind))`: `n` more operations succeed, then `kind` becomes active.
    countdown: Option<(u64, FaultKind)>,
    active: Option<FaultKind>,
    pub(crate) stats: StorageStats,
}

impl Faults {
    pub(crate) fn fail_after(&mut self, ops: u64, kind: FaultKind) {
        self.countdown = Some((ops, kind));
    }

    pub(crate) fn set(&mut self, kind: Option<FaultKind>) {
        self.countdown = None;
        self.active = kind;
    }

    /// Counts one operation and returns the injected error, if it fails.
    pub(crate) fn check(&mut self, class: OpClass) -> io::Result<()> {
        self.stats.ops += 1;
        match class {
            OpClass::Read => self.stats.reads += 1,
            OpClass::Write | OpClass::Modify => self.stats.writes += 1,
            OpClass::Sync => self.stats.syncs += 1,
            OpClass::Query | OpClass::List => {}
        }
        if let Some((left, kind)) = self.countdown {
            if left == 0 {
                self.countdown = None;
                self.active = Some(kind);
            } else {
                self.countdown = Some((left - 1, kind));
            }
        }
        let err = match self.active {
            Some(FaultKind::Io) => Some(io::Error::other("simulated I/O error (EIO)")),
            Some(FaultKind::DiskFull) if class == OpClass::Write => Some(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated disk full (ENOSPC)",
            )),
            Some(FaultKind::Unlistable) if class == OpClass::List => Some(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "simulated permission denied on a directory listing (EACCES)",
            )),
            _ => None,
        };
        match err {
            Some(e) => {
                self.stats.faults += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// The error returned by operations on a handle from before a crash.
pub(crate) fn stale_handle() -> io::Error {
    io::Error::other("stale handle after crash")
}

/// splitmix64: the only randomness, always seeded by the caller.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub(crate) fn upto(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

/// One unsynced change to a file image.
#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Punch { offset: u64, len: u64 },
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

fn apply_write(buf: &mut Vec<u8>, offset: u64, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        // POSIX: an empty write does not extend the file.
        return Ok(());
    }
    let start = to_usize(offset)?;
    let end = start
        .checked_add(data.len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past end of range"))?;
    if end > buf.len() {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
    Ok(())
}

fn apply_punch(buf: &mut [u8], offset: u64, len: u64) {
    let len_now = buf.len() as u64;
    let start = offset.min(len_now) as usize;
    let end = offset.saturating_add(len).min(len_now) as usize;
    buf[start..end].fill(0);
}

fn apply(buf: &mut Vec<u8>, change: &Change) -> io::Result<()> {
    match change {
        Change::Write { offset, data } => apply_write(buf, *offset, data)?,
        Change::SetLen(len) => buf.resize(to_usize(*len)?, 0),
        Change::Punch { offset, len } => apply_punch(buf, *offset, *len),
    }
    Ok(())
}

/// A file's current and durable images plus the log of unsynced changes. See the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Change>,
    /// Opened as a log (`Vfs::open_log`): a sync after appends leaves the disk holding zero
    /// padding up to the next `DIRECT_ALIGN` boundary past the logical end, as direct I/O does.
    pub(crate) log: bool,
}

impl Image {
    pub(crate) fn current(&self) -> &[u8] {
        &self.current
    }

    pub(crate) fn durable(&self) -> &[u8] {
        &self.durable
    }

    pub(crate) fn unsynced_changes(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = to_usize(offset)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.current.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn change(&mut self, change: Change) -> io::Result<()> {
        apply(&mut self.current, &change)?;
        self.pending.push(change);
        Ok(())
    }

    pub(crate) fn write(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.change(Change::Write {
            offset,
            data: data.to_vec(),
        })
    }

    pub(crate) fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.change(Change::SetLen(len))
    }

    pub(crate) fn punch(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.change(Change::Punch { offset, len })
    }

    pub(crate) fn sync(&mut self) {
        self.durable.clone_from(&self.current);
        // A direct-I/O log writes each append padded to the alignment; a cut (`set_len`) after
        // the last append leaves the file exact.
        let appended = self
            .pending
            .iter()
            .rev()
            .find(|c| !matches!(c, Change::Punch { .. }))
            .is_some_and(|c| matches!(c, Change::Write { .. }));
        if self.log && appended {
            let align = haven_runtime::vfs::DIRECT_ALIGN;
            self.durable
                .resize(self.durable.len().div_ceil(align) * align, 0);
        }
        self.pending.clear();
    }

    /// Replaces `current` by what a crash leaves: the durable image, plus (with `tear`) a
    /// rng-chosen prefix of the unsynced changes whose last write may be cut short.
    pub(crate) fn crash(&mut self, rng: &mut SplitMix, tear: bool) {
        let mut image = std::mem::take(&mut self.durable);
        let pending = std::mem::take(&mut self.pending);
        if tear && !pending.is_empty() {
            let keep = rng.upto(pending.len() as u64) as usize;
            for change in &pending[..keep] {
                // Every change already applied once to `current`, so it cannot fail now.
                let _ = apply(&mut image, change);
            }
            if let Some(Change::Write { offset, data }) = pending.get(keep) {
                let cut = rng.upto(data.len() as u64) as usize;
                let _ = apply_write(&mut image, *offset, &data[..cut]);
            }
        }
        self.durable = image.clone();
        self.current = image;
    }
}
