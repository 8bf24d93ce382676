//! Tests for the segment log, on real files in a temp directory.

use super::*;
use crate::vfs::StdVfs;

/// Small deterministic generator (splitmix64) so tests need no rand crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn small(segment_bytes_max: u64) -> SegmentSettings {
    SegmentSettings {
        segment_bytes_max,
        ..SegmentSettings::default()
    }
}

fn open(dir: &Path, settings: SegmentSettings) -> (SegmentLog<StdVfs>, Vec<RecordMeta>) {
    SegmentLog::open(StdVfs, dir, settings).expect("open")
}

/// Appends `n` records with keys (i, i) and body = i repeated `len(i)` times.
fn fill(
    log: &mut SegmentLog<StdVfs>,
    keys: std::ops::Range<u64>,
    len: impl Fn(u64) -> usize,
) -> Vec<(RecordMeta, Vec<u8>)> {
    let mut out = Vec::new();
    for i in keys {
        let body = vec![i as u8; len(i)];
        let loc = log.append(i, i, &body).unwrap();
        out.push((
            RecordMeta {
                loc,
                first: i,
                last: i,
                body_len: body.len() as u32,
            },
            body,
        ));
    }
    out
}

fn assert_log(log: &SegmentLog<StdVfs>, metas: &[RecordMeta], expected: &[(RecordMeta, Vec<u8>)]) {
    let want: Vec<RecordMeta> = expected.iter().map(|(m, _)| *m).collect();
    assert_eq!(metas, &want[..]);
    for (meta, body) in expected {
        let (got_meta, got_body) = log.read(meta.loc).unwrap();
        assert_eq!(&got_meta, meta);
        assert_eq!(&got_body, body);
    }
}

fn seg_file(dir: &Path, index: u64) -> PathBuf {
    segment_path(dir, index)
}

#[test]
fn append_sync_reopen_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, metas) = open(&dir, SegmentSettings::default());
    assert!(metas.is_empty());
    assert_eq!(log.stats(), SegmentStats::default());
    let expected = fill(&mut log, 0..50, |i| (i * 37 % 300) as usize);
    log.sync().unwrap();
    let all: Vec<RecordMeta> = expected.iter().map(|(m, _)| *m).collect();
    assert_log(&log, &all, &expected);
    let stats = log.stats();
    assert_eq!(stats.segments, 1);
    drop(log);

    let (log, metas) = open(&dir, SegmentSettings::default());
    assert_log(&log, &metas, &expected);
    assert_eq!(log.stats(), stats);
}

/// A crash (no clean close) can leave a log file's alignment padding after the last record;
/// reopening must see exactly the records, and appends must continue after them.
#[test]
fn reopen_after_crash_with_padding_keeps_records_and_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, _) = open(&dir, SegmentSettings::default());
    let mut expected = fill(&mut log, 0..7, |i| (i * 1001 % 5000) as usize + 1);
    log.sync().unwrap();
    std::mem::forget(log);
    let (mut log, metas) = open(&dir, SegmentSettings::default());
    assert_log(&log, &metas, &expected);
    expected.extend(fill(&mut log, 7..12, |i| (i * 777 % 3000) as usize + 1));
    log.sync().unwrap();
    std::mem::forget(log);
    let (log, metas) = open(&dir, SegmentSettings::default());
    assert_log(&log, &metas, &expected);
    let end = expected
        .last()
        .map(|(m, _)| m.loc.offset + HEADER_BYTES + m.body_len as u64);
    assert_eq!(Some(log.stats().bytes), end);
}

/// Zeros past the last record shorter than one alignment block are padding (nothing lost);
/// as long as a block, or with any non-zero byte, they are a torn record.
#[test]
fn padding_is_told_apart_from_a_torn_tail() {
    let align = crate::vfs::DIRECT_ALIGN as u64;
    for (extra, nonzero_at, want_padding) in [
        (align - 1, None, true),
        (17, None, true),
        (align, None, false),
        (100, Some(50), false),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let (mut log, _) = open(&dir, SegmentSettings::default());
        let expected = fill(&mut log, 0..3, |i| 100 + i as usize);
        log.sync().unwrap();
        drop(log);
        let path = seg_file(&dir, 0);
        let f = StdVfs.open(&path, false).unwrap();
        let end = f.len().unwrap();
        let mut tail = vec![0u8; extra as usize];
        if let Some(i) = nonzero_at {
            tail[i] = 7;
        }
        f.write_at(&tail, end).unwrap();
        drop(f);
        let (log, metas) = open(&dir, SegmentSettings::default());
        assert_log(&log, &metas, &expected);
        match log.tail_cut() {
            Some(TailCut::Padding { bytes }) => {
                assert!(
                    want_padding,
                    "{extra} bytes, non-zero at {nonzero_at:?}: padding?"
                );
                assert_eq!(*bytes, extra);
            }
            Some(TailCut::Torn { offset, bytes, .. }) => {
                assert!(
                    !want_padding,
                    "{extra} zero bytes are padding, not a torn record"
                );
                assert_eq!((*offset, *bytes), (end, extra));
            }
            None => panic!("{extra} bytes past the end were not cut"),
        }
        assert_eq!(StdVfs.open(&path, false).unwrap().len().unwrap(), end);
    }
}

