//! A small file-system abstraction so the same store code can run on real
//! files ([`StdVfs`]) and, in simulation, on a crash-faithful simulated disk.
//!
//! The trait is deliberately narrow: positional reads and writes, length
//! control, hole punching and explicit durability points. It mirrors POSIX
//! semantics that the stores rely on:
//!
//! * **Nothing is durable until a sync returns.** A `write_at` or `set_len`
//!   may be lost (wholly or partly, in any order) on a crash until
//!   [`VFile::sync_data`] returns for that file.
//! * **Names are not durable until the directory is synced.** A file created
//!   by [`Vfs::open`] with `create = true`, or removed by [`Vfs::remove_file`],
//!   may reappear/disappear after a crash until [`Vfs::sync_dir`] returns for
//!   its parent directory.
//!
//! A simulated implementation is expected to model exactly these rules, so
//! code that is correct on it is correct on a real disk.

mod closer;
mod direct;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use direct::DIRECT_ALIGN;

/// A file system: the directory and naming operations.
pub trait Vfs: Send + Sync + 'static {
    /// Open file handle type.
    type File: VFile;

    /// Creates `path` and all missing parents (not synced; see [`Vfs::sync_dir`]).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Opens `path` for reading and writing, creating it (empty) if `create`
    /// is set and it does not exist. Fails with `NotFound` otherwise.
    fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Opens a file that is only appended to (`write_at` at its current length; `set_len` to
    /// cut it) and read back, like [`Vfs::open`]. The implementation may bypass the page cache.
    /// After a crash or a reopen, up to [`DIRECT_ALIGN`]` - 1` zero bytes may follow the last
    /// append (alignment padding); readers must treat trailing zeros as the end.
    fn open_log(&self, path: &Path, create: bool) -> io::Result<Self::File> {
        self.open(path, create)
    }
    /// Removes a file (not durable until [`Vfs::sync_dir`] of its parent).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Closes an open file whose name was removed. Closing the last reference frees the file's
    /// blocks, which can take tens of milliseconds for a large file (longer with online discard),
    /// so an implementation may finish it in the background.
    fn retire(&self, file: Self::File) {
        drop(file);
    }
    /// Lists the entries of a directory as full paths, sorted by name.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Makes created/removed names in directory `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The absolute path of an existing file with symbolic links resolved, to name it to others
    /// (a simulated file system has no links: the path as given).
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }
}

/// An open file with positional I/O; all methods take `&self` so a file can
/// be read concurrently from several threads.
// `len` is an I/O query, not a container size, so `is_empty` would mislead.
#[allow(clippy::len_without_is_empty)]
pub trait VFile: Send + Sync + 'static {
    /// Fills all of `buf` from `offset`; `UnexpectedEof` if the file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `parts` one after the other from `offset`, as one `write_at` of their
    /// concatenation would.
    fn write_parts_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut pos = offset;
        for p in parts {
            self.write_at(p, pos)?;
            pos += p.len() as u64;
        }
        Ok(())
    }
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes all written data (and the length) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// The first offset at or after `offset` that may hold data, skipping holes (`SEEK_DATA`);
    /// `None` when only holes (or the end) follow. Without hole information, `Some(offset)`.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }
    /// Deallocates `[offset, offset+len)` so it reads as zeros afterwards,
    /// without changing the file length. Falls back to writing zeros where
    /// the file system cannot punch holes. Not durable until `sync_data`.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// Real files via `std::fs`.
#[derive(Clone, Default, Debug)]
pub struct StdVfs;

/// A real file opened by [`StdVfs`].
#[derive(Debug)]
pub struct StdFile {
    file: File,
    /// Set for files opened with [`Vfs::open_log`] where direct I/O is available.
    direct: Option<direct::DirectAppend>,
}

