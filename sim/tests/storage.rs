//! Tests of the crash-faithful simulated storage (`haven_sim::storage`): the `SimVfs` model on
//! its own and under the segment log, and the redb backend under redb.

use std::io;
use std::path::{Path, PathBuf};

use haven_runtime::segment::{SegmentError, SegmentLog, SegmentSettings};
use haven_runtime::vfs::{VFile, Vfs};
use haven_sim::storage::{FaultKind, SimRedbDisk, SimVfs};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

/// splitmix64 for test workloads.
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
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn read_all(f: &impl VFile) -> Vec<u8> {
    let mut buf = vec![0u8; f.len().unwrap() as usize];
    f.read_at(&mut buf, 0).unwrap();
    buf
}

// ---------------------------------------------------------------------------------------------
// SimVfs model

#[test]
fn synced_data_survives_unsynced_is_dropped() {
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(&p("/d")).unwrap();
    let f = vfs.open(&p("/d/f"), true).unwrap();
    vfs.sync_dir(&p("/d")).unwrap();
    f.write_at(b"hello", 0).unwrap();
    f.sync_data().unwrap();
    f.write_at(b"world", 5).unwrap();
    f.set_len(3).unwrap();
    assert_eq!(read_all(&f), b"hel");
    vfs.crash(7, false);
    let err = f.read_at(&mut [0u8; 1], 0).unwrap_err();
    assert!(
        err.to_string().contains("stale handle after crash"),
        "{err}"
    );
    assert!(f.write_at(b"x", 0).is_err());
    let f = vfs.open(&p("/d/f"), false).unwrap();
    assert_eq!(read_all(&f), b"hello");
    assert_eq!(vfs.unsynced_changes(), 0);
    assert_eq!(vfs.stats().crashes, 1);
}

/// A simulated file system has no links: a path names itself (the agent registers its disks'
/// source paths through `canonicalize`).
#[test]
fn a_simulated_path_is_its_own_canonical_name() {
    let vfs = SimVfs::new();
    assert_eq!(
        vfs.canonicalize(&p("/d/disk0.img")).unwrap(),
        p("/d/disk0.img")
    );
}

#[test]
fn names_need_a_directory_sync() {
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(&p("/d")).unwrap();
    let a = vfs.open(&p("/d/a"), true).unwrap();
    a.write_at(b"aaa", 0).unwrap();
    a.sync_data().unwrap();
    vfs.sync_dir(&p("/d")).unwrap();
    // Created, data synced, name not synced: gone. Removed, not synced: back.
    let b = vfs.open(&p("/d/b"), true).unwrap();
    b.write_at(b"bbb", 0).unwrap();
    b.sync_data().unwrap();
    vfs.remove_file(&p("/d/a")).unwrap();
    assert_eq!(vfs.list_dir(&p("/d")).unwrap(), vec![p("/d/b")]);
    // An unlinked file stays usable through its open handle.
    a.write_at(b"!", 3).unwrap();
    vfs.crash(1, false);
    assert_eq!(vfs.list_dir(&p("/d")).unwrap(), vec![p("/d/a")]);
    assert_eq!(vfs.contents(&p("/d/a")).unwrap(), b"aaa");
    // Now both changes synced: they stick.
    vfs.open(&p("/d/b"), true).unwrap();
    vfs.remove_file(&p("/d/a")).unwrap();
    vfs.sync_dir(&p("/d")).unwrap();
    vfs.crash(2, false);
    assert_eq!(vfs.list_dir(&p("/d")).unwrap(), vec![p("/d/b")]);
    assert!(vfs.open(&p("/d/a"), false).is_err());
}

