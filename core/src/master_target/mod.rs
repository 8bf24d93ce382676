//! The master target: keeps each replica as a base image plus a retention journal.
//!
//! A batch forwarded by a process server is validated (header, bounds against the replica's
//! size, epoch), decompressed, and handed to the driver as `JournalAppend`. The driver appends it
//! to the disk's journal, fsyncs, indexes its blocks and records the recovery point at its last
//! seq; only when it reports `JournalPersisted` does the process server get `Applied`. Batches
//! at or below the applied seq are duplicates and only re-acknowledged. Batches from an older
//! epoch are refused (fencing). A stream that resumes past a gap marks the replica inconsistent.
//!
//! What a process server is told rests on durable metadata: an `OpenStream` that creates the
//! replica, brings a new epoch or reveals a gap is answered with `StreamState` only once the
//! save it caused is reported by `ReplicaSaved`; until then the stream is not open and its
//! batches are refused. A crash in between leaves a replica that never told anyone otherwise.

use crate::batch::{decompress, BatchHeader};
use crate::ids::{ComponentId, ConnId, DiskId, Epoch, Seq};
use crate::net::{ConnEpochs, ConnectToken, NetCommand, NetEvent};
use crate::protocol::{Message, Registration};
use crate::stats::MasterTargetStats;
use crate::time::{earliest, Timestamp};
use std::collections::{BTreeMap, VecDeque};

mod replica;

pub use replica::{PointKind, PointRecord, ReplicaMeta, POINTS_PER_SYNC};

const CS_TOKEN: ConnectToken = u64::MAX;
/// Appends in flight per replica (handed to the driver, not yet durable).
pub const APPENDS_IN_FLIGHT_MAX: usize = 64;

#[derive(Clone, Debug)]
pub struct MasterTargetSettings {
    pub component: ComponentId,
    pub config_server_addr: String,
    pub data_addr: String,
    pub api_addr: String,
    pub heartbeat_interval_ms: u64,
    pub reconnect_delay_ms: u64,
}

#[derive(Debug)]
pub enum Input {
    Net(NetEvent),
    /// `JournalAppend{id}` is appended, synced and indexed; `journal_bytes` is the new total.
    JournalPersisted {
        id: u64,
        journal_bytes: u64,
    },
    /// `CreateReplica{save}` or `SaveReplica{save}` is durable (saves are answered in the order
    /// they were emitted).
    ReplicaSaved {
        save: u64,
    },
    Tick,
}

#[derive(Debug)]
pub enum Output {
    Net(NetCommand),
    /// Create an empty replica (sparse base, empty journal) and persist `meta`; then answer
    /// `ReplicaSaved{save}`.
    CreateReplica {
        save: u64,
        meta: ReplicaMeta,
    },
    /// Persist changed replica metadata (epoch, inconsistency); then answer `ReplicaSaved{save}`.
    SaveReplica {
        save: u64,
        meta: ReplicaMeta,
    },
    /// The disk's protection ended: delete its replica (base, journal, points, metadata).
    RemoveReplica(DiskId),
    /// Append this batch (raw data) to the replica's journal, fsync, index it and, after the
    /// fsync, record `point` (synced to disk too if `sync_point`); then answer
    /// `JournalPersisted`.
    JournalAppend {
        id: u64,
        header: BatchHeader,
        data: Vec<u8>,
        point: Option<PointRecord>,
        sync_point: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Idle,
    Connecting,
    Ready(ConnId),
    Backoff(Timestamp),
}

#[derive(Debug)]
struct Replica {
    meta: ReplicaMeta,
    /// Next seq expected from the stream (past what is applied or being appended).
    expect_seq: Seq,
    stream: Option<ConnId>,
    /// A process server whose `OpenStream` waits for the replica's save in flight: it gets
    /// `StreamState` (and may send batches) once the epoch, the replica's creation or a gap it
    /// revealed is durable, so that a crash cannot forget what the stream was told.
    opening: Option<ConnId>,
    /// The newest save of this replica not yet answered.
    saving: Option<u64>,
    appending: usize,
    /// A full copy of the source began after the gap that made the replica inconsistent:
    /// once it ends (a consistent batch is durable), the replica equals the source again.
    copy_after_gap: bool,
}

pub struct MasterTarget {
    settings: MasterTargetSettings,
    replicas: BTreeMap<DiskId, Replica>,
    /// id -> (disk, last seq, consistent)
    appending: BTreeMap<u64, (DiskId, Seq, bool)>,
    next_append: u64,
    next_save: u64,
    /// The epoch each process-server connection was made for.
    peers: ConnEpochs,
    /// Recovery points decided since this master target started (for `POINTS_PER_SYNC`).
    points_decided: u64,
    cs: Link,
    next_heartbeat: Timestamp,
    out: VecDeque<Output>,
    now: Timestamp,
}

impl MasterTarget {
    pub fn new(settings: MasterTargetSettings, replicas: Vec<ReplicaMeta>, now: Timestamp) -> Self {
        let replicas = replicas
            .into_iter()
            .map(|m| {
                (
                    m.disk.clone(),
                    Replica {
                        expect_seq: m.applied_seq + 1,
                        meta: m,
                        stream: None,
                        opening: None,
                        saving: None,
                        appending: 0,
                        copy_after_gap: false,
                    },
                )
            })
            .collect();
        let mut mt = MasterTarget {
            settings,
            replicas,
            appending: BTreeMap::new(),
            next_append: 1,
            next_save: 1,
            peers: ConnEpochs::default(),
            points_decided: 0,
            cs: Link::Idle,
            next_heartbeat: now,
            out: VecDeque::new(),
            now,
        };
        mt.connect_cs();
        mt
    }