impl Vfs for StdVfs {
    type File = StdFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<StdFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(StdFile { file, direct: None })
    }

    fn open_log(&self, path: &Path, create: bool) -> io::Result<StdFile> {
        let mut file = self.open(path, create)?;
        match direct_or_buffered(open_direct(path))? {
            Some(d) => file.direct = Some(direct::DirectAppend::new(d, &file.file)?),
            None => {
                tracing::debug!(path = %path.display(), "no direct I/O here; appends are buffered")
            }
        }
        Ok(file)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn retire(&self, file: StdFile) {
        closer::close_later(file);
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            out.push(entry?.path());
        }
        // read_dir order is file-system dependent; callers want name order.
        out.sort();
        Ok(out)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // On Linux a directory opened read-only can be fsynced; this is the
        // only way to make a new or removed name durable.
        File::open(path)?.sync_all()
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// The outcome of opening a log for direct I/O: the file, or None where the file system refuses
/// `O_DIRECT` (EINVAL: some network file systems, tmpfs before Linux 6.6), or the error.
fn direct_or_buffered(opened: io::Result<File>) -> io::Result<Option<File>> {
    match opened {
        Ok(d) => Ok(Some(d)),
        Err(e) if refuses_direct(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `err` is the file system refusing direct I/O (at open or at a direct write), which
/// means buffered I/O instead; any other error is a real one.
fn refuses_direct(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL)
}

/// A failed hole punch: `Ok(false)` where the file system cannot punch (zeros are written
/// instead), or the error.
fn punch_failed(err: io::Error) -> io::Result<bool> {
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(false),
        _ => Err(err),
    }
}

/// A failed `SEEK_DATA` from `offset`: `None` when only holes follow (ENXIO), `Some(offset)`
/// where the file system keeps no hole information (everything may be data), or the error.
fn seek_data_failed(err: io::Error, offset: u64) -> io::Result<Option<u64>> {
    match err.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(offset)),
        _ => Err(err),
    }
}

/// Writes `parts` one after the other from `offset` through the page cache; returns the offset
/// past the last byte.
fn write_all_parts_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<u64> {
    let mut pos = offset;
    for p in parts {
        file.write_all_at(p, pos)?;
        pos += p.len() as u64;
    }
    Ok(pos)
}

/// Largest zero buffer written at once by the punch-hole fallback.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

