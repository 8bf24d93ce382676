//! [`SimVfs`]: an in-memory, crash-faithful [`Vfs`] for one simulated host.
//!
//! What survives [`SimVfs::crash`]:
//!
//! * **File data** as of the last `sync_data` of that file. Unsynced writes, truncates and hole
//!   punches are dropped. With `tear`, a seed-chosen prefix of the file's unsynced changes
//!   survives in order, and the last surviving write may be *torn*: only its first `k` bytes
//!   reach the disk (`k` from the seed), the rest keep their old (durable) contents.
//! * **Log files** (opened with `open_log`) keep, after a sync that followed appends, zero
//!   padding up to the next 4 KiB past their end on the durable image, as direct I/O leaves
//!   them; a crash shows it (a clean run never does).
//! * **Names** (files and directories) as of the last `sync_dir` of their parent. A file created
//!   but not dir-synced disappears; a file removed but not dir-synced reappears with its durable
//!   contents. A name whose parent directory itself is not durable is lost with it, so a host
//!   should create its directory tree with [`SimVfs::create_dir_all_synced`] (or sync every
//!   level). The root (`/`, or the empty path for relative names) always exists.
//!
//! Handles ([`SimFile`]) opened before a crash are stale afterwards: every operation on them
//! fails with "stale handle after crash". An unlinked file stays readable and writable through
//! handles that are still open, as on POSIX, until the next crash.
//!
//! Faults (see [`FaultKind`]): `DiskFull` fails writes, growing `set_len`, file creation and
//! `create_dir_all` with `StorageFull`; `Io` fails every operation; `Unlistable` fails only directory
//! listings (`PermissionDenied`). A power cut can be armed for
//! the n-th file sync (`cut_power_at_sync`): that sync crashes the disk instead. Checkers read
//! what a crash would leave without causing one (`durable_copy`), or the current state
//! (`current_copy`), and may watch removals (`on_remove`). See the parent module for the shared
//! model.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use haven_runtime::vfs::{VFile, Vfs};

use super::{stale_handle, FaultKind, Faults, Image, OpClass, SplitMix, StorageStats};

/// Inode number: identifies file contents independently of names.
type Ino = u64;

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash; handles from older generations are stale.
    generation: u64,
    next_ino: Ino,
    inodes: BTreeMap<Ino, Image>,
    names: BTreeMap<PathBuf, Ino>,
    durable_names: BTreeMap<PathBuf, Ino>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    faults: Faults,
    /// `Some((n, seed))`: the `n`-th file sync from the arming loses power instead (see
    /// [`SimVfs::cut_power_at_sync`]).
    power_cut: Option<(u64, u64)>,
    /// Set when an armed power cut happened; taken by [`SimVfs::take_power_cut`].
    power_cut_fired: bool,
}

/// True for the root of the namespace, which always exists.
fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path.parent().is_none()
}