#[test]
fn rollover_and_oversized_record() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = small(1000);
    let (mut log, _) = open(tmp.path(), settings);
    // 3 records of 28+300 = 984 bytes fit in 1000; the 4th rolls over.
    let mut expected = fill(&mut log, 0..7, |_| 300);
    let segs: Vec<u64> = expected.iter().map(|(m, _)| m.loc.segment).collect();
    assert_eq!(segs, vec![0, 0, 0, 1, 1, 1, 2]);
    // An oversized record starts its own segment, and the next one moves on.
    expected.extend(fill(&mut log, 7..8, |_| 5000));
    expected.extend(fill(&mut log, 8..9, |_| 10));
    assert_eq!(
        expected[7].0.loc,
        RecordLoc {
            segment: 3,
            offset: 0
        }
    );
    assert_eq!(
        expected[8].0.loc,
        RecordLoc {
            segment: 4,
            offset: 0
        }
    );
    log.sync().unwrap();
    assert_eq!(log.stats().segments, 5);
    let names: Vec<PathBuf> = StdVfs.list_dir(tmp.path()).unwrap();
    assert_eq!(
        names,
        (0..5).map(|i| seg_file(tmp.path(), i)).collect::<Vec<_>>()
    );
    assert_eq!(names[0].file_name().unwrap(), "0000000000000000.seg");
    drop(log);

    let (log, metas) = open(tmp.path(), settings);
    assert_log(&log, &metas, &expected);
}

/// Ways a crash (or damage) can leave the end of the newest segment.
#[derive(Debug, Clone, Copy)]
enum Tear {
    TruncateInBody,
    TruncateInHeader,
    AppendGarbage,
    FlipBodyByte,
    FlipHeaderKey,
}

fn tear_tail(tear: Tear) {
    let tmp = tempfile::tempdir().unwrap();
    let settings = small(1000);
    let (mut log, _) = open(tmp.path(), settings);
    let expected = fill(&mut log, 0..5, |_| 300); // segment 1 holds records 3, 4
    log.sync().unwrap();
    drop(log);

    let path = seg_file(tmp.path(), 1);
    let f = StdVfs.open(&path, false).unwrap();
    let len = f.len().unwrap();
    let last_off = expected[4].0.loc.offset;
    let mut keep = 4; // records surviving the damage
    match tear {
        Tear::TruncateInBody => f.set_len(len - 7).unwrap(),
        Tear::TruncateInHeader => f.set_len(last_off + 10).unwrap(),
        Tear::AppendGarbage => {
            f.write_at(b"\x01garbage that is not a record", len)
                .unwrap();
            keep = 5;
        }
        Tear::FlipBodyByte => f.write_at(&[0xEE], last_off + HEADER_BYTES + 123).unwrap(),
        Tear::FlipHeaderKey => f.write_at(&[0xEE], last_off + 20).unwrap(),
    }
    drop(f);

    let (mut log, metas) = open(tmp.path(), settings);
    assert_log(&log, &metas, &expected[..keep]);
    let valid_end = if keep == 5 { len } else { last_off };
    assert!(
        matches!(log.tail_cut(), Some(TailCut::Torn { offset, .. }) if *offset == valid_end),
        "{tear:?}: a torn tail is told apart from padding: {:?}",
        log.tail_cut()
    );
    assert_eq!(
        StdVfs.open(&path, false).unwrap().len().unwrap(),
        valid_end,
        "{tear:?}"
    );

    // Appends continue right after the cut and survive another reopen.
    let mut expected = expected[..keep].to_vec();
    expected.extend(fill(&mut log, 10..14, |i| i as usize - 5)); // small: stays in segment 1
    assert_eq!(
        expected[keep].0.loc,
        RecordLoc {
            segment: 1,
            offset: valid_end
        }
    );
    log.sync().unwrap();
    drop(log);
    let (log, metas) = open(tmp.path(), settings);
    assert_log(&log, &metas, &expected);
}