#[test]
fn directories_follow_the_same_rule() {
    let vfs = SimVfs::new();
    vfs.create_dir_all(&p("/x/y")).unwrap();
    let f = vfs.open(&p("/x/y/f"), true).unwrap();
    f.sync_data().unwrap();
    vfs.sync_dir(&p("/x/y")).unwrap();
    vfs.sync_dir(&p("/x")).unwrap();
    // "/x" itself was never made durable in "/": the whole subtree is lost.
    vfs.crash(0, false);
    let err = vfs.list_dir(&p("/x")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(vfs.open(&p("/x/y/f"), true).is_err(), "parent is gone");
    assert!(vfs.open(&p("/d"), true).is_ok());
    assert_eq!(vfs.list_dir(&p("/")).unwrap(), vec![p("/d")]);
}

#[test]
fn punch_hole_and_set_len() {
    let vfs = SimVfs::new();
    let f = vfs.open(&p("/f"), true).unwrap();
    f.write_at(&[9u8; 100], 0).unwrap();
    f.punch_hole(10, 20).unwrap();
    f.punch_hole(90, 1000).unwrap();
    assert_eq!(f.len().unwrap(), 100);
    let buf = read_all(&f);
    assert!(buf[10..30].iter().all(|&b| b == 0));
    assert!(buf[90..].iter().all(|&b| b == 0));
    assert_eq!(buf[30], 9);
    f.set_len(120).unwrap();
    assert_eq!(f.len().unwrap(), 120);
    let err = f.read_at(&mut [0u8; 2], 119).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

/// Crashes a file holding synced "A"*64 and an unsynced write of "B"*64 after it.
fn torn_image(seed: u64) -> Vec<u8> {
    let vfs = SimVfs::new();
    let f = vfs.open(&p("/f"), true).unwrap();
    vfs.sync_dir(&p("/")).unwrap();
    f.write_at(&[b'A'; 64], 0).unwrap();
    f.sync_data().unwrap();
    f.write_at(&[b'B'; 64], 64).unwrap();
    vfs.crash(seed, true);
    vfs.contents(&p("/f")).unwrap()
}

#[test]
fn torn_tail_is_a_prefix_of_the_last_write() {
    let mut lengths = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let img = torn_image(seed);
        assert_eq!(img, torn_image(seed), "deterministic for seed {seed}");
        assert!(img.len() >= 64 && img.len() <= 128, "seed {seed}");
        assert!(img[..64].iter().all(|&b| b == b'A'), "seed {seed}");
        assert!(img[64..].iter().all(|&b| b == b'B'), "seed {seed}");
        lengths.insert(img.len());
    }
    assert!(lengths.contains(&64), "some crashes drop the write");
    assert!(lengths.contains(&128), "some crashes keep it whole");
    assert!(lengths.len() > 10, "most crashes tear it: {lengths:?}");
}

#[test]
fn injected_faults_are_errors() {
    let vfs = SimVfs::new();
    let f = vfs.open(&p("/f"), true).unwrap();
    vfs.fail_after(2, FaultKind::DiskFull);
    f.write_at(b"ab", 0).unwrap();
    f.write_at(b"cd", 2).unwrap();
    let err = f.write_at(b"ef", 4).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    // A full disk still reads, syncs, truncates.
    assert_eq!(read_all(&f), b"abcd");
    f.set_len(2).unwrap();
    f.sync_data().unwrap();
    assert!(vfs.open(&p("/g"), true).is_err());
    vfs.set_fault(Some(FaultKind::Io));
    assert!(f.read_at(&mut [0u8; 1], 0).is_err());
    assert!(f.sync_data().is_err());
    assert!(vfs.list_dir(&p("/")).is_err());
    vfs.set_fault(None);
    assert_eq!(read_all(&f), b"ab");
    let stats = vfs.stats();
    assert_eq!(stats.faults, 5);
    assert!(stats.ops > stats.faults);
}

// ---------------------------------------------------------------------------------------------
// SegmentLog on SimVfs

const LOG_DIR: &str = "/host/ps/segments";

fn log_settings() -> SegmentSettings {
    SegmentSettings {
        segment_bytes_max: 300,
        ..SegmentSettings::default()
    }
}

type Expected = Vec<(u64, Vec<u8>)>;

/// Appends a seeded workload with syncs in between; returns (all appended, count synced).
fn segment_workload(vfs: &SimVfs, rng: &mut Rng) -> (Expected, usize) {
    let (mut log, metas) = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings()).unwrap();
    assert!(metas.is_empty());
    let mut appended = Vec::new();
    let mut synced = 0;
    for i in 0..(1 + rng.below(40)) {
        let body: Vec<u8> = (0..rng.below(120)).map(|_| rng.next() as u8).collect();
        log.append(i, i, &body).unwrap();
        appended.push((i, body));
        if rng.below(4) == 0 {
            log.sync().unwrap();
            synced = appended.len();
        }
    }
    (appended, synced)
}

/// Reopens the log and checks it holds all synced records plus a prefix of the rest.
fn check_reopen(vfs: &SimVfs, appended: &Expected, synced: usize, seed: u64) -> usize {
    let (log, metas) = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings())
        .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
    assert!(metas.len() >= synced, "seed {seed}: lost synced records");
    assert!(
        metas.len() <= appended.len(),
        "seed {seed}: invented records"
    );
    for (meta, (key, body)) in metas.iter().zip(appended) {
        assert_eq!((meta.first, meta.last), (*key, *key), "seed {seed}");
        let (_, got) = log.read(meta.loc).unwrap();
        assert_eq!(&got, body, "seed {seed}: record {key}");
    }
    metas.len()
}

