//! [`FileExport`]: an NBD export over a raw file or block device.
//!
//! I/O is positional (`pread`/`pwrite`), so concurrent requests need no shared cursor or lock.
//! It runs inline inside the returned future: the transmission layer spawns each future on the
//! multi-thread runtime, and page-cache I/O is short enough that this is the simple, fast
//! choice for tests and plain images.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{ExportError, NbdExport};

/// Chunk used when zeroes must be written out explicitly (bounds the temporary buffer).
const ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// A raw image file served as an NBD export. Size is fixed at open time.
pub struct FileExport {
    file: Arc<File>,
    size: u64,
    read_only: bool,
}

impl FileExport {
    /// Open `path` (read-write unless `read_only`).
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    /// Wrap an already open file. The size comes from seeking to the end, which, unlike
    /// metadata, also works for block devices.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let size = (&file).seek(SeekFrom::End(0))?;
        Ok(Self {
            file: Arc::new(file),
            size,
            read_only,
        })
    }
}

impl NbdExport for FileExport {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<u8>, ExportError>> + Send + 'static {
        let file = self.file.clone();
        async move {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset).map_err(export_error)?;
            Ok(buf)
        }
    }

    fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send + 'static {
        let file = self.file.clone();
        async move {
            file.write_all_at(&data, offset).map_err(export_error)?;
            sync_if(&file, fua)
        }
    }

    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send + 'static {
        let file = self.file.clone();
        async move {
            zero_range(&file, offset, u64::from(len), true).map_err(export_error)?;
            sync_if(&file, fua)
        }
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send + 'static {
        let file = self.file.clone();
        async move {
            zero_range(&file, offset, u64::from(len), !no_hole).map_err(export_error)?;
            sync_if(&file, fua)
        }
    }

    fn flush(&self) -> impl Future<Output = Result<(), ExportError>> + Send + 'static {
        let file = self.file.clone();
        async move { file.sync_data().map_err(export_error) }
    }
}

fn sync_if(file: &File, fua: bool) -> Result<(), ExportError> {
    if fua {
        file.sync_data().map_err(export_error)?;
    }
    Ok(())
}

/// Make `[offset, offset+len)` read as zeroes: punch a hole when allowed (cheap, frees space),
/// otherwise, or when the filesystem cannot punch, write zeroes.
fn zero_range(file: &File, offset: u64, len: u64, allow_hole: bool) -> io::Result<()> {
    if allow_hole && punch_hole(file, offset, len).is_ok() {
        return Ok(());
    }
    let chunk = vec![0u8; ZERO_FILL_CHUNK_BYTES.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let offset = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let len = libc::off_t::try_from(len).map_err(|_| invalid())?;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`, alive here.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Out-of-space conditions get their own NBD errno (ENOSPC), as the spec asks for EDQUOT/EFBIG.
fn export_error(err: io::Error) -> ExportError {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ExportError::NoSpace,
        _ => ExportError::Io(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_export_roundtrip_and_zeroing() {
        let tmp = tempfile::NamedTempFile::new().expect("tempfile");
        tmp.as_file().set_len(1 << 20).expect("set_len");
        let export = FileExport::open(tmp.path(), false).expect("open");
        assert_eq!(export.size_bytes(), 1 << 20);

        export
            .write(100, vec![0xab; 5000], true)
            .await
            .expect("write");
        assert_eq!(
            export.read(100, 5000).await.expect("read"),
            vec![0xab; 5000]
        );

        export.trim(100, 1000, false).await.expect("trim");
        export
            .write_zeroes(1100, 1000, false, true)
            .await
            .expect("zeroes no_hole");
        export
            .write_zeroes(2100, 1000, true, false)
            .await
            .expect("zeroes");
        let data = export.read(100, 5000).await.expect("read");
        assert!(data[..3000].iter().all(|&b| b == 0));
        assert!(data[3000..].iter().all(|&b| b == 0xab));
        export.flush().await.expect("flush");
    }
}
