//! Appends that bypass the page cache (`O_DIRECT`), for files that are only ever appended to
//! and read back: the process-server cache and the master-target journal.
//!
//! Why: every byte Haven replicates is written to one of these logs and fsynced. Through the
//! page cache that costs a copy into freshly allocated page-cache memory plus the writeback at
//! every `fdatasync`; on a virtual machine whose host backs guest memory lazily the copy alone
//! runs at a few hundred MB/s. A direct write goes from one reused, aligned buffer to the disk.
//!
//! `O_DIRECT` wants offsets and lengths aligned to [`DIRECT_ALIGN`]. An append at an unaligned
//! end therefore rewrites the file's last partial block (kept in memory, so the rewritten bytes
//! are the ones already on disk) followed by the new bytes, padded with zeros to the next
//! boundary. The padding lies past the logical length: readers see it only after a reopen, as
//! up to `DIRECT_ALIGN - 1` zero bytes after the last append ([`super::Vfs::open_log`] says so).
//! Reads go through a second, ordinary descriptor of the same file (the kernel keeps the page
//! cache coherent with direct writes).
//!
//! A file system that refuses `O_DIRECT` (tmpfs, some network file systems) gets ordinary
//! buffered appends instead: at open, or at the first direct write that fails with `EINVAL`.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Alignment of direct writes: the largest logical block size of common disks.
pub const DIRECT_ALIGN: usize = 4096;
/// Largest direct write; a longer append is written in pieces of this size, which bounds the
/// aligned staging buffer.
pub const DIRECT_CHUNK_BYTES: usize = 8 << 20;