#[test]
fn segment_log_keeps_exactly_synced_records_across_crashes() {
    let (mut extra_survivors, mut torn_cuts) = (0, 0);
    for seed in 0..300 {
        let vfs = SimVfs::new();
        vfs.create_dir_all_synced(Path::new("/host/ps")).unwrap();
        let mut rng = Rng(seed);
        let (appended, synced) = segment_workload(&vfs, &mut rng);
        // Sealing a full segment syncs it, so a few unsynced records may survive even a plain
        // crash; what must hold is "all synced records, then a prefix of the rest".
        vfs.crash(seed, seed % 3 != 0);
        let bytes_before = log_bytes(&vfs);
        let got = check_reopen(&vfs, &appended, synced, seed);
        extra_survivors += got - synced;
        torn_cuts += usize::from(log_bytes(&vfs) < bytes_before);
        // Reopen repaired and synced the cut: a second crash changes nothing.
        vfs.crash(seed ^ 0xFFFF, true);
        assert_eq!(
            check_reopen(&vfs, &appended, synced, seed),
            got,
            "seed {seed}"
        );
    }
    assert!(
        extra_survivors > 0,
        "torn crashes sometimes keep unsynced records"
    );
    assert!(
        torn_cuts > 10,
        "torn records were cut only {torn_cuts} times"
    );
}

/// Bytes in all segment files (valid records and torn tails).
fn log_bytes(vfs: &SimVfs) -> usize {
    let files = vfs.list_dir(Path::new(LOG_DIR)).unwrap();
    files.iter().map(|f| vfs.contents(f).unwrap().len()).sum()
}

fn io_source(e: &SegmentError) -> &io::Error {
    match e {
        SegmentError::Io { source, .. } => source,
        other => panic!("expected an I/O error, got {other}"),
    }
}

#[test]
fn segment_log_surfaces_disk_full_and_io_errors() {
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(Path::new("/host/ps")).unwrap();
    let (mut log, _) = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings()).unwrap();
    for i in 0..5 {
        log.append(i, i, &[i as u8; 50]).unwrap();
    }
    log.sync().unwrap();
    vfs.fail_after(3, FaultKind::DiskFull);
    let err = (5..100)
        .find_map(|i| log.append(i, i, &[i as u8; 50]).err())
        .expect("disk full must surface");
    assert_eq!(io_source(&err).kind(), io::ErrorKind::StorageFull);
    // The failed append may have left nothing to sync; write one more record, then fail the sync.
    vfs.set_fault(None);
    log.append(200, 200, b"y").unwrap();
    vfs.set_fault(Some(FaultKind::Io));
    let err = log.sync().unwrap_err();
    assert!(io_source(&err).to_string().contains("EIO"), "{err}");
    assert!(matches!(
        log.append(99, 99, b"x"),
        Err(SegmentError::Poisoned { .. })
    ));
    assert!(SegmentLog::open(vfs.clone(), LOG_DIR, log_settings()).is_err());
    vfs.set_fault(None);
    vfs.crash(5, true);
    let (_, metas) = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings()).unwrap();
    assert!(metas.len() >= 5);
    assert_eq!(metas[4].last, 4);
}

/// A log directory that cannot be listed (its permissions changed) is an error, never a log
/// opened empty over the records it hides (cargo-mutants' `list_segments` mutant taking every
/// listing error for a missing directory; docs/testing.md).
#[test]
fn a_log_directory_that_cannot_be_listed_is_an_error_not_an_empty_log() {
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(Path::new("/host/ps")).unwrap();
    let (mut log, _) = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings()).unwrap();
    for i in 0..3 {
        log.append(i, i, &[i as u8; 40]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    vfs.set_fault(Some(FaultKind::Unlistable));
    let err = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings())
        .err()
        .expect("an unlistable log directory must not open");
    assert_eq!(
        io_source(&err).kind(),
        io::ErrorKind::PermissionDenied,
        "{err}"
    );
    assert!(
        err.to_string().contains(LOG_DIR),
        "the error names the directory: {err}"
    );
    vfs.set_fault(None);
    let (_, metas) = SegmentLog::open(vfs.clone(), LOG_DIR, log_settings()).unwrap();
    assert_eq!(
        metas.len(),
        3,
        "the records are all there once it can be listed"
    );
}

