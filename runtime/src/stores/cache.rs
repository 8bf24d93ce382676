//! The process server's durable cache: one segment log per disk, each record a whole framed
//! `Batch` message as it will be sent to the master target (so forwarding is a read and a
//! write, with no re-encoding). Nothing is acknowledged to an agent before `sync` returns.
//!
//! The newest frames also stay in memory (up to [`HOT_BYTES_MAX`]), so that forwarding a batch
//! right after caching it does not read it back from the disk; a resend after a reconnect or a
//! restart reads the cache file.

use crate::segment::{RecordLoc, RecordMeta, SegmentLog, SegmentSettings};
use crate::vfs::Vfs;
use haven_core::batch::BatchHeader;
use haven_core::ids::{DiskId, Seq};
use haven_core::net::Payload;
use haven_core::process_server::{CacheLoc, CachedBatch};
use haven_core::protocol::{self, Message};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most bytes of cached frames also kept in memory for forwarding.
pub const HOT_BYTES_MAX: u64 = 128 << 20;
/// Most frames kept in memory for forwarding (bounds the bookkeeping as well).
pub const HOT_FRAMES_MAX: usize = 4096;

/// Frames kept in memory after caching, until forwarded or pushed out by newer ones.
#[derive(Default)]
struct Hot {
    frames: HashMap<(DiskId, CacheLoc), (Vec<u8>, Payload)>,
    /// Insertion order; entries already taken are skipped when they reach the front.
    order: VecDeque<(DiskId, CacheLoc)>,
    bytes: u64,
}

impl Hot {
    fn insert(&mut self, key: (DiskId, CacheLoc), head: Vec<u8>, data: Payload) {
        self.bytes += (head.len() + data.len()) as u64;
        self.order.push_back(key.clone());
        if let Some((h, d)) = self.frames.insert(key, (head, data)) {
            self.bytes -= (h.len() + d.len()) as u64;
        }
        while self.bytes > HOT_BYTES_MAX || self.order.len() > HOT_FRAMES_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.remove(&old);
        }
    }

    fn remove(&mut self, key: &(DiskId, CacheLoc)) -> Option<(Vec<u8>, Payload)> {
        let (head, data) = self.frames.remove(key)?;
        self.bytes -= (head.len() + data.len()) as u64;
        Some((head, data))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache for disk {disk}: {source}")]
    Segment {
        disk: String,
        source: crate::segment::SegmentError,
    },
    #[error("cache for disk {disk}: record at {loc:?} is not a batch frame: {what}; move the cache directory aside and restart (the agent resends what is not applied)")]
    Record {
        disk: String,
        loc: RecordLoc,
        what: String,
    },
    #[error("cache: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache: directory name {0:?} is not a disk id")]
    BadDir(String),
}

pub struct Cache<V: Vfs> {
    vfs: V,
    root: PathBuf,
    logs: BTreeMap<DiskId, SegmentLog<V>>,
    /// Logs appended to since the last sync.
    dirty: Vec<DiskId>,
    hot: Hot,
    segments: SegmentSettings,
}

impl<V: Vfs + Clone> Cache<V> {
    /// Opens every disk's cache under `root/cache`, returning the cached batches in order.
    /// Each disk's cache is a segment log cut into segments of `segment_bytes_max`; a segment
    /// is deleted once every batch in it is applied at the master target.
    pub fn open(
        vfs: V,
        root: &Path,
        segment_bytes_max: u64,
    ) -> Result<(Self, Vec<CachedBatch>), CacheError> {
        let segments = SegmentSettings {
            segment_bytes_max,
            ..SegmentSettings::default()
        };
        let root = root.join("cache");
        crate::vfs::create_dir_all_durable(&vfs, &root)?;
        let mut cache = Cache {
            vfs: vfs.clone(),
            root: root.clone(),
            logs: BTreeMap::new(),
            dirty: vec![],
            hot: Hot::default(),
            segments,
        };
        let mut batches = vec![];
        for dir in vfs.list_dir(&root)? {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let disk = DiskId::new(name.clone()).map_err(|_| CacheError::BadDir(name))?;
            let seg = |source| CacheError::Segment {
                disk: disk.to_string(),
                source,
            };
            let (log, metas) = SegmentLog::open(vfs.clone(), dir, segments).map_err(seg)?;
            for m in metas {
                let header = frame_header(&log, &m).map_err(|what| CacheError::Record {
                    disk: disk.to_string(),
                    loc: m.loc,
                    what,
                })?;
                batches.push(CachedBatch {
                    disk: disk.clone(),
                    epoch: header.epoch,
                    first_seq: header.first_seq,
                    last_seq: header.last_seq,
                    bytes: m.body_len as u64,
                    loc: CacheLoc {
                        segment: m.loc.segment,
                        offset: m.loc.offset,
                    },
                });
            }
            cache.logs.insert(disk, log);
        }
        Ok((cache, batches))
    }

