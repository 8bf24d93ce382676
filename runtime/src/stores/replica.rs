//! A master target's replica of one disk: a sparse base image, a journal of batches (segment
//! log), and the block index that makes any recovery point readable block by block.
//!
//! Journal record body: `ctl_len u32 LE`, postcard `BatchHeader`, then the batch's raw data.
//! The journal is the truth: on open the index is rebuilt from it, a torn tail is cut (by the
//! segment log), and recovery points in redb are reconciled with it (points past the journal
//! are dropped, points missing from redb are added).

use crate::meta::{MetaStore, PointKind, PointRecord};
use crate::segment::{RecordLoc, RecordMeta, SegmentLog, SegmentSettings};
use crate::vfs::{VFile, Vfs};
use haven_core::batch::{BatchHeader, BLOCK_BYTES};
use haven_core::ids::{DiskId, Seq};
use haven_core::index::{BlockIndex, BlockSource};
use haven_core::master_target::ReplicaMeta;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {disk}: {what}: {source}")]
    Io {
        disk: String,
        what: String,
        source: std::io::Error,
    },
    #[error("replica {disk}: journal: {0}", disk = .1)]
    Journal(crate::segment::SegmentError, String),
    #[error("replica {disk}: journal record at {loc:?} does not decode: {what}; the journal is damaged, restore it")]
    Record {
        disk: String,
        loc: RecordLoc,
        what: String,
    },
    #[error(
        "replica {disk}: read of {len} bytes at {offset} is past the end of the {size}-byte disk"
    )]
    OutOfRange {
        disk: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "replica {disk}: seq {seq} is not a recovery point; list points with `haven points {disk}`"
    )]
    NoSuchPoint { disk: String, seq: Seq },
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
}

/// A replica's data. Its metadata (epoch, applied seq, points, consistency) is the master
/// target core's alone: the store keeps only what reading and appending need.
pub struct Replica<V: Vfs> {
    disk: DiskId,
    size_bytes: u64,
    base: V::File,
    journal: SegmentLog<V>,
    index: BlockIndex,
}

fn loc_key(loc: RecordLoc) -> (u64, u64) {
    (loc.segment, loc.offset)
}

/// Reads a journal record's header without its data (the segment log verified the whole
/// record's checksum when it opened); returns the header and the offset of the data part.
fn read_record_header<V: Vfs>(
    journal: &SegmentLog<V>,
    r: &RecordMeta,
) -> Result<(BatchHeader, u64), String> {
    let body_len = r.body_len as u64;
    let mut len = [0u8; 4];
    journal
        .read_body_range(r.loc, 0, &mut len)
        .map_err(|e| e.to_string())?;
    let ctl_len = u32::from_le_bytes(len) as u64;
    if 4 + ctl_len > body_len {
        return Err("control part past the record end".into());
    }
    let mut ctl = vec![0u8; ctl_len as usize];
    journal
        .read_body_range(r.loc, 4, &mut ctl)
        .map_err(|e| e.to_string())?;
    let header: BatchHeader = postcard::from_bytes(&ctl).map_err(|e| e.to_string())?;
    header.validate().map_err(|e| e.to_string())?;
    let data_offset = 4 + ctl_len;
    if body_len != data_offset + header.raw_bytes {
        return Err("data length does not match the header".into());
    }
    Ok((header, data_offset))
}

pub fn replica_dir(root: &Path, disk: &DiskId) -> PathBuf {
    root.join("replicas").join(disk.as_str())
}