/// Parent directory of `path`, `None` for the root.
fn parent_of(path: &Path) -> Option<&Path> {
    if is_root(path) {
        None
    } else {
        path.parent()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl State {
    fn dir_exists(&self, path: &Path) -> bool {
        is_root(path) || self.dirs.contains(path)
    }

    fn image(&mut self, ino: Ino, generation: u64) -> io::Result<&mut Image> {
        if generation != self.generation {
            return Err(stale_handle());
        }
        self.inodes.get_mut(&ino).ok_or_else(stale_handle)
    }

    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        let missing: Vec<PathBuf> = path
            .ancestors()
            .filter(|p| !is_root(p) && !self.dirs.contains(*p))
            .map(Path::to_path_buf)
            .collect();
        if let Some(file) = missing.iter().find(|p| self.names.contains_key(*p)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: is a file", file.display()),
            ));
        }
        if !missing.is_empty() {
            self.faults.check(OpClass::Write)?;
        }
        self.dirs.extend(missing);
        Ok(())
    }

    fn open(&mut self, path: &Path, create: bool) -> io::Result<Ino> {
        if self.dirs.contains(path) || is_root(path) {
            self.faults.check(OpClass::Query)?;
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            ));
        }
        if let Some(&ino) = self.names.get(path) {
            self.faults.check(OpClass::Query)?;
            return Ok(ino);
        }
        let parent_ok = parent_of(path).is_some_and(|p| self.dir_exists(p));
        if !create || !parent_ok {
            self.faults.check(OpClass::Query)?;
            return Err(not_found(path));
        }
        self.faults.check(OpClass::Write)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Image::default());
        self.names.insert(path.to_path_buf(), ino);
        Ok(ino)
    }

    fn list_dir(&mut self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.faults.check(OpClass::List)?;
        if !self.dir_exists(path) {
            return Err(not_found(path));
        }
        let in_dir = |p: &&PathBuf| parent_of(p) == Some(path);
        let mut out: Vec<PathBuf> = self.names.keys().filter(in_dir).cloned().collect();
        out.extend(self.dirs.iter().filter(in_dir).cloned());
        out.sort();
        Ok(out)
    }

    /// Makes the current entries of directory `path` durable.
    fn sync_dir(&mut self, path: &Path) -> io::Result<()> {
        self.faults.check(OpClass::Sync)?;
        if !self.dir_exists(path) {
            return Err(not_found(path));
        }
        let in_dir = |p: &Path| parent_of(p) == Some(path);
        self.durable_names.retain(|p, _| !in_dir(p));
        for (p, &ino) in self.names.iter().filter(|(p, _)| in_dir(p)) {
            self.durable_names.insert(p.clone(), ino);
        }
        self.durable_dirs.retain(|p| !in_dir(p));
        let subdirs = self.dirs.iter().filter(|p| in_dir(p)).cloned();
        self.durable_dirs.extend(subdirs.collect::<Vec<_>>());
        Ok(())
    }

    fn crash(&mut self, seed: u64, tear: bool) {
        self.generation += 1;
        self.faults.stats.crashes += 1;
        // Parents sort before their children, so one pass drops whole orphaned subtrees.
        let mut kept = BTreeSet::new();
        for dir in &self.durable_dirs {
            if parent_of(dir).is_some_and(|p| is_root(p) || kept.contains(p)) {
                kept.insert(dir.clone());
            }
        }
        self.durable_names
            .retain(|p, _| parent_of(p).is_some_and(|d| is_root(d) || kept.contains(d)));
        self.durable_dirs = kept;
        self.dirs = self.durable_dirs.clone();
        self.names = self.durable_names.clone();
        let live: BTreeSet<Ino> = self.names.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
        let mut rng = SplitMix::new(seed);
        for image in self.inodes.values_mut() {
            image.crash(&mut rng, tear);
        }
    }

    /// A copy holding only `dir`, its ancestors and what is under it (names, durable names and
    /// their inodes), without faults or an armed power cut.
    fn subtree(&self, dir: &Path) -> State {
        let keep = |p: &Path| p.starts_with(dir) || dir.starts_with(p);
        let names: BTreeMap<PathBuf, Ino> = self
            .names
            .iter()
            .filter(|(p, _)| keep(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let durable_names: BTreeMap<PathBuf, Ino> = self
            .durable_names
            .iter()
            .filter(|(p, _)| keep(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let inodes = self
            .inodes
            .iter()
            .filter(|(i, _)| {
                names
                    .values()
                    .chain(durable_names.values())
                    .any(|n| n == *i)
            })
            .map(|(i, img)| (*i, img.clone()))
            .collect();
        State {
            generation: self.generation,
            next_ino: self.next_ino,
            inodes,
            names,
            durable_names,
            dirs: self.dirs.iter().filter(|p| keep(p)).cloned().collect(),
            durable_dirs: self
                .durable_dirs
                .iter()
                .filter(|p| keep(p))
                .cloned()
                .collect(),
            faults: Faults::default(),
            power_cut: None,
            power_cut_fired: false,
        }
    }

    /// Counts a file sync against an armed power cut; true if this sync is the one that loses
    /// power: everything unsynced is dropped (the last write maybe torn) and every operation
    /// fails from now on, as on a machine without power, until the disk is healed.
    fn power_cut_now(&mut self) -> bool {
        let Some((left, seed)) = self.power_cut else {
            return false;
        };
        if left > 1 {
            self.power_cut = Some((left - 1, seed));
            return false;
        }
        self.power_cut = None;
        self.power_cut_fired = true;
        self.crash(seed, true);
        self.faults.set(Some(FaultKind::Io));
        true
    }
}

/// A crash-faithful in-memory file system; clones share one disk. See the module docs.
#[derive(Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
    remove_hook: Arc<Mutex<Option<RemoveHook>>>,
}

/// Called with a path about to be removed (see [`SimVfs::on_remove`]).
pub type RemoveHook = Arc<dyn Fn(&Path) + Send + Sync>;

impl std::fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVfs")
            .field("state", &self.state)
            .finish()
    }
}

