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
    /// Opens the disk at `path`; with `create_size`, a missing file is created that size (sparse),
    /// along with its missing parent directories. Every error names the path.
    pub fn open<V: Vfs<File = F>>(
        vfs: &V,
        path: &Path,
        create_size: Option<u64>,
    ) -> std::io::Result<Self> {
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = match vfs.open(path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_size {
                Some(size) => Self::create(vfs, path, size).map_err(named)?,
                None => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{} does not exist; create it, or set create_size in its [[disk]] \
                             so that the agent creates it",
                            path.display()
                        ),
                    ))
                }
            },
            Err(e) => return Err(named(e)),
        };
        let size_bytes = file.len().map_err(named)?;
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

    fn create<V: Vfs<File = F>>(vfs: &V, path: &Path, size: u64) -> std::io::Result<F> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            crate::vfs::create_dir_all_durable(vfs, dir)?;
        }
        let f = vfs.open(path, true)?;
        f.set_len(size)?;
        f.sync_data()?;
        if let Some(dir) = dir {
            vfs.sync_dir(dir)?;
        }
        Ok(f)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::StdVfs;

    #[test]
    fn a_missing_parent_is_created_or_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("new/sub/disk0.img");
        let d = SourceDisk::open(&StdVfs, &path, Some(1 << 20)).unwrap();
        assert_eq!(d.size_bytes(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);

        let missing = tmp.path().join("other/disk1.img");
        let e = SourceDisk::open(&StdVfs, &missing, None).err().unwrap();
        let text = e.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("create_size"), "{text}");
        assert!(!tmp.path().join("other").exists());
    }

    /// Every kind of op lands on the file and returns the blocks it touched as they now are
    /// (None for whole blocks zeroed), checked against a model of the disk.
    #[test]
    fn ops_land_on_the_disk_and_return_the_touched_blocks() {
        const B: usize = BLOCK_BYTES as usize;
        let tmp = tempfile::tempdir().unwrap();
        let d = SourceDisk::open(&StdVfs, &tmp.path().join("d.img"), Some(3 << 20)).unwrap();
        let mut model = vec![0u8; 3 << 20];
        let check = |op: SourceOp, model: &mut Vec<u8>, want_none: bool| {
            let (block, blocks) = op.block_span();
            let (off, len, fill): (u64, u64, Option<Vec<u8>>) = match &op {
                SourceOp::Write { offset, data } => {
                    (*offset, data.len() as u64, Some(data.clone()))
                }
                SourceOp::Zero { offset, len, .. } => (*offset, *len, None),
            };
            let range = off as usize..(off + len) as usize;
            match fill {
                Some(data) => model[range].copy_from_slice(&data),
                None => model[range].fill(0),
            }
            let got = d.apply(op).unwrap();
            let span = block as usize * B..(block + blocks as u64) as usize * B;
            match got {
                None => assert!(want_none, "blocks {span:?}"),
                Some(data) => {
                    assert!(!want_none);
                    assert!(data == model[span.clone()], "blocks {span:?}");
                }
            }
        };
        let write = |offset, len: usize, b| SourceOp::Write {
            offset,
            data: vec![b; len],
        };
        check(write(0, 3 * B, 1), &mut model, false);
        check(write(B as u64 + 100, 50, 2), &mut model, false); // unaligned: read back
        check(write((2 << 20) - 10, 2 * B, 3), &mut model, false); // across the 1 MiB mark
        let zero = |offset, len, punch| SourceOp::Zero { offset, len, punch };
        check(zero(B as u64, BLOCK_BYTES, true), &mut model, true);
        check(zero(10, 100, true), &mut model, false);
        check(zero(0, BLOCK_BYTES + 10, false), &mut model, false); // written zeros from byte 0
        check(zero(2 << 20, (1 << 20) - 4096, false), &mut model, true); // written zeros
        check(write(1 << 20, 2 << 20, 4), &mut model, false);
        check(zero((1 << 20) + 5, (1 << 20) + 7, false), &mut model, false); // more than a chunk
        d.sync().unwrap();
        let mut all = vec![0u8; 3 << 20];
        d.read_at(&mut all, 0).unwrap();
        assert!(all == model, "the disk equals the model");
    }

    #[test]
    fn a_disk_whose_size_is_not_whole_blocks_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("odd.img");
        std::fs::write(&path, vec![0u8; 5000]).unwrap();
        let e = SourceDisk::open(&StdVfs, &path, None).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("multiple of 4096"), "{e}");
        std::fs::write(&path, b"").unwrap();
        assert!(SourceDisk::open(&StdVfs, &path, None).is_err(), "empty");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        assert_eq!(
            SourceDisk::open(&StdVfs, &path, None).unwrap().size_bytes(),
            8192
        );
    }

    /// A path that exists but cannot be opened as a disk is named with its own error, not
    /// taken for a missing file; `next_data` skips the disk's holes.
    #[test]
    fn an_unopenable_path_keeps_its_error_and_holes_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let e = SourceDisk::open(&StdVfs, tmp.path(), None).err().unwrap();
        let text = e.to_string();
        assert!(!text.contains("does not exist"), "{text}");
        assert!(text.contains(&tmp.path().display().to_string()), "{text}");

        let d = SourceDisk::open(&StdVfs, &tmp.path().join("s.img"), Some(4 << 20)).unwrap();
        d.apply(SourceOp::Write {
            offset: 2 << 20,
            data: vec![1; 4096],
        })
        .unwrap();
        assert_eq!(d.next_data(0).unwrap(), Some(2 << 20));
        assert_eq!(d.next_data(3 << 20).unwrap(), None);
    }
}