impl<V: Vfs + Clone> Replica<V> {
    /// Creates or opens a replica under `root`, rebuilding the index from the journal; also
    /// `meta` with what the journal says (applied seq, points, journal bytes), for the core.
    pub fn open(
        vfs: &V,
        root: &Path,
        mut meta: ReplicaMeta,
        store: &MetaStore,
    ) -> Result<(Self, ReplicaMeta), ReplicaError> {
        let disk = meta.disk.to_string();
        let dir = replica_dir(root, &meta.disk);
        let io = |what: &str| {
            let (disk, what) = (disk.clone(), what.to_string());
            move |source| ReplicaError::Io { disk, what, source }
        };
        crate::vfs::create_dir_all_durable(vfs, &dir).map_err(io("create directory"))?;
        let base = vfs
            .open(&dir.join("base.img"), true)
            .map_err(io("open base image"))?;
        if base.len().map_err(io("stat base image"))? != meta.size_bytes {
            base.set_len(meta.size_bytes)
                .map_err(io("size base image"))?;
            base.sync_data().map_err(io("sync base image"))?;
            vfs.sync_dir(&dir).map_err(io("sync replica directory"))?;
        }
        let (journal, records) =
            SegmentLog::open(vfs.clone(), dir.join("journal"), SegmentSettings::default())
                .map_err(|e| ReplicaError::Journal(e, disk.clone()))?;
        let mut index = BlockIndex::new();
        let last_point = store.last_point(&meta.disk)?.map_or(0, |p| p.seq);
        let mut missing = vec![];
        let mut applied = 0;
        for r in &records {
            let (header, data_offset) =
                read_record_header(&journal, r).map_err(|what| ReplicaError::Record {
                    disk: disk.clone(),
                    loc: r.loc,
                    what,
                })?;
            index.insert_batch(&header, loc_key(r.loc), data_offset);
            applied = header.last_seq;
            if header.consistent && header.last_seq > last_point {
                missing.push(PointRecord {
                    seq: header.last_seq,
                    time: header.last_time,
                    kind: PointKind::Crash,
                });
            }
        }
        let cut = store.truncate_points_after(&meta.disk, applied)?;
        if cut > 0 {
            tracing::warn!("replica {disk}: dropped {cut} recovery points whose journal tail was torn by a crash");
        }
        store.add_points(&meta.disk, &missing)?;
        meta.applied_seq = applied;
        meta.points = store.points(&meta.disk)?.len() as u64;
        meta.journal_bytes = journal.stats().bytes;
        let replica = Replica {
            disk: meta.disk.clone(),
            size_bytes: meta.size_bytes,
            base,
            journal,
            index,
        };
        Ok((replica, meta))
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Bytes the journal holds.
    pub fn journal_bytes(&self) -> u64 {
        self.journal.stats().bytes
    }

    /// Appends a batch (raw data) to the journal and indexes it. Not durable until `sync`.
    pub fn append(&mut self, header: &BatchHeader, data: &[u8]) -> Result<(), ReplicaError> {
        let ctl = postcard::to_allocvec(header).expect("a batch header always encodes");
        let ctl_len = (ctl.len() as u32).to_le_bytes();
        let loc = self
            .journal
            .append_parts(header.first_seq, header.last_seq, &[&ctl_len, &ctl, data])
            .map_err(|e| ReplicaError::Journal(e, self.disk.to_string()))?;
        self.index
            .insert_batch(header, loc_key(loc), 4 + ctl.len() as u64);
        Ok(())
    }

    /// Deletes the replica's files (journal segments, then the base image), durably. Its
    /// metadata goes next (`MetaStore::remove_replica`): a crash between the two leaves an empty
    /// replica that the configuration server has removed again.
    pub fn remove(self, vfs: &V, root: &Path) -> Result<(), ReplicaError> {
        let disk = self.disk.to_string();
        let io = |what: &str| {
            let (disk, what) = (disk.clone(), what.to_string());
            move |source| ReplicaError::Io { disk, what, source }
        };
        let dir = replica_dir(root, &self.disk);
        drop(self);
        let journal = dir.join("journal");
        for f in vfs.list_dir(&journal).map_err(io("list journal"))? {
            vfs.remove_file(&f).map_err(io("remove journal segment"))?;
        }
        vfs.sync_dir(&journal)
            .map_err(io("sync journal directory"))?;
        vfs.remove_file(&dir.join("base.img"))
            .map_err(io("remove base image"))?;
        vfs.sync_dir(&dir).map_err(io("sync replica directory"))
    }

    pub fn sync(&mut self) -> Result<(), ReplicaError> {
        self.journal
            .sync()
            .map_err(|e| ReplicaError::Journal(e, self.disk.to_string()))
    }

    pub fn index_entries(&self) -> usize {
        self.index.len()
    }

    /// Reads `buf.len()` bytes at `offset` of the disk as it was at `seq`.
    pub fn read_at(&self, seq: Seq, offset: u64, buf: &mut [u8]) -> Result<(), ReplicaError> {
        let size = self.size_bytes;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ReplicaError::OutOfRange {
                disk: self.disk.to_string(),
                offset,
                len,
                size,
            });
        }
        // Runs of blocks with the same kind of source (the base, zeros, or consecutive bytes of
        // one journal record) are read with one call each: an export reads whole disks.
        let end = offset + len;
        let mut pos = offset;
        let mut src = self.index.lookup(pos / BLOCK_BYTES, seq);
        while pos < end {
            let mut run_end = ((pos / BLOCK_BYTES + 1) * BLOCK_BYTES).min(end);
            let mut next = None;
            while run_end < end {
                let candidate = self.index.lookup(run_end / BLOCK_BYTES, seq);
                if continues(&src, &candidate, run_end - pos) {
                    run_end = (run_end + BLOCK_BYTES).min(end);
                } else {
                    next = Some(candidate);
                    break;
                }
            }
            let dst = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            match &src {
                Some(BlockSource::Zero) => dst.fill(0),
                Some(BlockSource::Journal {
                    record,
                    body_offset,
                }) => {
                    let loc = RecordLoc {
                        segment: record.0,
                        offset: record.1,
                    };
                    self.journal
                        .read_body_range(loc, body_offset + pos % BLOCK_BYTES, dst)
                        .map_err(|e| ReplicaError::Journal(e, self.disk.to_string()))?;
                }
                None => self
                    .base
                    .read_at(dst, pos)
                    .map_err(|source| ReplicaError::Io {
                        disk: self.disk.to_string(),
                        what: "read base image".into(),
                        source,
                    })?,
            }
            pos = run_end;
            if let Some(n) = next {
                src = n;
            }
        }
        Ok(())
    }
}