/// A simulated file has no hole information: every offset may hold data (`VFile::next_data`'s
/// default), so a copy of a simulated disk reads all of it and skips nothing.
#[test]
fn a_simulated_file_may_hold_data_anywhere() {
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(Path::new("/d")).unwrap();
    let f = vfs.open(Path::new("/d/f"), true).unwrap();
    f.set_len(1 << 20).unwrap();
    for off in [0, 4096, 12345, (1 << 20) - 1] {
        assert_eq!(f.next_data(off).unwrap(), Some(off));
    }
}

/// The process server's cache on a crash-faithful disk: what `sync` returned for survives a
/// power loss, on every disk's log (the cache syncs each log appended to since the last sync).
#[test]
fn cached_batches_synced_survive_a_power_loss_on_every_disk() {
    use haven_core::batch::{BatchHeader, Encoding, Op, OpKind, BLOCK_BYTES};
    use haven_core::ids::{DiskId, Epoch};
    use haven_runtime::stores::cache::Cache;
    let batch = |disk: &str, seq: u64| {
        let header = BatchHeader {
            disk: DiskId::new(disk).unwrap(),
            epoch: Epoch(1),
            first_seq: seq,
            last_seq: seq,
            first_time: haven_core::Timestamp(seq),
            last_time: haven_core::Timestamp(seq),
            consistent: true,
            ops: vec![Op {
                seq,
                block: 0,
                blocks: 1,
                kind: OpKind::Data,
            }],
            encoding: Encoding::Raw,
            raw_bytes: BLOCK_BYTES,
        };
        (header, vec![seq as u8; BLOCK_BYTES as usize])
    };
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(Path::new("/ps")).unwrap();
    let (mut cache, _) = Cache::open(vfs.clone(), Path::new("/ps"), 1 << 20).unwrap();
    for seq in 1..=5 {
        for disk in ["disk0", "disk1"] {
            let (h, d) = batch(disk, seq);
            cache.append(h, d).unwrap();
        }
        cache.sync().unwrap();
    }
    let (h, d) = batch("disk0", 6);
    cache.append(h, d).unwrap(); // not synced
    drop(cache);
    vfs.crash(3, false);
    let (_, found) = Cache::open(vfs.clone(), Path::new("/ps"), 1 << 20).unwrap();
    for disk in ["disk0", "disk1"] {
        let seqs: Vec<u64> = found
            .iter()
            .filter(|b| b.disk.as_str() == disk)
            .map(|b| b.first_seq)
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5],
            "{disk}: every synced batch, nothing more"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// redb on SimRedbDisk

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

fn open_db(disk: &SimRedbDisk) -> Database {
    Database::builder()
        .create_with_backend(disk.backend())
        .expect("database opens")
}

fn put(db: &Database, key: u64, value: &[u8], durability: Durability) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)
        .expect("no persistent savepoints");
    {
        let mut table = txn.open_table(TABLE)?;
        table.insert(&key, value)?;
    }
    txn.commit()?;
    Ok(())
}

fn get(db: &Database, key: u64) -> Option<Vec<u8>> {
    let txn = db.begin_read().unwrap();
    let table = match txn.open_table(TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return None,
        Err(e) => panic!("open table: {e}"),
    };
    table.get(&key).unwrap().map(|v| v.value().to_vec())
}

#[test]
fn redb_immediate_commit_survives_crash() {
    let disk = SimRedbDisk::new();
    let db = open_db(&disk);
    put(&db, 1, b"one", Durability::Immediate).unwrap();
    assert_eq!(disk.unsynced_changes(), 0);
    // Crash with the Database still open: the dead process cannot touch the rebooted disk.
    disk.crash();
    assert!(put(&db, 2, b"two", Durability::Immediate).is_err());
    drop(db);
    let mut db = open_db(&disk);
    assert_eq!(get(&db, 1).as_deref(), Some(&b"one"[..]));
    assert_eq!(get(&db, 2), None);
    assert!(db.check_integrity().unwrap());
}

#[test]
fn redb_non_durable_commit_recovers_to_last_durable() {
    let disk = SimRedbDisk::new();
    let db = open_db(&disk);
    put(&db, 1, b"durable", Durability::Immediate).unwrap();
    put(&db, 2, b"volatile", Durability::None).unwrap();
    put(&db, 1, b"overwritten", Durability::None).unwrap();
    assert_eq!(get(&db, 2).as_deref(), Some(&b"volatile"[..]));
    disk.crash();
    drop(db);
    let mut db = open_db(&disk);
    assert_eq!(get(&db, 1).as_deref(), Some(&b"durable"[..]));
    assert_eq!(get(&db, 2), None);
    assert!(db.check_integrity().unwrap());
    // The recovered database keeps working.
    put(&db, 3, b"after", Durability::Immediate).unwrap();
    drop(db);
    disk.crash();
    assert_eq!(get(&open_db(&disk), 3).as_deref(), Some(&b"after"[..]));
}

