//! Append-only, checksummed record log split into segment files.
//!
//! One [`SegmentLog`] owns one directory holding `{index:016x}.seg` files.
//! Records are appended to the newest (current) segment; a new segment is
//! started when a record would push the current one past
//! [`SegmentSettings::segment_bytes_max`] (a record bigger than that gets a
//! segment of its own). Each record is a 28-byte header followed by the body:
//!
//! ```text
//! magic u32 "HVR1" | len u32 | crc32 u32 | first u64 | last u64 | body[len]
//! ```
//!
//! little-endian, with the crc over `first`, `last` and the body. `first` and
//! `last` are caller keys (e.g. a batch's first and last sequence number);
//! the log preserves append order and uses `last` to decide which whole
//! segments [`SegmentLog::release_through`] may delete.
//!
//! # Durability contract
//!
//! **Nothing is durable until [`SegmentLog::sync`] returns.** `append` only
//! writes; a crash may lose any unsynced suffix, possibly leaving a torn
//! record at the end of the newest segment. [`SegmentLog::open`] treats the
//! first invalid record of the newest segment as the end of the log and cuts
//! the file there. Because the log seals (truncates to its known length and
//! syncs) the current segment before starting the next one, a later segment
//! can only exist on disk once every earlier one is complete and durable, so
//! an invalid record in any segment but the newest is real damage and
//! `open` refuses to continue.
//!
//! If a sync fails the log is poisoned: the kernel may have dropped the dirty
//! pages, so the only safe continuation is to reopen (and rescan) the log.

mod record;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::vfs::{VFile, Vfs};
use record::Invalid;
pub use record::{HEADER_BYTES, RECORD_MAGIC};
use types::io_err;
pub use types::*;

/// Segment file name suffix.
const SEGMENT_SUFFIX: &str = ".seg";

/// Hex digits of the index in a segment file name.
const SEGMENT_INDEX_DIGITS: usize = 16;

/// In-memory state of one segment file.
struct Segment<F> {
    file: F,
    path: PathBuf,
    /// End of valid data; appends go here.
    len: u64,
    /// Largest `last` key of any record; `None` while empty.
    max_last: Option<u64>,
}

/// Result of scanning one segment file.
struct Scan {
    /// Offset just past the last valid record.
    end: u64,
    max_last: Option<u64>,
    /// Why scanning stopped before the file end, if it did.
    problem: Option<String>,
}

/// What opening the log cut from the end of its newest segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailCut {
    /// Zeros shorter than one alignment block past the last record: the padding a log file
    /// opened with `Vfs::open_log` carries past its last append. Nothing was lost.
    Padding { bytes: u64 },
    /// A torn or corrupt record (a crash during an append): it was never acknowledged, since
    /// acknowledgements follow the sync.
    Torn {
        offset: u64,
        bytes: u64,
        why: String,
    },
}

/// An append-only record log in one directory. See the module docs.
pub struct SegmentLog<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    settings: SegmentSettings,
    /// All segments by index; the last one is the current (append) segment.
    segments: BTreeMap<u64, Segment<V::File>>,
    /// Segments written since the last sync.
    unsynced: BTreeSet<u64>,
    /// A segment was created or removed since the last directory sync.
    dir_unsynced: bool,
    poisoned: bool,
    /// What the open cut from the newest segment, if anything.
    tail_cut: Option<TailCut>,
}

/// Parses `{index:016x}.seg`; other names are not segments.
fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != SEGMENT_INDEX_DIGITS {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!(
        "{index:0width$x}{SEGMENT_SUFFIX}",
        width = SEGMENT_INDEX_DIGITS
    ))
}

/// Reads every record of `file` from offset 0, pushing metas, until the
/// file end or the first invalid record.
fn scan_segment<F: VFile>(
    file: &F,
    segment: u64,
    file_len: u64,
    max_body: u64,
    metas: &mut Vec<RecordMeta>,
) -> io::Result<Scan> {
    let mut scan = Scan {
        end: 0,
        max_last: None,
        problem: None,
    };
    let mut body = Vec::new();
    while scan.end < file_len {
        match record::read_record(file, scan.end, file_len, max_body, &mut body) {
            Ok(h) => {
                let loc = RecordLoc {
                    segment,
                    offset: scan.end,
                };
                metas.push(RecordMeta {
                    loc,
                    first: h.first,
                    last: h.last,
                    body_len: h.len,
                });
                scan.max_last = Some(scan.max_last.map_or(h.last, |m| m.max(h.last)));
                scan.end += HEADER_BYTES + u64::from(h.len);
            }
            Err(Invalid::Io(e)) => return Err(e),
            Err(Invalid::Bad(what)) => {
                scan.problem = Some(what);
                break;
            }
        }
    }
    Ok(scan)
}