    pub fn stats(&self) -> MasterTargetStats {
        let replicas = self.replicas.values().map(|r| r.meta.stats()).collect();
        MasterTargetStats { replicas }
    }

    fn on_timers(&mut self) {
        if matches!(self.cs, Link::Backoff(at) if at <= self.now) {
            self.connect_cs();
        }
        if self.next_heartbeat <= self.now {
            self.next_heartbeat = self.now.plus_millis(self.settings.heartbeat_interval_ms);
            if let Link::Ready(conn) = self.cs {
                let msg = Message::MasterTargetHeartbeat(self.stats());
                self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
            }
        }
    }

    fn connect_cs(&mut self) {
        self.cs = Link::Connecting;
        let addr = self.settings.config_server_addr.clone();
        self.out.push_back(Output::Net(NetCommand::Connect {
            token: CS_TOKEN,
            addr,
            epoch: Epoch(0),
        }));
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected { conn, .. } => {
                self.cs = Link::Ready(conn);
                let s = &self.settings;
                let reg = Registration {
                    data_addr: s.data_addr.clone(),
                    api_addr: s.api_addr.clone(),
                    disks: vec![],
                };
                self.out
                    .push_back(Output::Net(NetCommand::send(conn, Message::Register(reg))));
            }
            NetEvent::ConnectFailed { .. } => {
                self.cs = Link::Backoff(self.now.plus_millis(self.settings.reconnect_delay_ms));
            }
            NetEvent::Accepted { conn, peer } => self.peers.accepted(conn, &peer),
            NetEvent::Received { conn, msg, data } => self.on_message(conn, msg, data),
            NetEvent::Closed { conn, .. } => {
                self.peers.closed(conn);
                if self.cs == Link::Ready(conn) {
                    self.cs = Link::Backoff(self.now.plus_millis(self.settings.reconnect_delay_ms));
                }
                for r in self.replicas.values_mut() {
                    if r.stream == Some(conn) {
                        r.stream = None;
                    }
                    if r.opening == Some(conn) {
                        r.opening = None;
                    }
                }
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, reason: String) {
        self.out
            .extend(NetCommand::refusal(conn, reason).map(Output::Net));
    }

    fn on_message(&mut self, conn: ConnId, msg: Message, data: Vec<u8>) {
        match msg {
            Message::OpenStream {
                disk,
                epoch,
                size_bytes,
                first_seq,
            } => self.on_open(conn, disk, epoch, size_bytes, first_seq),
            Message::Batch(header) => self.on_batch(conn, header, data),
            Message::Retire(list) if self.cs == Link::Ready(conn) => self.on_retire(list),
            Message::Reject { .. } => {}
            other => self.refuse(
                conn,
                format!("unexpected {} on a master target connection", other.kind()),
            ),
        }
    }

    /// Protections that ended: their replicas are removed (a replica of a newer epoch stays).
    fn on_retire(&mut self, list: Vec<crate::protocol::Retired>) {
        for r in list {
            if self
                .replicas
                .get(&r.disk)
                .is_none_or(|x| x.meta.epoch > r.epoch)
            {
                continue;
            }
            let replica = self.replicas.remove(&r.disk).expect("checked");
            if let Some(conn) = replica.stream {
                self.out.push_back(Output::Net(NetCommand::Close { conn }));
            }
            self.out.push_back(Output::RemoveReplica(r.disk));
        }
    }

    fn on_open(
        &mut self,
        conn: ConnId,
        disk: DiskId,
        epoch: Epoch,
        size_bytes: u64,
        first_seq: Seq,
    ) {
        if let Some(reason) = self.peers.refusal(conn, &disk, epoch) {
            return self.refuse(conn, reason);
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(crate::batch::BLOCK_BYTES) {
            return self.refuse(
                conn,
                format!("disk {disk}: size {size_bytes} is not a positive multiple of 4096"),
            );
        }
        let mut created = false;
        let r = self.replicas.entry(disk.clone()).or_insert_with(|| {
            created = true;
            Replica {
                meta: ReplicaMeta {
                    disk: disk.clone(),
                    epoch,
                    size_bytes,
                    applied_seq: 0,
                    points: 0,
                    journal_bytes: 0,
                    inconsistent: None,
                },
                expect_seq: 1,
                stream: None,
                opening: None,
                saving: None,
                appending: 0,
                copy_after_gap: false,
            }
        });
        if epoch < r.meta.epoch {
            let reason = format!(
                "disk {disk}: epoch {epoch} is older than the replica's {}; fenced",
                r.meta.epoch
            );
            return self.refuse(conn, reason);
        }
        if size_bytes != r.meta.size_bytes {
            let reason = format!("disk {disk}: source is {size_bytes} bytes but the replica is {}; resize is not supported", r.meta.size_bytes);
            return self.refuse(conn, reason);
        }
        let mut changed = epoch != r.meta.epoch;
        r.meta.epoch = epoch;
        if first_seq > r.expect_seq {
            let why = if created {
                // A new replica of a disk that streamed before (protected again): the writes
                // before its first seq are on the source, not lost; a copy brings them.
                format!(
                    "a new replica starting at seq {first_seq}: it is consistent once the \
                     disk's initial copy has reached it (if no copy runs, a resync is needed)"
                )
            } else {
                format!(
                    "writes {}..={} were lost before reaching the process server; a resync is \
                     needed",
                    r.expect_seq,
                    first_seq - 1
                )
            };
            r.meta.inconsistent.get_or_insert(why);
            r.expect_seq = first_seq;
            changed = true;
        }
        if r.stream == Some(conn) {
            r.stream = None;
        }
        if created || changed {
            save(&mut self.next_save, &mut self.out, r, created);
        }
        if r.saving.is_some() {
            r.opening = Some(conn);
        } else {
            self.stream_ready(&disk, conn);
        }
    }

    /// The stream of `disk` on `conn` is open: the process server learns where the replica is.
    fn stream_ready(&mut self, disk: &DiskId, conn: ConnId) {
        let r = self.replicas.get_mut(disk).expect("a known replica");
        r.stream = Some(conn);
        let msg = Message::StreamState {
            disk: disk.clone(),
            epoch: r.meta.epoch,
            cached_seq: r.meta.applied_seq,
            applied_seq: r.meta.applied_seq,
        };
        self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
    }

    fn on_saved(&mut self, save: u64) {
        let Some((disk, r)) = self
            .replicas
            .iter_mut()
            .find(|(_, r)| r.saving == Some(save))
        else {
            return; // An older save of a replica saved again since, or one removed meanwhile.
        };
        r.saving = None;
        if let Some(conn) = r.opening.take() {
            let disk = disk.clone();
            self.stream_ready(&disk, conn);
        }
    }

    fn on_batch(&mut self, conn: ConnId, header: BatchHeader, data: Vec<u8>) {
        if let Err(e) = header.validate() {
            return self.refuse(conn, format!("malformed batch: {e}"));
        }
        let Some(r) = self
            .replicas
            .get_mut(&header.disk)
            .filter(|r| r.stream == Some(conn))
        else {
            return self.refuse(
                conn,
                format!("batch for disk {} before OpenStream", header.disk),
            );
        };
        if header.epoch < r.meta.epoch {
            let reason = format!(
                "disk {}: batch of epoch {} is older than {}; fenced",
                header.disk, header.epoch, r.meta.epoch
            );
            return self.refuse(conn, reason);
        }
        if let Err(e) = header.check_bounds(r.meta.size_bytes) {
            return self.refuse(conn, format!("batch out of bounds: {e}"));
        }
        if header.last_seq < r.expect_seq {
            if header.last_seq <= r.meta.applied_seq {
                let msg = Message::Applied {
                    disk: header.disk,
                    epoch: r.meta.epoch,
                    applied_seq: r.meta.applied_seq,
                };
                self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
            }
            return;
        }
        if header.first_seq != r.expect_seq || r.appending >= APPENDS_IN_FLIGHT_MAX {
            let reason = format!(
                "disk {}: expected seq {}, got {}..={}",
                header.disk, r.expect_seq, header.first_seq, header.last_seq
            );
            return self.refuse(conn, reason);
        }
        let raw = match decompress(&header, data) {
            Ok(raw) => raw,
            Err(e) => return self.refuse(conn, format!("batch data: {e}")),
        };
        r.expect_seq = header.last_seq + 1;
        r.appending += 1;
        if !header.consistent && r.meta.inconsistent.is_some() {
            // Copy batches after a gap come from a copy that started after it: an agent
            // restarts its copy from the start, and a new protection copies anew.
            r.copy_after_gap = true;
        }
        let id = self.next_append;
        self.next_append += 1;
        self.appending.insert(
            id,
            (header.disk.clone(), header.last_seq, header.consistent),
        );
        // Every consistent batch ends a crash-consistent recovery point.
        let point = header.consistent.then_some(PointRecord {
            seq: header.last_seq,
            time: header.last_time,
            kind: PointKind::Crash,
        });
        if point.is_some() {
            self.points_decided += 1;
        }
        let sync_point = point.is_some() && self.points_decided.is_multiple_of(POINTS_PER_SYNC);
        let mut header = header;
        header.encoding = crate::batch::Encoding::Raw;
        self.out.push_back(Output::JournalAppend {
            id,
            header,
            data: raw,
            point,
            sync_point,
        });
    }

    fn on_persisted(&mut self, id: u64, journal_bytes: u64) {
        let (disk, last_seq, consistent) = self
            .appending
            .remove(&id)
            .expect("JournalPersisted for an unknown append");
        let Some(r) = self.replicas.get_mut(&disk) else {
            return; // Removed meanwhile (its protection ended).
        };
        r.appending -= 1;
        r.meta.applied_seq = r.meta.applied_seq.max(last_seq);
        r.meta.journal_bytes = journal_bytes;
        if consistent {
            r.meta.points += 1;
            if std::mem::take(&mut r.copy_after_gap) && r.meta.inconsistent.take().is_some() {
                // Nothing waits for this save: a crash before it leaves the replica marked
                // inconsistent, which only asks for a copy that is not needed.
                save(&mut self.next_save, &mut self.out, r, false);
            }
        }
        if let Some(conn) = r.stream {
            let msg = Message::Applied {
                disk,
                epoch: r.meta.epoch,
                applied_seq: r.meta.applied_seq,
            };
            self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
        }
    }
}

/// Emits the save of `r`'s metadata (its creation if `create`) under the next save id, which
/// becomes the replica's newest save in flight.
fn save(next_save: &mut u64, out: &mut VecDeque<Output>, r: &mut Replica, create: bool) {
    let save = *next_save;
    *next_save += 1;
    r.saving = Some(save);
    let meta = r.meta.clone();
    out.push_back(if create {
        Output::CreateReplica { save, meta }
    } else {
        Output::SaveReplica { save, meta }
    });
}

impl crate::machine::Machine for MasterTarget {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Timestamp, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Net(ev) => self.on_net(ev),
            Input::JournalPersisted { id, journal_bytes } => self.on_persisted(id, journal_bytes),
            Input::ReplicaSaved { save } => self.on_saved(save),
            Input::Tick => {}
        }
        self.on_timers();
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let backoff = match self.cs {
            Link::Backoff(at) => Some(at),
            _ => None,
        };
        earliest(Some(self.next_heartbeat), backoff)
    }

    fn tick() -> Input {
        Input::Tick
    }

    fn net(ev: NetEvent) -> Input {
        Input::Net(ev)
    }
}