    fn log(&mut self, disk: &DiskId) -> Result<&mut SegmentLog<V>, CacheError> {
        if !self.logs.contains_key(disk) {
            let dir = self.root.join(disk.as_str());
            let (log, metas) =
                SegmentLog::open(self.vfs.clone(), dir, self.segments).map_err(|source| {
                    CacheError::Segment {
                        disk: disk.to_string(),
                        source,
                    }
                })?;
            debug_assert!(metas.is_empty());
            self.logs.insert(disk.clone(), log);
        }
        Ok(self.logs.get_mut(disk).expect("inserted"))
    }

    /// Appends a batch as a framed message. Not durable until `sync`.
    pub fn append(
        &mut self,
        header: BatchHeader,
        data: Vec<u8>,
    ) -> Result<(CacheLoc, u64), CacheError> {
        let (disk, first, last) = (header.disk.clone(), header.first_seq, header.last_seq);
        let msg = Message::Batch(header);
        // One pass over the data serves both checksums: the frame's and the cache record's.
        let mut data_crc = crc32fast::Hasher::new();
        data_crc.update(&data);
        let head = protocol::encode_head_with_crc(&msg, data.len(), &data_crc)
            .expect("a validated batch always frames");
        let log = self.log(&disk)?;
        let loc = log
            .append_parts_tail_crc(first, last, &[&head], &data, &data_crc)
            .map_err(|source| CacheError::Segment {
                disk: disk.to_string(),
                source,
            })?;
        let loc = CacheLoc {
            segment: loc.segment,
            offset: loc.offset,
        };
        let bytes = (head.len() + data.len()) as u64;
        self.hot.insert((disk.clone(), loc), head, Arc::new(data));
        if !self.dirty.contains(&disk) {
            self.dirty.push(disk);
        }
        Ok((loc, bytes))
    }

    /// A cached frame to forward, as head and data: from memory if it is still there (and
    /// then no longer), otherwise read back from the cache, checksum verified.
    pub fn take_frame(
        &mut self,
        disk: &DiskId,
        loc: CacheLoc,
    ) -> Result<(Vec<u8>, Payload), CacheError> {
        if let Some(frame) = self.hot.remove(&(disk.clone(), loc)) {
            return Ok(frame);
        }
        Ok((self.read(disk, loc)?, Arc::new(Vec::new())))
    }