/// True when `[end, file_len)` is shorter than one alignment block and all zeros: the padding
/// of a log file rather than a torn record.
fn is_padding<F: VFile>(file: &F, end: u64, file_len: u64) -> io::Result<bool> {
    let n = file_len - end;
    if n >= crate::vfs::DIRECT_ALIGN as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; n as usize];
    file.read_at(&mut buf, end)?;
    Ok(crate::vfs::is_zero(&buf))
}

impl<V: Vfs> SegmentLog<V> {
    /// Opens (creating if missing) the log in `dir`, verifying every record.
    /// Returns the metadata of all valid records in log order. A torn or
    /// corrupt tail of the newest segment is cut off and the cut synced; an
    /// invalid record anywhere else is [`SegmentError::Corrupt`].
    pub fn open(
        vfs: V,
        dir: impl Into<PathBuf>,
        settings: SegmentSettings,
    ) -> Result<(Self, Vec<RecordMeta>)> {
        settings.validate()?;
        let dir = dir.into();
        let mut log = SegmentLog {
            vfs,
            dir,
            settings,
            segments: BTreeMap::new(),
            unsynced: BTreeSet::new(),
            dir_unsynced: false,
            poisoned: false,
            tail_cut: None,
        };
        let found = log.list_segments()?;
        let mut metas = Vec::new();
        let count = found.len();
        for (i, (index, path)) in found.into_iter().enumerate() {
            log.load_segment(index, path, i + 1 == count, &mut metas)?;
        }
        tracing::debug!(dir = %log.dir.display(), segments = count, records = metas.len(), "segment log opened");
        Ok((log, metas))
    }

    /// Segment files in index order; creates the directory if it is missing.
    fn list_segments(&self) -> Result<Vec<(u64, PathBuf)>> {
        let entries = match self.vfs.list_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.vfs
                    .create_dir_all(&self.dir)
                    .map_err(io_err(&self.dir))?;
                // Make the new directory's own name durable too.
                if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    self.vfs.sync_dir(parent).map_err(io_err(parent))?;
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut found = Vec::new();
        for path in entries {
            match parse_segment_name(&path) {
                Some(index) => found.push((index, path)),
                None => {
                    tracing::debug!(path = %path.display(), "segment log: ignoring non-segment file")
                }
            }
        }
        found.sort_unstable_by_key(|&(index, _)| index);
        Ok(found)
    }