/// Commits a seeded workload and cuts the power (an I/O fault, then a torn crash) at a seeded
/// operation, usually in the middle of a commit. Returns the keys whose commit returned `Ok`
/// with `Durability::Immediate`, and whether the crash had unsynced writes to tear.
fn redb_power_cut(disk: &SimRedbDisk, rng: &mut Rng, seed: u64) -> (Vec<u64>, bool) {
    let db = open_db(disk);
    let mut durable = Vec::new();
    disk.fail_after(rng.below(60), FaultKind::Io);
    for key in 0..20 {
        let value = vec![key as u8; rng.below(5000) as usize];
        let immediate = rng.below(3) != 0;
        let durability = if immediate {
            Durability::Immediate
        } else {
            Durability::None
        };
        match put(&db, key, &value, durability) {
            Ok(()) if immediate => durable.push(key),
            Ok(()) => {}
            Err(_) => break,
        }
    }
    disk.set_fault(None);
    let torn = disk.unsynced_changes() > 0;
    disk.crash_torn(seed);
    drop(db);
    // Keys committed without durability are durable once a later Immediate commit succeeded.
    if let Some(&last) = durable.last() {
        durable = (0..=last).collect();
    }
    (durable, torn)
}

#[test]
fn redb_recovers_from_power_cuts_mid_commit() {
    let mut torn_crashes = 0;
    for seed in 0..100 {
        let disk = SimRedbDisk::new();
        let (durable, torn) = redb_power_cut(&disk, &mut Rng(seed), seed);
        torn_crashes += usize::from(torn);
        let mut db = Database::builder()
            .create_with_backend(disk.backend())
            .unwrap_or_else(|e| panic!("seed {seed}: reopen after power cut: {e}"));
        for &key in &durable {
            assert!(
                get(&db, key).is_some(),
                "seed {seed}: lost durable key {key}"
            );
        }
        assert!(db.check_integrity().unwrap(), "seed {seed}");
        put(&db, 99, b"alive", Durability::Immediate).unwrap();
    }
    assert!(
        torn_crashes > 10,
        "few crashes hit a commit: {torn_crashes}"
    );
}

#[test]
fn redb_faults_are_errors_not_panics() {
    let disk = SimRedbDisk::new();
    let db = open_db(&disk);
    put(&db, 1, b"one", Durability::Immediate).unwrap();
    disk.set_fault(Some(FaultKind::Io));
    assert!(put(&db, 2, &[7u8; 10_000], Durability::Immediate).is_err());
    disk.set_fault(None);
    disk.crash();
    drop(db);
    let db = open_db(&disk);
    assert_eq!(get(&db, 1).as_deref(), Some(&b"one"[..]));
    disk.fail_after(0, FaultKind::DiskFull);
    let big = vec![1u8; 1 << 20];
    assert!(put(&db, 3, &big, Durability::Immediate).is_err());
    disk.set_fault(None);
    disk.crash();
    drop(db);
    let db = open_db(&disk);
    assert_eq!(get(&db, 1).as_deref(), Some(&b"one"[..]));
    assert_eq!(get(&db, 3), None);
    assert!(disk.stats().faults >= 2);
}

#[test]
fn a_log_file_may_end_in_alignment_padding_after_a_crash() {
    let vfs = SimVfs::new();
    vfs.create_dir_all_synced(Path::new("/host")).unwrap();
    let f = vfs.open_log(&p("/host/log"), true).unwrap();
    vfs.sync_dir(Path::new("/host")).unwrap();
    f.write_at(&[7u8; 5000], 0).unwrap();
    f.sync_data().unwrap();
    assert_eq!(
        f.len().unwrap(),
        5000,
        "no padding is visible while running"
    );
    vfs.crash(1, false);
    let on_disk = vfs.contents(&p("/host/log")).unwrap();
    assert_eq!(on_disk.len(), 8192);
    assert!(on_disk[..5000].iter().all(|&b| b == 7));
    assert!(on_disk[5000..].iter().all(|&b| b == 0));
    // A cut after the last append leaves the file exact, as a truncate does on a real disk.
    let f = vfs.open_log(&p("/host/log"), false).unwrap();
    f.set_len(5000).unwrap();
    f.sync_data().unwrap();
    vfs.crash(2, false);
    assert_eq!(vfs.contents(&p("/host/log")).unwrap().len(), 5000);
}