    /// Makes every append so far durable.
    pub fn sync(&mut self) -> Result<(), CacheError> {
        for disk in std::mem::take(&mut self.dirty) {
            if let Some(log) = self.logs.get_mut(&disk) {
                log.sync().map_err(|source| CacheError::Segment {
                    disk: disk.to_string(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Reads a cached frame, checksum verified.
    fn read(&self, disk: &DiskId, loc: CacheLoc) -> Result<Vec<u8>, CacheError> {
        let log = self
            .logs
            .get(disk)
            .ok_or_else(|| CacheError::BadDir(disk.to_string()))?;
        let loc = RecordLoc {
            segment: loc.segment,
            offset: loc.offset,
        };
        let (_, body) = log.read(loc).map_err(|source| CacheError::Segment {
            disk: disk.to_string(),
            source,
        })?;
        Ok(body)
    }

    /// Deletes whole segments whose batches are all applied at the master target.
    pub fn release_through(&mut self, disk: &DiskId, through: Seq) -> Result<(), CacheError> {
        if let Some(log) = self.logs.get_mut(disk) {
            log.release_through(through)
                .map_err(|source| CacheError::Segment {
                    disk: disk.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.logs.values().map(|l| l.stats().bytes).sum()
    }
}

/// Reads the header of a cached batch frame without its data (the segment log verified the
/// record's checksum when it opened).
fn frame_header<V: Vfs>(log: &SegmentLog<V>, m: &RecordMeta) -> Result<BatchHeader, String> {
    let mut head = [0u8; protocol::FRAME_HEADER_BYTES];
    log.read_body_range(m.loc, 0, &mut head)
        .map_err(|e| e.to_string())?;
    let fh = protocol::parse_header(&head).map_err(|e| e.to_string())?;
    if protocol::FRAME_HEADER_BYTES as u64 + fh.body_len as u64 != m.body_len as u64 {
        return Err("frame length does not match the record".into());
    }
    let mut ctl = vec![0u8; fh.ctl_len as usize];
    log.read_body_range(m.loc, protocol::FRAME_HEADER_BYTES as u64, &mut ctl)
        .map_err(|e| e.to_string())?;
    match postcard::from_bytes::<Message>(&ctl).map_err(|e| e.to_string())? {
        Message::Batch(h) => Ok(h),
        m => Err(format!("holds a {} message", m.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::StdVfs;
    use haven_core::batch::{Encoding, Op, OpKind, BLOCK_BYTES};
    use haven_core::ids::Epoch;
    use haven_core::time::Timestamp;

    fn batch(disk: &str, seq: Seq) -> (BatchHeader, Vec<u8>) {
        let header = BatchHeader {
            disk: DiskId::new(disk).unwrap(),
            epoch: Epoch(3),
            first_seq: seq,
            last_seq: seq,
            first_time: Timestamp(seq),
            last_time: Timestamp(seq),
            consistent: true,
            ops: vec![Op {
                seq,
                block: seq % 8,
                blocks: 1,
                kind: OpKind::Data,
            }],
            encoding: Encoding::Raw,
            raw_bytes: BLOCK_BYTES,
        };
        (header, vec![seq as u8; BLOCK_BYTES as usize])
    }

    /// The frame's message and data, decoded as the master target will.
    fn decoded((head, data): (Vec<u8>, Payload)) -> (BatchHeader, Vec<u8>) {
        let mut frame = head;
        frame.extend_from_slice(&data);
        let (msg, data, used) = protocol::decode(&frame).unwrap().expect("a whole frame");
        assert_eq!(used, frame.len());
        match msg {
            Message::Batch(h) => (h, data),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn cached_frames_forward_from_memory_or_disk_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cache, found) = Cache::open(StdVfs, dir.path(), 64 << 10).unwrap();
        assert!(found.is_empty());
        let mut locs = vec![];
        for seq in 1..=40 {
            for disk in ["disk0", "disk1"] {
                let (h, d) = batch(disk, seq);
                let (loc, bytes) = cache.append(h, d).unwrap();
                assert!(bytes > BLOCK_BYTES);
                locs.push((disk, seq, loc, bytes));
            }
        }
        cache.sync().unwrap();
        let total: u64 = locs.iter().map(|l| l.3).sum();
        assert!(cache.bytes() >= total, "{} < {total}", cache.bytes());
        // From memory, then (taken once) from the file: the same frame.
        let (disk, seq, loc, _) = locs[5];
        let id = DiskId::new(disk).unwrap();
        let hot = cache.hot.bytes;
        assert_eq!(hot, total, "every frame is in memory");
        assert_eq!(
            decoded(cache.take_frame(&id, loc).unwrap()),
            batch(disk, seq)
        );
        assert_eq!(
            cache.hot.bytes,
            hot - locs[5].3,
            "a frame taken leaves memory"
        );
        assert_eq!(
            decoded(cache.take_frame(&id, loc).unwrap()),
            batch(disk, seq)
        );
        drop(cache);

        let (mut cache, found) = Cache::open(StdVfs, dir.path(), 64 << 10).unwrap();
        assert_eq!(found.len(), locs.len());
        for (disk, seq, loc, bytes) in &locs {
            let b = found
                .iter()
                .find(|b| b.disk.as_str() == *disk && b.first_seq == *seq)
                .expect("every batch is found again");
            assert_eq!(
                (b.last_seq, b.epoch, b.loc, b.bytes),
                (*seq, Epoch(3), *loc, *bytes)
            );
            let id = DiskId::new(*disk).unwrap();
            assert_eq!(
                decoded(cache.take_frame(&id, *loc).unwrap()),
                batch(disk, *seq)
            );
        }
        for disk in ["disk0", "disk1"] {
            let seqs: Vec<Seq> = found
                .iter()
                .filter(|b| b.disk.as_str() == disk)
                .map(|b| b.first_seq)
                .collect();
            assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "{disk} in order");
        }

        // Released through seq 30 of disk0: its full segments go, disk1 keeps everything.
        let before = cache.bytes();
        cache
            .release_through(&DiskId::new("disk0").unwrap(), 30)
            .unwrap();
        assert!(cache.bytes() < before);
        drop(cache);
        let (_, found) = Cache::open(StdVfs, dir.path(), 64 << 10).unwrap();
        let disk0: Vec<Seq> = found
            .iter()
            .filter(|b| b.disk.as_str() == "disk0")
            .map(|b| b.first_seq)
            .collect();
        assert!(
            disk0.first().is_some_and(|s| *s > 1 && *s <= 31),
            "{disk0:?}"
        );
        assert_eq!(disk0.last(), Some(&40));
        assert_eq!(
            found.iter().filter(|b| b.disk.as_str() == "disk1").count(),
            40
        );
    }

    /// Past `HOT_FRAMES_MAX` the oldest frames leave memory; they are read from the file.
    #[test]
    fn frames_pushed_out_of_memory_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cache, _) = Cache::open(StdVfs, dir.path(), 64 << 20).unwrap();
        let mut locs = vec![];
        for seq in 1..=(HOT_FRAMES_MAX as u64 + 10) {
            let (h, d) = batch("disk0", seq);
            locs.push(cache.append(h, d).unwrap().0);
        }
        cache.sync().unwrap();
        assert!(cache.hot.order.len() <= HOT_FRAMES_MAX);
        assert!(cache.hot.bytes <= HOT_BYTES_MAX);
        let id = DiskId::new("disk0").unwrap();
        assert!(!cache.hot.frames.contains_key(&(id.clone(), locs[0])));
        for (i, loc) in [(0, locs[0]), (locs.len() - 1, locs[locs.len() - 1])] {
            let want = batch("disk0", i as u64 + 1);
            assert_eq!(decoded(cache.take_frame(&id, loc).unwrap()), want);
        }
    }

    /// A record whose checksum holds but which is not exactly one batch frame (here a frame
    /// with bytes after it) is refused at open, naming the disk.
    #[test]
    fn a_cache_record_that_is_not_one_frame_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cache, _) = Cache::open(StdVfs, dir.path(), 64 << 10).unwrap();
        let (h, d) = batch("disk0", 1);
        cache.append(h.clone(), d.clone()).unwrap();
        cache.sync().unwrap();
        drop(cache);
        let log_dir = dir.path().join("cache/disk0");
        let (mut log, _) = SegmentLog::open(StdVfs, log_dir, SegmentSettings::default()).unwrap();
        let mut body = protocol::encode(&Message::Batch(h), &d).unwrap();
        body.extend_from_slice(b"trailing");
        log.append_parts(2, 2, &[&body]).unwrap();
        log.sync().unwrap();
        drop(log);
        let err = Cache::open(StdVfs, dir.path(), 64 << 10).err().unwrap();
        assert!(matches!(err, CacheError::Record { .. }), "{err}");
        assert!(err.to_string().contains("disk0"), "{err}");
    }

    #[test]
    fn a_cache_directory_that_is_not_a_disk_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache/not a disk")).unwrap();
        let err = Cache::open(StdVfs, dir.path(), 64 << 10).err().unwrap();
        assert!(matches!(err, CacheError::BadDir(_)), "{err}");
    }
}
