//! The agent's source disk: the raw file or block device the workload's writes land on.

use crate::vfs::{VFile, Vfs};
use haven_core::agent::SourceOp;
use haven_core::batch::BLOCK_BYTES;
use std::path::Path;

pub struct SourceDisk<F: VFile> {
    file: F,
    size_bytes: u64,
}

impl<F: VFile> SourceDisk<F> {
    pub fn open<V: Vfs<File = F>>(
        vfs: &V,
        path: &Path,
        create_size: Option<u64>,
    ) -> std::io::Result<Self> {
        let file = match vfs.open(path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_size.is_some() => {
                let f = vfs.open(path, true)?;
                f.set_len(create_size.unwrap_or_default())?;
                f.sync_data()?;
                if let Some(dir) = path.parent() {
                    vfs.sync_dir(dir)?;
                }
                f
            }
            Err(e) => return Err(e),
        };
        let size_bytes = file.len()?;
        if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: size {size_bytes} is not a positive multiple of {BLOCK_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        Ok(SourceDisk { file, size_bytes })
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_at(buf, offset)
    }

    /// Where data may start at or after `offset` (None: only holes follow), so that a copy
    /// skips the holes of a sparse disk instead of reading zeros.
    pub fn next_data(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.file.next_data(offset)
    }

    /// Carries out a write op and returns the whole blocks it touched as they are now (None when
    /// the op zeroed whole blocks).
    pub fn apply(&self, op: SourceOp) -> std::io::Result<Option<Vec<u8>>> {
        let aligned = op.aligned();
        let (block, blocks) = op.block_span();
        match op {
            SourceOp::Write { offset, data } => {
                self.file.write_at(&data, offset)?;
                if aligned {
                    return Ok(Some(data));
                }
            }
            SourceOp::Zero { offset, len, punch } => {
                if punch {
                    self.file.punch_hole(offset, len)?;
                } else {
                    write_zeros(&self.file, offset, len)?;
                }
                if aligned {
                    return Ok(None);
                }
            }
        }
        // Unaligned: the stream carries whole blocks, read back right after the write so that
        // they hold exactly what the disk holds at this seq.
        let mut buf = vec![0u8; blocks as usize * BLOCK_BYTES as usize];
        self.file.read_at(&mut buf, block * BLOCK_BYTES)?;
        Ok(Some(buf))
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn write_zeros<F: VFile>(file: &F, mut offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let end = offset + len;
    while offset < end {
        let n = CHUNK.min(end - offset);
        file.write_at(&zeros[..n as usize], offset)?;
        offset += n;
    }
    Ok(())
}