#[test]
fn torn_tail_truncated_in_body() {
    tear_tail(Tear::TruncateInBody);
}

#[test]
fn torn_tail_truncated_in_header() {
    tear_tail(Tear::TruncateInHeader);
}

#[test]
fn torn_tail_garbage_appended() {
    tear_tail(Tear::AppendGarbage);
}

#[test]
fn torn_tail_flipped_body_byte() {
    tear_tail(Tear::FlipBodyByte);
}

#[test]
fn torn_tail_flipped_header_key() {
    tear_tail(Tear::FlipHeaderKey);
}

#[test]
fn huge_length_field_is_corruption_not_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), SegmentSettings::default());
    let expected = fill(&mut log, 0..2, |_| 10);
    log.sync().unwrap();
    drop(log);
    let f = StdVfs.open(&seg_file(tmp.path(), 0), false).unwrap();
    // Length field of record 1 claims ~4 GiB (> record_bytes_max).
    f.write_at(&u32::MAX.to_le_bytes(), expected[1].0.loc.offset + 4)
        .unwrap();
    drop(f);
    let (log, metas) = open(tmp.path(), SegmentSettings::default());
    assert_log(&log, &metas, &expected[..1]);
}

#[test]
fn corruption_in_older_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = small(1000);
    let (mut log, _) = open(tmp.path(), settings);
    let expected = fill(&mut log, 0..5, |_| 300);
    log.sync().unwrap();
    drop(log);
    let f = StdVfs.open(&seg_file(tmp.path(), 0), false).unwrap();
    let off = expected[1].0.loc.offset + HEADER_BYTES + 5;
    f.write_at(&[0xEE], off).unwrap();
    drop(f);
    let err = SegmentLog::open(StdVfs, tmp.path(), settings)
        .err()
        .expect("must fail");
    match &err {
        SegmentError::Corrupt {
            segment,
            offset,
            what,
            ..
        } => {
            assert_eq!((*segment, *offset), (0, expected[1].0.loc.offset));
            assert!(what.contains("crc"), "{what}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("0000000000000000.seg") && msg.contains("Restore"),
        "{msg}"
    );
    // The damaged file must be left untouched for the operator.
    assert_eq!(
        StdVfs
            .open(&seg_file(tmp.path(), 0), false)
            .unwrap()
            .len()
            .unwrap(),
        3 * 328
    );
}

#[test]
fn release_through_deletes_only_fully_released_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = small(1000);
    let (mut log, _) = open(tmp.path(), settings);
    // Three records per segment: segments hold keys {0,1,2} {3,4,5} {6,7,8} {9}.
    let expected = fill(&mut log, 0..10, |_| 300);
    log.sync().unwrap();
    assert_eq!(log.stats().segments, 4);
    assert_eq!(log.release_through(1).unwrap(), 0);
    assert_eq!(log.release_through(4).unwrap(), 1);
    assert!(!seg_file(tmp.path(), 0).exists());
    assert_eq!(log.stats().segments, 3);
    assert!(log.read(expected[0].0.loc).is_err());
    assert_log(
        &log,
        &log.read(expected[3].0.loc).map(|(m, _)| vec![m]).unwrap(),
        &expected[3..4],
    );
    // The current segment is never released, even when fully covered.
    assert_eq!(log.release_through(u64::MAX).unwrap(), 2);
    assert_eq!(log.stats().segments, 1);
    assert!(seg_file(tmp.path(), 3).exists());
    let more = fill(&mut log, 10..12, |_| 300);
    log.sync().unwrap();
    drop(log);

    let (log, metas) = open(tmp.path(), settings);
    let mut want = expected[9..].to_vec();
    want.extend(more);
    assert_log(&log, &metas, &want);
}