impl StdFile {
    /// Writes zeros over `[offset, offset+len)`, clipped to the current
    /// length so the fallback keeps the "length unchanged" contract.
    fn zero_fill(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.len()?);
        if offset >= end {
            return Ok(());
        }
        let chunk = vec![0u8; (end - offset).min(ZERO_FILL_CHUNK_BYTES) as usize];
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(chunk.len() as u64) as usize;
            self.file.write_all_at(&chunk[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`; `Ok(false)` if unsupported here.
    #[cfg(target_os = "linux")]
    fn try_punch(&self, offset: u64, len: u64) -> io::Result<bool> {
        use std::os::unix::io::AsRawFd;
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: plain syscall on a file descriptor we own for the call's duration.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, n) };
        if rc == 0 {
            return Ok(true);
        }
        punch_failed(io::Error::last_os_error())
    }

    #[cfg(not(target_os = "linux"))]
    fn try_punch(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
}

impl VFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_parts_at(&[buf], offset)
    }

    fn write_parts_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        match &self.direct {
            Some(d) => d.append(&self.file, parts, offset),
            None => write_all_parts_at(&self.file, parts, offset).map(drop),
        }
    }

    fn len(&self) -> io::Result<u64> {
        match &self.direct {
            Some(d) => Ok(d.len()),
            None => Ok(self.file.metadata()?.len()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match &self.direct {
            Some(d) => d.set_len(&self.file, len),
            None => self.file.set_len(len),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    #[cfg(target_os = "linux")]
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        use std::os::unix::io::AsRawFd;
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Ok(None);
        };
        // SAFETY: plain syscall on a file descriptor we own for the call's duration. The file
        // position it moves is not used: every read and write here is positional.
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if rc >= 0 {
            return Ok(Some(rc as u64));
        }
        seek_data_failed(io::Error::last_os_error(), offset)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.direct.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "append-only (log) files cannot punch holes",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        if self.try_punch(offset, len)? {
            return Ok(());
        }
        self.zero_fill(offset, len)
    }
}

/// True if every byte of `buf` is zero. Compares aligned `u64` words so it
/// runs at memory speed on large (block-sized) buffers.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u64, and align_to guarantees the
    // middle slice is correctly aligned.
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Creates `path` and its missing ancestors and makes the new names durable: each created
/// directory's parent is synced, so a crash cannot make a store's directory (and so everything
/// in it) vanish.
pub fn create_dir_all_durable<V: Vfs>(vfs: &V, path: &Path) -> io::Result<()> {
    vfs.create_dir_all(path)?;
    let mut p = path;
    while let Some(parent) = p.parent() {
        if parent.as_os_str().is_empty() {
            break;
        }
        vfs.sync_dir(parent)?;
        p = parent;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_all_alignments() {
        let buf = vec![0u8; 257];
        for start in 0..9 {
            for end in start..buf.len() {
                assert!(is_zero(&buf[start..end]));
            }
        }
        assert!(is_zero(&[]));
        for pos in 0..64 {
            let mut b = [0u8; 64];
            b[pos] = 1;
            for start in 0..8 {
                assert_eq!(is_zero(&b[start..]), pos < start, "pos {pos} start {start}");
            }
        }
    }

    #[test]
    fn read_write_len_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = StdVfs;
        let sub = dir.path().join("a/b");
        vfs.create_dir_all(&sub).unwrap();
        assert!(vfs.open(&sub.join("x"), false).is_err());
        let f = vfs.open(&sub.join("x"), true).unwrap();
        f.write_at(b"hello", 3).unwrap();
        assert_eq!(f.len().unwrap(), 8);
        let mut buf = [0u8; 8];
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"\0\0\0hello");
        let err = f.read_at(&mut buf, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        f.set_len(4).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.len().unwrap(), 4);
        vfs.open(&sub.join("a"), true).unwrap();
        vfs.sync_dir(&sub).unwrap();
        let names = vfs.list_dir(&sub).unwrap();
        assert_eq!(names, vec![sub.join("a"), sub.join("x")]);
        vfs.remove_file(&sub.join("a")).unwrap();
        assert_eq!(vfs.list_dir(&sub).unwrap(), vec![sub.join("x")]);
    }

    #[test]
    fn punch_hole_reads_zero_and_keeps_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdVfs.open(&dir.path().join("f"), true).unwrap();
        let data = vec![0xABu8; 3 * 4096];
        f.write_at(&data, 0).unwrap();
        // Unaligned range: the file system zeroes partial blocks itself.
        f.punch_hole(100, 5000).unwrap();
        assert_eq!(f.len().unwrap(), data.len() as u64);
        let mut buf = vec![0u8; data.len()];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 0xAB));
        assert!(is_zero(&buf[100..5100]));
        assert!(buf[5100..].iter().all(|&b| b == 0xAB));
        // Past the end: no error, length unchanged.
        f.punch_hole(data.len() as u64, 4096).unwrap();
        assert_eq!(f.len().unwrap(), data.len() as u64);
    }

    #[test]
    fn zero_fill_fallback_matches_punch() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdVfs.open(&dir.path().join("f"), true).unwrap();
        f.write_at(&[7u8; 1000], 0).unwrap();
        f.zero_fill(10, 2000).unwrap();
        assert_eq!(f.len().unwrap(), 1000);
        let mut buf = vec![0u8; 1000];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..10].iter().all(|&b| b == 7));
        assert!(is_zero(&buf[10..]));
    }

    /// Appends of several parts at growing offsets, read back, then read again after a reopen.
    fn log_round_trip(dir: &Path) {
        let path = dir.join("log");
        let f = StdVfs.open_log(&path, true).unwrap();
        let a = vec![1u8; 5000];
        let b = vec![2u8; 3000];
        f.write_parts_at(&[&a, &b, b"tail"], 0).unwrap();
        f.write_parts_at(&[b"next"], 8004).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.len().unwrap(), 8008);
        let mut want = a.clone();
        want.extend(&b);
        want.extend(b"tailnext");
        let mut got = vec![0u8; want.len()];
        f.read_at(&mut got, 0).unwrap();
        assert_eq!(got, want, "{}", dir.display());
        drop(f);
        let f = StdVfs.open_log(&path, false).unwrap();
        let mut again = vec![0u8; want.len()];
        f.read_at(&mut again, 0).unwrap();
        assert_eq!(again, want, "after a reopen, {}", dir.display());
    }

    /// A log opens with direct I/O where the file system allows it and round-trips.
    #[test]
    fn logs_round_trip_with_direct_io() {
        let disk = tempfile::tempdir().unwrap();
        log_round_trip(disk.path());
        let f = StdVfs.open_log(&disk.path().join("log"), false).unwrap();
        assert!(
            f.direct.is_some(),
            "the temporary directory allows O_DIRECT"
        );
    }

    /// EINVAL (the file system refuses `O_DIRECT`) means buffered appends; any other error is
    /// the caller's. (No file system here refuses it: tmpfs allows it since Linux 6.6.)
    #[test]
    fn only_einval_falls_back_to_buffered_appends() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        assert!(direct_or_buffered(Ok(file)).unwrap().is_some());
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(direct_or_buffered(Err(einval)).unwrap().is_none());
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        let err = direct_or_buffered(Err(eacces)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }

    /// The errno decisions of the calls that a file system may not support (none here refuses
    /// them, so only these tests reach the fallbacks).
    #[test]
    fn unsupported_calls_fall_back_and_real_errors_stay_errors() {
        let e = io::Error::from_raw_os_error;
        assert!(refuses_direct(&e(libc::EINVAL)));
        assert!(!refuses_direct(&e(libc::EIO)));
        for errno in [libc::EOPNOTSUPP, libc::ENOSYS, libc::EINVAL] {
            assert!(!punch_failed(e(errno)).unwrap(), "errno {errno}");
        }
        assert_eq!(
            punch_failed(e(libc::EIO)).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(seek_data_failed(e(libc::ENXIO), 77).unwrap(), None);
        for errno in [libc::EINVAL, libc::EOPNOTSUPP] {
            assert_eq!(
                seek_data_failed(e(errno), 77).unwrap(),
                Some(77),
                "errno {errno}"
            );
        }
        let err = seek_data_failed(e(libc::EBADF), 77).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    /// The zero-fill fallback over more than one of its chunks, from inside the file past its
    /// end: every byte in range zero, the bytes around it kept, the length unchanged.
    #[test]
    fn zero_fill_spans_chunks_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdVfs.open(&dir.path().join("f"), true).unwrap();
        let len = 3 * ZERO_FILL_CHUNK_BYTES as usize + 100;
        f.write_at(&vec![5u8; len], 0).unwrap();
        let start = ZERO_FILL_CHUNK_BYTES / 2;
        f.zero_fill(start, 2 * ZERO_FILL_CHUNK_BYTES + 7).unwrap();
        let mut buf = vec![0u8; len];
        f.read_at(&mut buf, 0).unwrap();
        let end = (start + 2 * ZERO_FILL_CHUNK_BYTES + 7) as usize;
        assert!(buf[..start as usize].iter().all(|&b| b == 5));
        assert!(is_zero(&buf[start as usize..end]));
        assert!(buf[end..].iter().all(|&b| b == 5));
        f.zero_fill(len as u64 - 10, 1 << 30).unwrap();
        assert_eq!(f.len().unwrap(), len as u64);
        f.read_at(&mut buf, 0).unwrap();
        assert!(is_zero(&buf[len - 10..]) && buf[len - 11] == 5);
        f.zero_fill(len as u64 + 5, 10).unwrap();
        assert_eq!(
            f.len().unwrap(),
            len as u64,
            "past the end: nothing written"
        );
        // From the first byte, over more than a chunk.
        f.zero_fill(0, ZERO_FILL_CHUNK_BYTES + 1).unwrap();
        f.read_at(&mut buf, 0).unwrap();
        assert!(is_zero(&buf[..end]));
    }

    #[test]
    fn buffered_writes_of_several_parts_follow_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdVfs.open(&dir.path().join("f"), true).unwrap();
        f.write_parts_at(&[b"abc", b"de", b"fghi"], 10).unwrap();
        let mut buf = [0u8; 9];
        f.read_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"abcdefghi");
        assert_eq!(f.len().unwrap(), 19);
    }

    /// `next_data` skips a hole and says when only holes follow (ext4 and tmpfs report holes).
    #[test]
    fn next_data_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdVfs.open(&dir.path().join("sparse"), true).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_at(&[7u8; 4096], 0).unwrap();
        f.write_at(&[9u8; 4096], 4 << 20).unwrap();
        assert_eq!(f.next_data(0).unwrap(), Some(0));
        assert_eq!(f.next_data(1 << 20).unwrap(), Some(4 << 20));
        assert_eq!(f.next_data((4 << 20) + 100).unwrap(), Some((4 << 20) + 100));
        assert_eq!(f.next_data(5 << 20).unwrap(), None, "only a hole follows");
        assert_eq!(f.next_data(u64::MAX).unwrap(), None);
    }

    #[test]
    fn canonicalize_resolves_links_to_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        StdVfs.open(&file, true).unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let real = StdVfs.canonicalize(&link).unwrap();
        assert!(real.is_absolute());
        assert_eq!(real, std::fs::canonicalize(&file).unwrap());
        assert_ne!(real, link);
        assert!(StdVfs.canonicalize(&dir.path().join("missing")).is_err());
    }
}