/// A file opened on a [`SimVfs`].
#[derive(Debug)]
pub struct SimFile {
    state: Arc<Mutex<State>>,
    ino: Ino,
    generation: u64,
    path: PathBuf,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere (a failing test) must not turn every later call into a panic.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimVfs {
    /// An empty disk holding only the root directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Power loss and reboot: drops everything not durable (see the module docs). With `tear`,
    /// part of the unsynced changes survive and a write may be torn; `rng_seed` picks how much.
    /// Handles opened before are stale afterwards.
    pub fn crash(&self, rng_seed: u64, tear: bool) {
        self.lock().crash(rng_seed, tear);
    }

    /// Arms a power loss at the `nth` file sync from now (1 = the next): that sync does not
    /// happen; the disk loses everything unsynced and fails every operation until
    /// [`SimVfs::set_fault`]`(None)`. This puts a crash exactly between a write and its fsync,
    /// the moment a durability bug needs. [`SimVfs::take_power_cut`] tells when it happened.
    pub fn cut_power_at_sync(&self, nth: u64, seed: u64) {
        self.lock().power_cut = Some((nth.max(1), seed));
    }

    /// True once after an armed power cut has happened.
    pub fn take_power_cut(&self) -> bool {
        std::mem::take(&mut self.lock().power_cut_fired)
    }

    /// What a power loss now would leave of the files under `dir` (no torn write), as a
    /// separate disk that shares nothing with this one: for checkers that ask what is durable
    /// at a given moment.
    pub fn durable_copy(&self, dir: &Path) -> SimVfs {
        let mut state = self.lock().subtree(dir);
        state.crash(0, false);
        SimVfs {
            state: Arc::new(Mutex::new(state)),
            ..SimVfs::default()
        }
    }

    /// The files under `dir` as they are now (unsynced changes included), as a separate disk:
    /// what the role itself would read now.
    pub fn current_copy(&self, dir: &Path) -> SimVfs {
        let state = self.lock().subtree(dir);
        SimVfs {
            state: Arc::new(Mutex::new(state)),
            ..SimVfs::default()
        }
    }

    /// Calls `hook` with the path of every file about to be removed (before the removal, so
    /// that it can still read the file through [`SimVfs::current_copy`]).
    pub fn on_remove(&self, hook: RemoveHook) {
        *self.remove_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Lets `ops` more operations succeed, then injects `kind` until [`SimVfs::set_fault`].
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

    /// Number of crashes so far (handles carry the generation they were opened in).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Setup helper: creates `path` and its parents and makes every level durable, as a host's
    /// provisioning would. Subject to injected faults.
    pub fn create_dir_all_synced(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.create_dir_all(path)?;
        let levels: Vec<PathBuf> = path.ancestors().map(Path::to_path_buf).collect();
        for level in levels.iter().rev() {
            state.sync_dir(level)?;
        }
        Ok(())
    }

    /// Test helper, no fault injection: the current contents of file `path`, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let ino = state.names.get(path)?;
        Some(state.inodes[ino].current().to_vec())
    }

    /// Test helper: the durable contents of file `path`, if its name is durable.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let ino = state.durable_names.get(path)?;
        Some(state.inodes[ino].durable().to_vec())
    }

    /// Number of unsynced changes across all files (0 means a crash now loses nothing but names).
    pub fn unsynced_changes(&self) -> usize {
        self.lock()
            .inodes
            .values()
            .map(Image::unsynced_changes)
            .sum()
    }
}

impl Vfs for SimVfs {
    type File = SimFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.lock().create_dir_all(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut state = self.lock();
        let ino = state.open(path, create)?;
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
            generation: state.generation,
            path: path.to_path_buf(),
        })
    }

    /// A log file: after a crash its contents may end in alignment padding (see `Image::log`).
    fn open_log(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let file = self.open(path, create)?;
        let mut state = self.lock();
        if let Some(image) = state.inodes.get_mut(&file.ino) {
            image.log = true;
        }
        Ok(file)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let hook = self
            .remove_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(path);
        }
        let mut state = self.lock();
        state.faults.check(OpClass::Modify)?;
        match state.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.lock().list_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.lock().sync_dir(path)
    }
}

impl SimFile {
    /// The path this handle was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on this file's image after the staleness and fault checks.
    fn with<T>(
        &self,
        class: OpClass,
        op: impl FnOnce(&mut Image) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = lock(&self.state);
        state.image(self.ino, self.generation)?;
        state.faults.check(class)?;
        op(state.image(self.ino, self.generation)?)
    }
}

impl VFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(OpClass::Read, |img| img.read(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.image(self.ino, self.generation)?;
        state.faults.check(OpClass::Write)?;
        state.image(self.ino, self.generation)?.write(buf, offset)?;
        state.faults.stats.bytes_written += buf.len() as u64;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.with(OpClass::Query, |img| Ok(img.current().len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let grows = {
            let mut state = lock(&self.state);
            len > state.image(self.ino, self.generation)?.current().len() as u64
        };
        let class = if grows {
            OpClass::Write
        } else {
            OpClass::Modify
        };
        self.with(class, |img| img.set_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.image(self.ino, self.generation)?;
        state.faults.check(OpClass::Sync)?;
        if state.power_cut_now() {
            return Err(io::Error::other("simulated power loss at this fsync"));
        }
        state.image(self.ino, self.generation)?.sync();
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with(OpClass::Modify, |img| {
            if len == 0 {
                return Ok(());
            }
            img.punch(offset, len)
        })
    }
}