    fn load_segment(
        &mut self,
        index: u64,
        path: PathBuf,
        is_last: bool,
        metas: &mut Vec<RecordMeta>,
    ) -> Result<()> {
        let file = self.vfs.open_log(&path, false).map_err(io_err(&path))?;
        let file_len = file.len().map_err(io_err(&path))?;
        let scan = scan_segment(
            &file,
            index,
            file_len,
            self.settings.record_bytes_max,
            metas,
        )
        .map_err(io_err(&path))?;
        if let Some(what) = scan.problem {
            if !is_last {
                return Err(SegmentError::Corrupt {
                    dir: self.dir.clone(),
                    segment: index,
                    offset: scan.end,
                    what,
                });
            }
            // A crash mid-append leaves exactly this; nothing after the cut
            // can have been acknowledged unless the disk lost synced data.
            let padding = is_padding(&file, scan.end, file_len).map_err(io_err(&path))?;
            file.set_len(scan.end).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
            let bytes = file_len - scan.end;
            self.tail_cut = Some(if padding {
                TailCut::Padding { bytes }
            } else {
                TailCut::Torn {
                    offset: scan.end,
                    bytes,
                    why: what.clone(),
                }
            });
            if padding {
                // The zeros a log file may carry past its last append (see `Vfs::open_log`).
                tracing::debug!(path = %path.display(), bytes, "segment log: cut alignment padding");
            } else {
                tracing::warn!(
                    path = %path.display(),
                    offset = scan.end,
                    cut_bytes = file_len - scan.end,
                    reason = %what,
                    "segment log: cut torn tail of newest segment (expected after a crash during append)"
                );
            }
        }
        self.segments.insert(
            index,
            Segment {
                file,
                path,
                len: scan.end,
                max_last: scan.max_last,
            },
        );
        Ok(())
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(SegmentError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Appends one record at the end of the current segment (starting a new
    /// segment if needed). Not durable until [`SegmentLog::sync`] returns.
    pub fn append(&mut self, first: u64, last: u64, body: &[u8]) -> Result<RecordLoc> {
        self.append_parts(first, last, &[body])
    }

    /// Appends one record whose body is `parts` concatenated, without joining them first.
    pub fn append_parts(&mut self, first: u64, last: u64, parts: &[&[u8]]) -> Result<RecordLoc> {
        let header = record::encode_header(first, last, parts);
        self.append_encoded(last, header, parts)
    }

    /// [`SegmentLog::append_parts`] of `parts` then `tail`, where `tail_crc` has already seen
    /// exactly `tail` (the checksum is combined, not recomputed over the tail).
    pub fn append_parts_tail_crc(
        &mut self,
        first: u64,
        last: u64,
        parts: &[&[u8]],
        tail: &[u8],
        tail_crc: &crc32fast::Hasher,
    ) -> Result<RecordLoc> {
        let header = record::encode_header_tail_crc(first, last, parts, tail.len(), tail_crc);
        let mut all = parts.to_vec();
        all.push(tail);
        self.append_encoded(last, header, &all)
    }

    fn append_encoded(
        &mut self,
        last: u64,
        header: [u8; HEADER_BYTES as usize],
        parts: &[&[u8]],
    ) -> Result<RecordLoc> {
        self.check_poisoned()?;
        let body_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if body_len > self.settings.record_bytes_max {
            return Err(SegmentError::TooLarge {
                len: body_len,
                max: self.settings.record_bytes_max,
            });
        }
        let record_bytes = HEADER_BYTES + body_len;
        let index = self.segment_for(record_bytes)?;
        let seg = self
            .segments
            .get_mut(&index)
            .expect("segment_for returns a live segment");
        let offset = seg.len;
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(&header[..]);
        all.extend_from_slice(parts);
        // Mark unsynced before writing: a partly failed write may still have
        // dirtied pages, and sync should cover them.
        self.unsynced.insert(index);
        seg.file
            .write_parts_at(&all, offset)
            .map_err(io_err(&seg.path))?;
        seg.len += record_bytes;
        seg.max_last = Some(seg.max_last.map_or(last, |m| m.max(last)));
        Ok(RecordLoc {
            segment: index,
            offset,
        })
    }

    /// Index of the segment the next `record_bytes` should go to.
    fn segment_for(&mut self, record_bytes: u64) -> Result<u64> {
        let Some((&index, seg)) = self.segments.last_key_value() else {
            return self.create_segment(0);
        };
        // An empty segment takes any record, so oversized records still fit.
        if seg.len == 0 || seg.len.saturating_add(record_bytes) <= self.settings.segment_bytes_max {
            return Ok(index);
        }
        self.seal(index)?;
        self.create_segment(index + 1)
    }

    /// Makes a full segment final before any later segment is written, so
    /// after a crash only the newest segment can have a torn tail. The
    /// truncate drops stray bytes a failed write may have left past `len`.
    fn seal(&mut self, index: u64) -> Result<()> {
        let seg = &self.segments[&index];
        let res = seg
            .file
            .set_len(seg.len)
            .and_then(|()| seg.file.sync_data());
        if let Err(e) = res {
            self.poisoned = true;
            return Err(io_err(&seg.path)(e));
        }
        self.unsynced.remove(&index);
        Ok(())
    }

    fn create_segment(&mut self, index: u64) -> Result<u64> {
        let path = segment_path(&self.dir, index);
        let file = self.vfs.open_log(&path, true).map_err(io_err(&path))?;
        self.dir_unsynced = true;
        self.segments.insert(
            index,
            Segment {
                file,
                path,
                len: 0,
                max_last: None,
            },
        );
        Ok(index)
    }

    /// Makes every append so far durable: syncs the data of segments written
    /// since the last sync and the directory if segments were created or
    /// removed. Acknowledge to peers only after this returns `Ok`.
    pub fn sync(&mut self) -> Result<()> {
        self.check_poisoned()?;
        for &index in &self.unsynced {
            let Some(seg) = self.segments.get(&index) else {
                continue;
            };
            if let Err(e) = seg.file.sync_data() {
                // After a failed fsync the page cache state is unknown
                // (pages may be marked clean yet never written): stop here.
                self.poisoned = true;
                return Err(io_err(&seg.path)(e));
            }
        }
        self.unsynced.clear();
        if self.dir_unsynced {
            if let Err(e) = self.vfs.sync_dir(&self.dir) {
                self.poisoned = true;
                return Err(io_err(&self.dir)(e));
            }
            self.dir_unsynced = false;
        }
        Ok(())
    }

    fn segment_at(&self, loc: RecordLoc) -> Result<&Segment<V::File>> {
        let seg = self
            .segments
            .get(&loc.segment)
            .ok_or_else(|| SegmentError::BadLocation {
                loc,
                what: "no such segment (released or never written)".into(),
            })?;
        if loc.offset >= seg.len {
            return Err(SegmentError::BadLocation {
                loc,
                what: format!("offset past segment end {}", seg.len),
            });
        }
        Ok(seg)
    }

    fn invalid(&self, loc: RecordLoc, path: &Path, e: Invalid) -> SegmentError {
        match e {
            Invalid::Io(source) => SegmentError::Io {
                path: path.to_path_buf(),
                source,
            },
            Invalid::Bad(what) => SegmentError::Corrupt {
                dir: self.dir.clone(),
                segment: loc.segment,
                offset: loc.offset,
                what,
            },
        }
    }

    /// Reads one record and verifies its magic, length and crc.
    pub fn read(&self, loc: RecordLoc) -> Result<(RecordMeta, Vec<u8>)> {
        let seg = self.segment_at(loc)?;
        let mut body = Vec::new();
        let h = record::read_record(
            &seg.file,
            loc.offset,
            seg.len,
            self.settings.record_bytes_max,
            &mut body,
        )
        .map_err(|e| self.invalid(loc, &seg.path, e))?;
        Ok((
            RecordMeta {
                loc,
                first: h.first,
                last: h.last,
                body_len: h.len,
            },
            body,
        ))
    }

    /// Fills `buf` from the body of the record at `loc`, starting
    /// `body_offset` bytes into the body. For random reads of large bodies:
    /// the header's magic and bounds are checked but the body crc is NOT, as
    /// that needs the whole body; it was verified when the record was
    /// scanned by `open` (or written by `append`).
    pub fn read_body_range(&self, loc: RecordLoc, body_offset: u64, buf: &mut [u8]) -> Result<()> {
        let seg = self.segment_at(loc)?;
        let h = record::read_header(
            &seg.file,
            loc.offset,
            seg.len,
            self.settings.record_bytes_max,
        )
        .map_err(|e| self.invalid(loc, &seg.path, e))?;
        let end = body_offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > u64::from(h.len)) {
            return Err(SegmentError::BadLocation {
                loc,
                what: format!(
                    "range {body_offset}+{} outside body of {} bytes",
                    buf.len(),
                    h.len
                ),
            });
        }
        seg.file
            .read_at(buf, loc.offset + HEADER_BYTES + body_offset)
            .map_err(io_err(&seg.path))
    }

    /// Deletes every whole segment, other than the current one, whose
    /// records all have `last <= last`; returns how many were deleted. The
    /// removals are made durable before returning.
    pub fn release_through(&mut self, last: u64) -> Result<usize> {
        let current = self.segments.last_key_value().map(|(&index, _)| index);
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .filter(|(&index, seg)| {
                Some(index) != current && seg.max_last.is_none_or(|m| m <= last)
            })
            .map(|(&index, _)| index)
            .collect();
        for &index in &doomed {
            let path = &self.segments[&index].path;
            self.vfs.remove_file(path).map_err(io_err(path))?;
            self.dir_unsynced = true;
            if let Some(seg) = self.segments.remove(&index) {
                self.vfs.retire(seg.file);
            }
            self.unsynced.remove(&index);
        }
        if !doomed.is_empty() {
            self.vfs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            self.dir_unsynced = false;
        }
        Ok(doomed.len())
    }

    /// Number of segments and valid bytes in them.
    /// What opening the log cut from its end: padding, a torn record, or nothing.
    pub fn tail_cut(&self) -> Option<&TailCut> {
        self.tail_cut.as_ref()
    }

    pub fn stats(&self) -> SegmentStats {
        SegmentStats {
            segments: self.segments.len(),
            bytes: self.segments.values().map(|s| s.len).sum(),
        }
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings the log was opened with.
    pub fn settings(&self) -> &SegmentSettings {
        &self.settings
    }
}