/// Whether the block whose source is `next`, `done` bytes after the start of a run read from
/// `run` (which began at the start of the run's first block or inside it), continues the run.
fn continues(run: &Option<BlockSource>, next: &Option<BlockSource>, done: u64) -> bool {
    match (run, next) {
        (None, None) => true,
        (Some(BlockSource::Zero), Some(BlockSource::Zero)) => true,
        (
            Some(BlockSource::Journal {
                record: a,
                body_offset: x,
            }),
            Some(BlockSource::Journal {
                record: b,
                body_offset: y,
            }),
        ) => a == b && *y == x + done.div_ceil(BLOCK_BYTES) * BLOCK_BYTES,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::StdVfs;
    use haven_core::batch::{Encoding, Op, OpKind};
    use haven_core::ids::Epoch;
    use haven_core::time::Timestamp;

    const BLOCKS: u64 = 64;
    const B: usize = BLOCK_BYTES as usize;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn meta() -> ReplicaMeta {
        ReplicaMeta {
            disk: DiskId::new("disk0").unwrap(),
            epoch: Epoch(1),
            size_bytes: BLOCKS * BLOCK_BYTES,
            applied_seq: 0,
            points: 0,
            journal_bytes: 0,
            inconsistent: None,
        }
    }

    /// A batch of 1-3 ops (data or zeros, 1-4 blocks each) from `seq`, its raw data, and the
    /// disk after it (`disk` is the disk before).
    fn batch(rng: &mut Rng, seq: Seq, disk: &mut [u8]) -> (BatchHeader, Vec<u8>) {
        let (mut ops, mut data) = (vec![], vec![]);
        let n = 1 + rng.below(3);
        for i in 0..n {
            let blocks = 1 + rng.below(4);
            let block = rng.below(BLOCKS - blocks + 1);
            let range = block as usize * B..(block + blocks) as usize * B;
            let kind = if rng.below(4) == 0 {
                OpKind::Zero
            } else {
                OpKind::Data
            };
            match kind {
                OpKind::Zero => disk[range].fill(0),
                OpKind::Data => {
                    let bytes: Vec<u8> = (0..range.len())
                        .map(|j| (seq as usize * 7 + i as usize * 31 + j / 512) as u8)
                        .collect();
                    disk[range].copy_from_slice(&bytes);
                    data.extend(bytes);
                }
            }
            ops.push(Op {
                seq: seq + i,
                block,
                blocks: blocks as u32,
                kind,
            });
        }
        let header = BatchHeader {
            disk: DiskId::new("disk0").unwrap(),
            epoch: Epoch(1),
            first_seq: seq,
            last_seq: seq + n - 1,
            first_time: Timestamp(seq),
            last_time: Timestamp(seq + 1),
            consistent: rng.below(3) != 0,
            ops,
            encoding: Encoding::Raw,
            raw_bytes: data.len() as u64,
        };
        header.validate().unwrap();
        (header, data)
    }

    /// Reads of random ranges at every batch's last seq equal the disk as it was then.
    fn check_reads(r: &Replica<StdVfs>, disks: &[(Seq, Vec<u8>)], rng: &mut Rng) {
        for (seq, disk) in disks {
            let mut whole = vec![0u8; disk.len()];
            r.read_at(*seq, 0, &mut whole).unwrap();
            assert!(whole == *disk, "the whole disk at seq {seq}");
            for _ in 0..8 {
                let off = rng.below(disk.len() as u64 - 1);
                let len = 1 + rng.below(disk.len() as u64 - off);
                let mut buf = vec![0u8; len as usize];
                r.read_at(*seq, off, &mut buf).unwrap();
                assert!(
                    buf[..] == disk[off as usize..(off + len) as usize],
                    "{len} bytes at {off}, seq {seq}"
                );
            }
        }
    }

    #[test]
    fn every_seq_reads_back_as_the_disk_was_then_before_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let (mut r, _) = Replica::open(&StdVfs, dir.path(), meta(), &store).unwrap();
        assert_eq!(
            (r.size_bytes(), r.journal_bytes()),
            (BLOCKS * BLOCK_BYTES, 0)
        );
        // The base image holds data of its own: blocks the journal never wrote read from it.
        let mut disk = vec![0u8; (BLOCKS * BLOCK_BYTES) as usize];
        for (i, b) in disk.chunks_mut(B).enumerate().filter(|(i, _)| i % 3 == 0) {
            b.fill(0x80 | i as u8);
        }
        r.base.write_at(&disk, 0).unwrap();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut disks, mut seq, mut consistent) = (vec![(0, disk.clone())], 1, 0);
        for _ in 0..40 {
            let (h, data) = batch(&mut rng, seq, &mut disk);
            r.append(&h, &data).unwrap();
            seq = h.last_seq + 1;
            consistent += u64::from(h.consistent);
            disks.push((h.last_seq, disk.clone()));
        }
        r.sync().unwrap();
        assert!(r.index_entries() > 0);
        let journal_bytes = r.journal_bytes();
        assert!(journal_bytes > 0);
        check_reads(&r, &disks, &mut rng);
        let past = BLOCKS * BLOCK_BYTES;
        assert!(matches!(
            r.read_at(seq, past - 10, &mut [0u8; 11]),
            Err(ReplicaError::OutOfRange { .. })
        ));
        assert!(r.read_at(seq, u64::MAX, &mut [0u8; 2]).is_err());
        drop(r);

        // Reopened: the index is rebuilt from the journal and the consistent batches are the
        // recovery points.
        let (r, m) = Replica::open(&StdVfs, dir.path(), meta(), &store).unwrap();
        assert_eq!(m.applied_seq, seq - 1);
        assert_eq!(m.points, consistent);
        assert_eq!(m.journal_bytes, r.journal_bytes());
        assert_eq!(m.journal_bytes, journal_bytes);
        assert_eq!(r.size_bytes(), BLOCKS * BLOCK_BYTES);
        check_reads(&r, &disks, &mut rng);
        let journal = replica_dir(dir.path(), &r.disk).join("journal");
        assert!(!StdVfs.list_dir(&journal).unwrap().is_empty());

        // Removed: no file of it is left.
        r.remove(&StdVfs, dir.path()).unwrap();
        assert!(StdVfs.list_dir(&journal).unwrap().is_empty());
        let base = replica_dir(dir.path(), &DiskId::new("disk0").unwrap()).join("base.img");
        assert!(!base.exists());
    }

    /// Blocks next to each other on the disk but not in the record (a batch's second op writes
    /// the block before its first op's): one read across them takes each from its own place.
    #[test]
    fn a_read_across_blocks_of_one_record_follows_the_index_not_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let (mut r, _) = Replica::open(&StdVfs, dir.path(), meta(), &store).unwrap();
        let op = |seq, block| Op {
            seq,
            block,
            blocks: 1,
            kind: OpKind::Data,
        };
        let mut data = vec![b'b'; B];
        data.extend(vec![b'a'; B]);
        let header = BatchHeader {
            disk: DiskId::new("disk0").unwrap(),
            epoch: Epoch(1),
            first_seq: 1,
            last_seq: 2,
            first_time: Timestamp(1),
            last_time: Timestamp(2),
            consistent: true,
            ops: vec![op(1, 5), op(2, 4)],
            encoding: Encoding::Raw,
            raw_bytes: 2 * BLOCK_BYTES,
        };
        r.append(&header, &data).unwrap();
        assert_eq!(r.index_entries(), 2);
        let mut buf = vec![0u8; 2 * B + 10];
        r.read_at(2, 4 * BLOCK_BYTES, &mut buf).unwrap();
        assert!(buf[..B].iter().all(|b| *b == b'a'), "block 4");
        assert!(buf[B..2 * B].iter().all(|b| *b == b'b'), "block 5");
        assert!(buf[2 * B..].iter().all(|b| *b == 0), "block 6, the base");

        // Blocks 0, 2, 1 in that order in one record; a read from inside block 0 across block
        // 1 must not take the record's next bytes (block 2's) for block 1.
        let mut data = vec![b'x'; B];
        data.extend(vec![b'z'; B]);
        data.extend(vec![b'y'; B]);
        let header = BatchHeader {
            first_seq: 3,
            last_seq: 5,
            ops: vec![op(3, 0), op(4, 2), op(5, 1)],
            raw_bytes: 3 * BLOCK_BYTES,
            ..header
        };
        r.append(&header, &data).unwrap();
        let mut buf = vec![0u8; 2 * B - 512];
        r.read_at(5, 512, &mut buf).unwrap();
        assert!(buf[..B - 512].iter().all(|b| *b == b'x'), "block 0");
        assert!(buf[B - 512..].iter().all(|b| *b == b'y'), "block 1");

        // Two records laid out alike: block 10 first in one, block 11 second in the other, so
        // block 11's bytes sit right after block 10's offset, but in another record.
        let two = |first, blocks: [u64; 2], fill: [u8; 2]| {
            let mut data = vec![fill[0]; B];
            data.extend(vec![fill[1]; B]);
            let h = BatchHeader {
                first_seq: first,
                last_seq: first + 1,
                ops: vec![op(first, blocks[0]), op(first + 1, blocks[1])],
                raw_bytes: 2 * BLOCK_BYTES,
                ..header.clone()
            };
            (h, data)
        };
        let (h, d) = two(6, [10, 30], [b'p', b'q']);
        r.append(&h, &d).unwrap();
        let (h, d) = two(8, [31, 11], [b'r', b's']);
        r.append(&h, &d).unwrap();
        let mut buf = vec![0u8; 2 * B];
        r.read_at(9, 10 * BLOCK_BYTES, &mut buf).unwrap();
        assert!(buf[..B].iter().all(|b| *b == b'p'), "block 10");
        assert!(
            buf[B..].iter().all(|b| *b == b's'),
            "block 11, from the other record"
        );
    }
}