thread_local! {
    /// One staging buffer per thread, shared by every direct file the thread appends to
    /// (a buffer per file would pin megabytes for every sealed segment).
    static STAGE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The append state of a direct file.
#[derive(Debug)]
pub(super) struct DirectAppend {
    direct: File,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Logical length: where the next append goes.
    len: u64,
    /// The bytes of the last, partial block (`len % DIRECT_ALIGN` of them).
    tail: Vec<u8>,
    /// The file system refused a direct write: append through the buffered descriptor.
    buffered: bool,
}

fn round_up(n: usize) -> usize {
    n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

impl DirectAppend {
    /// Wraps `direct` (opened with `O_DIRECT`); `buffered` reads the current last partial block.
    pub(super) fn new(direct: File, buffered: &File) -> io::Result<Self> {
        let len = buffered.metadata()?.len();
        let tail = read_tail(buffered, len)?;
        Ok(DirectAppend {
            direct,
            state: Mutex::new(State {
                len,
                tail,
                buffered: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while appending leaves at worst stale padding past `len`: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn len(&self) -> u64 {
        self.lock().len
    }

    /// Appends `parts` (one after the other) at `offset`, which must be the logical end.
    pub(super) fn append(&self, buffered: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut st = self.lock();
        if offset != st.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "append-only file written at {offset} but its end is {}",
                    st.len
                ),
            ));
        }
        if !st.buffered {
            let written =
                STAGE.with(|stage| self.write_direct(&mut st, &mut stage.borrow_mut(), parts));
            match written {
                Ok(()) => return Ok(()),
                Err(e) if super::refuses_direct(&e) => {
                    tracing::info!("direct I/O refused ({e}); appending through the page cache");
                    st.buffered = true;
                }
                Err(e) => return Err(e),
            }
        }
        st.len = super::write_all_parts_at(buffered, parts, st.len)?;
        Ok(())
    }

    /// Writes the tail block and `parts` in aligned pieces; the state changes only on success.
    fn write_direct(&self, st: &mut State, stage: &mut Vec<u8>, parts: &[&[u8]]) -> io::Result<()> {
        let State { len, tail, .. } = st;
        if stage.is_empty() {
            stage.resize(DIRECT_CHUNK_BYTES + 2 * DIRECT_ALIGN, 0);
        }
        let start = stage.as_ptr().align_offset(DIRECT_ALIGN);
        let window = &mut stage[start..start + DIRECT_CHUNK_BYTES + DIRECT_ALIGN];
        let mut pos = *len - tail.len() as u64;
        let mut carry = tail.len();
        window[..carry].copy_from_slice(tail);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut rest = parts.iter().copied().filter(|p| !p.is_empty());
        let mut part: &[u8] = rest.next().unwrap_or_default();
        loop {
            // Fill the window from the parts, up to one chunk.
            let mut filled = carry;
            while filled < DIRECT_CHUNK_BYTES && !part.is_empty() {
                let take = part.len().min(DIRECT_CHUNK_BYTES - filled);
                window[filled..filled + take].copy_from_slice(&part[..take]);
                filled += take;
                part = &part[take..];
                if part.is_empty() {
                    part = rest.next().unwrap_or_default();
                }
            }
            let padded = round_up(filled);
            window[filled..padded].fill(0);
            self.direct.write_all_at(&window[..padded], pos)?;
            let whole = filled / DIRECT_ALIGN * DIRECT_ALIGN;
            pos += whole as u64;
            // The partial block becomes the start of the next piece.
            window.copy_within(whole..filled, 0);
            carry = filled - whole;
            if part.is_empty() {
                break;
            }
        }
        tail.clear();
        tail.extend_from_slice(&window[..carry]);
        *len += total as u64;
        Ok(())
    }

    /// Truncates (or extends) to `new_len` and reloads the last partial block.
    pub(super) fn set_len(&self, buffered: &File, new_len: u64) -> io::Result<()> {
        let mut st = self.lock();
        buffered.set_len(new_len)?;
        st.tail = read_tail(buffered, new_len)?;
        st.len = new_len;
        Ok(())
    }
}

impl Drop for DirectAppend {
    /// Cuts the alignment padding on a clean close, so that the file's length is its logical
    /// length again (a crash may leave the padding; readers allow for it).
    fn drop(&mut self) {
        let len = self.lock().len;
        if let Err(e) = self.direct.set_len(len) {
            tracing::debug!("cutting the padding of a log file on close: {e}");
        }
    }
}

/// The bytes of `file` from the last block boundary at or before `len` up to `len`.
fn read_tail(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let n = (len % DIRECT_ALIGN as u64) as usize;
    let mut tail = vec![0u8; n];
    file.read_exact_at(&mut tail, len - n as u64)?;
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{StdVfs, VFile, Vfs};

    /// Deterministic bytes that differ at every offset (so misplaced data shows).
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn read_all<F: VFile>(f: &F, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        f.read_at(&mut buf, 0).unwrap();
        buf
    }

    /// Only a file system refusing direct I/O (EINVAL) turns appends buffered: any other error
    /// of a direct write is the caller's, and nothing is written through the page cache.
    #[test]
    fn a_direct_write_error_other_than_einval_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let buffered = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        // A "direct" descriptor that cannot write: EBADF.
        let direct = File::open(&path).unwrap();
        let d = DirectAppend::new(direct, &buffered).unwrap();
        let err = d.append(&buffered, &[b"abc"], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
        assert_eq!(d.len(), 0);
        assert_eq!(
            buffered.metadata().unwrap().len(),
            0,
            "nothing written around it"
        );
    }

    #[test]
    fn appends_of_every_shape_read_back_and_close_to_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // The temporary directory allows O_DIRECT (as `logs_round_trip_with_direct_io` checks).
        let f = StdVfs.open_log(&path, true).unwrap();
        let sizes = [
            1,
            4095,
            1,
            4096,
            100,
            DIRECT_CHUNK_BYTES + 3,
            7,
            2 * DIRECT_CHUNK_BYTES,
            0,
            12_345,
        ];
        let mut want = vec![];
        for (i, n) in sizes.into_iter().enumerate() {
            let a = pattern(i as u64, n / 3);
            let b = pattern(100 + i as u64, n - n / 3);
            f.write_parts_at(&[&a, &[], &b], want.len() as u64).unwrap();
            want.extend_from_slice(&a);
            want.extend_from_slice(&b);
            assert_eq!(f.len().unwrap(), want.len() as u64);
            assert_eq!(read_all(&f, want.len() as u64), want, "after append {i}");
        }
        // Every append went direct: none was misplaced so that the file system refused it and
        // the log fell back to the page cache (which would hide a wrong offset).
        let direct = f
            .direct
            .as_ref()
            .expect("the temporary directory allows O_DIRECT");
        assert!(!direct.lock().buffered, "fell back to buffered appends");
        // Only appends at the end are accepted.
        let err = f.write_at(b"x", 3).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(f.punch_hole(0, 4096).is_err());
        drop(f);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            want,
            "a clean close cuts the padding"
        );
    }

    #[test]
    fn crash_leaves_zero_padding_and_a_cut_resumes_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let f = StdVfs.open_log(&path, true).unwrap();
        if f.direct.is_none() {
            eprintln!("skipped: no O_DIRECT on the temporary directory's file system");
            return;
        }
        let first = pattern(1, 5000);
        f.write_at(&first, 0).unwrap();
        f.sync_data().unwrap();
        // A crash: no clean close, so the padding to the block boundary stays.
        std::mem::forget(f);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 8192);
        assert_eq!(&on_disk[..5000], &first[..]);
        assert!(on_disk[5000..].iter().all(|&b| b == 0));

        let f = StdVfs.open_log(&path, false).unwrap();
        assert_eq!(f.len().unwrap(), 8192, "a reopen sees the padding");
        f.set_len(5000).unwrap();
        // Cut inside the data too: the rewritten partial block must keep the bytes before it.
        f.set_len(4500).unwrap();
        let second = pattern(2, 9000);
        f.write_at(&second, 4500).unwrap();
        // The reloaded partial block let the append stay direct (a wrong tail would misalign
        // it, and the fallback to buffered appends would hide that).
        assert!(!f.direct.as_ref().unwrap().lock().buffered);
        drop(f);
        let mut want = first[..4500].to_vec();
        want.extend_from_slice(&second);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
