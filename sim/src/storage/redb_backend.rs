//! A crash-faithful [`redb::StorageBackend`] for the metadata store of a simulated host.
//!
//! redb's `InMemoryBackend` vanishes with the `Database`, so it cannot model a power loss and a
//! restart. Here the disk ([`SimRedbDisk`]) outlives any `Database`: it keeps a `current` image
//! (what redb reads back) and a `durable` image (what a crash leaves), like redb's own
//! `tests/crash_consistency.rs`.
//!
//! What survives a crash:
//!
//! * [`SimRedbDisk::crash`]: exactly the bytes and length as of the last `sync_data`. Every
//!   write and `set_len` after it is dropped. A commit with `Durability::Immediate` has synced
//!   when `commit` returns, so it survives; commits with `Durability::None` need not.
//! * [`SimRedbDisk::crash_torn`]: additionally, a seed-chosen prefix of the unsynced writes
//!   survives in order and the last surviving write may be *torn* (only its first `k` bytes
//!   land, the rest of the range keeps its durable contents). redb must still open and recover
//!   the last durable commit, since its commit slots are checksummed.
//!
//! After a crash the disk represents the rebooted machine: backends handed out before it are
//! stale and fail every call with "stale handle after crash" (so the `Database` of the "dead"
//! process cannot write to the rebooted disk, even while it is being dropped). Open a new
//! `Database` with [`SimRedbDisk::backend`].
//!
//! Fault injection works as for [`super::SimVfs`]: `DiskFull` fails writes and growing
//! `set_len`; `Io` fails everything. redb sees these as storage errors, never panics.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use super::{stale_handle, FaultKind, Faults, Image, OpClass, SplitMix, StorageStats};

#[derive(Debug, Default)]
struct DiskState {
    generation: u64,
    image: Image,
    faults: Faults,
}

fn lock(state: &Mutex<DiskState>) -> MutexGuard<'_, DiskState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The simulated disk holding one redb file; clones share it. Survives `Database` drops.
#[derive(Debug, Clone, Default)]
pub struct SimRedbDisk {
    state: Arc<Mutex<DiskState>>,
}

impl SimRedbDisk {
    /// An empty disk (redb creates a fresh database on it).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        lock(&self.state)
    }

    /// A backend for `Database::builder().create_with_backend(..)`, valid until the next crash.
    pub fn backend(&self) -> SimRedbBackend {
        SimRedbBackend {
            state: Arc::clone(&self.state),
            generation: self.lock().generation,
        }
    }

    /// Power loss and reboot: everything not synced is dropped; older backends become stale.
    pub fn crash(&self) {
        self.crash_inner(0, false);
    }

    /// Like [`SimRedbDisk::crash`], but a seed-chosen prefix of the unsynced writes survives and
    /// the last of them may be torn (see the module docs).
    pub fn crash_torn(&self, rng_seed: u64) {
        self.crash_inner(rng_seed, true);
    }

    fn crash_inner(&self, rng_seed: u64, tear: bool) {
        let mut state = self.lock();
        state.generation += 1;
        state.faults.stats.crashes += 1;
        state.image.crash(&mut SplitMix::new(rng_seed), tear);
    }

    /// Lets `ops` more operations succeed, then injects `kind` until [`SimRedbDisk::set_fault`].
    pub fn fail_after(&self, ops: u64, kind: FaultKind) {
        self.lock().faults.fail_after(ops, kind);
    }

    /// Injects `kind` from now on (`None` heals the disk and cancels `fail_after`).
    pub fn set_fault(&self, kind: Option<FaultKind>) {
        self.lock().faults.set(kind);
    }

    /// Operation counts so far.
    pub fn stats(&self) -> StorageStats {
        self.lock().faults.stats
    }

    /// Number of crashes so far.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Length of the image reads see.
    pub fn current_len(&self) -> u64 {
        self.lock().image.current().len() as u64
    }

    /// Length of the image a crash would leave (without tearing).
    pub fn durable_len(&self) -> u64 {
        self.lock().image.durable().len() as u64
    }

    /// Unsynced writes and length changes (0 means a crash now loses nothing).
    pub fn unsynced_changes(&self) -> usize {
        self.lock().image.unsynced_changes()
    }
}

/// One `Database`'s view of a [`SimRedbDisk`]; stale after the disk crashes.
#[derive(Debug)]
pub struct SimRedbBackend {
    state: Arc<Mutex<DiskState>>,
    generation: u64,
}

impl SimRedbBackend {
    /// Runs `op` on the image after the staleness and fault checks.
    fn with<T>(
        &self,
        class: OpClass,
        op: impl FnOnce(&mut Image) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = lock(&self.state);
        if state.generation != self.generation {
            return Err(stale_handle());
        }
        state.faults.check(class)?;
        op(&mut state.image)
    }

    /// The disk this backend belongs to.
    pub fn disk(&self) -> SimRedbDisk {
        SimRedbDisk {
            state: Arc::clone(&self.state),
        }
    }
}

impl StorageBackend for SimRedbBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.with(OpClass::Query, |img| Ok(img.current().len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.with(OpClass::Read, |img| img.read(out, offset))
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let grows = {
            let state = lock(&self.state);
            len > state.image.current().len() as u64
        };
        let class = if grows {
            OpClass::Write
        } else {
            OpClass::Modify
        };
        self.with(class, |img| img.set_len(len))
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.with(OpClass::Sync, |img| {
            img.sync();
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.with(OpClass::Write, |img| img.write(data, offset))?;
        lock(&self.state).faults.stats.bytes_written += data.len() as u64;
        Ok(())
    }
}