#[test]
fn random_records_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = small(20_000);
    let (mut log, _) = open(tmp.path(), settings);
    let mut rng = Rng(0x5EED);
    let mut expected = Vec::new();
    let mut key = 0u64;
    for round in 0..5 {
        for _ in 0..100 {
            let len = match rng.below(10) {
                0 => 0,
                1 => 20_000 + rng.below(10_000) as usize, // oversized: own segment
                _ => rng.below(3000) as usize,
            };
            let body = rng.bytes(len);
            let span = rng.below(5);
            let loc = log.append(key, key + span, &body).unwrap();
            expected.push((
                RecordMeta {
                    loc,
                    first: key,
                    last: key + span,
                    body_len: len as u32,
                },
                body,
            ));
            key += span + 1;
        }
        log.sync().unwrap();
        drop(log);
        let (reopened, metas) = open(tmp.path(), settings);
        assert_log(&reopened, &metas, &expected);
        log = reopened;
        let _ = round;
    }
    // Random partial body reads match the body bytes.
    for _ in 0..500 {
        let (meta, body) = &expected[rng.below(expected.len() as u64) as usize];
        let start = rng.below(u64::from(meta.body_len) + 1);
        let n = rng.below(u64::from(meta.body_len) - start + 1) as usize;
        let mut buf = vec![0u8; n];
        log.read_body_range(meta.loc, start, &mut buf).unwrap();
        assert_eq!(&buf[..], &body[start as usize..start as usize + n]);
    }
    let total: u64 = expected
        .iter()
        .map(|(m, _)| HEADER_BYTES + u64::from(m.body_len))
        .sum();
    assert_eq!(log.stats().bytes, total);
}

#[test]
fn bad_requests_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = SegmentSettings {
        segment_bytes_max: 1000,
        record_bytes_max: 100,
    };
    let (mut log, _) = open(tmp.path(), settings);
    assert!(matches!(
        log.append(0, 0, &[0; 101]),
        Err(SegmentError::TooLarge { len: 101, max: 100 })
    ));
    let loc = log.append(0, 0, &[1; 100]).unwrap();
    let mut buf = [0u8; 10];
    assert!(matches!(
        log.read_body_range(loc, 91, &mut buf),
        Err(SegmentError::BadLocation { .. })
    ));
    assert!(matches!(
        log.read_body_range(loc, u64::MAX, &mut buf),
        Err(SegmentError::BadLocation { .. })
    ));
    log.read_body_range(loc, 90, &mut buf).unwrap();
    let past = RecordLoc {
        segment: 0,
        offset: 128,
    };
    assert!(matches!(
        log.read(past),
        Err(SegmentError::BadLocation { .. })
    ));
    assert!(matches!(
        log.read(RecordLoc {
            segment: 9,
            offset: 0
        }),
        Err(SegmentError::BadLocation { .. })
    ));
    // A location inside a record is not a record.
    assert!(matches!(
        log.read(RecordLoc {
            segment: 0,
            offset: 1
        }),
        Err(SegmentError::Corrupt { .. })
    ));
    let bad = SegmentSettings {
        record_bytes_max: RECORD_BYTES_LIMIT + 1,
        ..settings
    };
    assert!(matches!(
        SegmentLog::open(StdVfs, tmp.path(), bad),
        Err(SegmentError::Settings { .. })
    ));
}

#[test]
fn ignores_foreign_files_and_keeps_empty_segment() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    std::fs::write(tmp.path().join("00ff.seg"), b"short name, not ours").unwrap();
    let (mut log, metas) = open(tmp.path(), small(1000));
    assert!(metas.is_empty());
    let expected = fill(&mut log, 0..2, |_| 10);
    log.sync().unwrap();
    drop(log);
    // A crash right after a segment was created leaves an empty newest file.
    std::fs::write(seg_file(tmp.path(), 1), b"").unwrap();
    let (mut log, metas) = open(tmp.path(), small(1000));
    assert_log(&log, &metas, &expected);
    assert_eq!(
        log.append(5, 5, b"x").unwrap(),
        RecordLoc {
            segment: 1,
            offset: 0
        }
    );
}

#[test]
fn rollover_seals_stray_bytes_of_failed_write() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = small(1000);
    let (mut log, _) = open(tmp.path(), settings);
    let expected = fill(&mut log, 0..2, |_| 300);
    // Simulate bytes left past the end by a write that failed half-way.
    let end = 2 * (HEADER_BYTES + 300);
    StdVfs
        .open(&seg_file(tmp.path(), 0), false)
        .unwrap()
        .write_at(&[0xAA; 50], end)
        .unwrap();
    let mut all = expected.clone();
    all.extend(fill(&mut log, 2..3, |_| 700)); // rolls over, sealing segment 0
    assert_eq!(all[2].0.loc.segment, 1);
    log.sync().unwrap();
    drop(log);
    assert_eq!(
        std::fs::metadata(seg_file(tmp.path(), 0)).unwrap().len(),
        end
    );
    let (log, metas) = open(tmp.path(), settings);
    assert_log(&log, &metas, &all);
}
