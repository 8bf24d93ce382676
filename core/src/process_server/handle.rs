//! The process server's input handlers.

use super::*;
use crate::batch::{compress_at, CompressionPolicy, Encoding, ZSTD_LEVELS, ZSTD_LEVEL_DEFAULT};
use crate::protocol::Registration;
use crate::stats::{CacheDiskStats, ProcessServerStats};

impl ProcessServer {
    /// `disks` and `cached` are what the driver recovered from its metadata and cache, in order.
    pub fn new(
        settings: ProcessServerSettings,
        disks: Vec<CacheDiskMeta>,
        cached: Vec<CachedBatch>,
        now: Timestamp,
    ) -> Self {
        let mut ps = ProcessServer {
            settings,
            disks: BTreeMap::new(),
            appending: BTreeMap::new(),
            appending_bytes: 0,
            next_append: 1,
            next_save: 1,
            wake: Deadlines::default(),
            touched: Vec::new(),
            touched_all: true,
            peers: ConnEpochs::default(),
            closing: BTreeSet::new(),
            cs: Link::Idle,
            next_token: 1,
            next_heartbeat: now,
            bytes_in: 0,
            bytes_out: 0,
            compression_level: ZSTD_LEVEL_DEFAULT,
            compression: CompressionPolicy::default(),
            out: VecDeque::new(),
            now,
        };
        for meta in disks {
            ps.disk_entry(meta);
        }
        for b in cached {
            let d = ps.disk_entry(CacheDiskMeta {
                disk: b.disk.clone(),
                epoch: b.epoch,
                size_bytes: 0,
                applied_seq: 0,
            });
            if b.last_seq <= d.meta.applied_seq {
                continue; // Applied before the crash; its segment will be released.
            }
            d.cached_seq = d.cached_seq.max(b.last_seq);
            d.expect_seq = d.cached_seq + 1;
            d.cached_bytes += b.bytes;
            d.entries.push_back(b);
        }
        ps.connect_cs();
        ps
    }

    pub(super) fn disk_entry(&mut self, meta: CacheDiskMeta) -> &mut DiskCache {
        self.disks
            .entry(meta.disk.clone())
            .or_insert_with(|| DiskCache {
                cached_seq: meta.applied_seq,
                expect_seq: meta.applied_seq + 1,
                meta,
                entries: VecDeque::new(),
                sent: 0,
                agent: None,
                refused: None,
                saving: None,
                state_for: None,
                route: None,
                link: Link::Idle,
                cached_bytes: 0,
                progress_at: Timestamp::ZERO,
            })
    }

    /// Sets when batches are compressed and the zstd level (clamped to `ZSTD_LEVELS`).
    pub fn set_compression(&mut self, policy: CompressionPolicy, level: i32) {
        self.compression = policy;
        self.compression_level = level.clamp(*ZSTD_LEVELS.start(), *ZSTD_LEVELS.end());
    }

    pub fn cache_bytes(&self) -> u64 {
        self.disks.values().map(|d| d.cached_bytes).sum::<u64>() + self.appending_bytes
    }

    pub fn stats(&self) -> ProcessServerStats {
        let disks = self
            .disks
            .values()
            .map(|d| CacheDiskStats {
                disk: d.meta.disk.clone(),
                cached_seq: d.cached_seq,
                applied_seq: d.meta.applied_seq,
                cached_batches: d.entries.len() as u64,
                cached_bytes: d.cached_bytes,
                master_target_connected: matches!(d.link, Link::Ready(_)),
                refused: d.refused.clone(),
            })
            .collect();
        ProcessServerStats {
            disks,
            cache_bytes: self.cache_bytes(),
            cache_bytes_max: self.settings.cache_bytes_max,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    pub(super) fn connect_cs(&mut self) {
        self.cs = Link::Connecting(CS_TOKEN);
        let addr = self.settings.config_server_addr.clone();
        self.out.push_back(Output::Net(NetCommand::Connect {
            token: CS_TOKEN,
            addr,
            epoch: Epoch(0),
        }));
    }

    pub(super) fn connect_mt(&mut self, id: &DiskId) {
        let d = self.disks.get_mut(id).expect("known disk");
        let Some(addr) = d.route.clone() else { return };
        // The master target hears of an epoch only once it is durable here.
        if d.link != Link::Idle || d.saving.is_some() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        d.link = Link::Connecting(token);
        let epoch = d.meta.epoch;
        self.out
            .push_back(Output::Net(NetCommand::Connect { token, addr, epoch }));
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected { token, conn, .. } => self.on_connected(token, conn),
            NetEvent::ConnectFailed { token, .. } => {
                let backoff = Link::Backoff(self.now.plus_millis(self.settings.reconnect_delay_ms));
                if token == CS_TOKEN {
                    self.cs = backoff;
                } else if let Some(d) = self
                    .disks
                    .values_mut()
                    .find(|d| d.link == Link::Connecting(token))
                {
                    d.link = backoff;
                }
            }
            // Agents open streams with OpenStream, under the epoch of their Hello.
            NetEvent::Accepted { conn, peer } => self.peers.accepted(conn, &peer),
            NetEvent::Received { conn, msg, data } => self.on_message(conn, msg, data),
            NetEvent::Closed { conn, .. } => self.on_closed(conn),
        }
    }

    fn on_connected(&mut self, token: ConnectToken, conn: ConnId) {
        if token == CS_TOKEN {
            self.cs = Link::Ready(conn);
            let reg = Registration {
                data_addr: self.settings.data_addr.clone(),
                api_addr: String::new(),
                disks: vec![],
            };
            self.out
                .push_back(Output::Net(NetCommand::send(conn, Message::Register(reg))));
            return;
        }
        let Some(d) = self
            .disks
            .values_mut()
            .find(|d| d.link == Link::Connecting(token))
        else {
            self.out.push_back(Output::Net(NetCommand::Close { conn }));
            return;
        };
        d.link = Link::Opening(conn);
        d.progress_at = self.now;
        // The oldest seq we hold, or (with nothing cached or being appended) the next one we
        // expect, which is past a gap the agent declared.
        let appending = self.appending.values().any(|a| a.0 == d.meta.disk);
        let next = if appending {
            d.cached_seq + 1
        } else {
            d.expect_seq
        };
        let first_seq = d.entries.front().map_or(next, |e| e.first_seq);
        let m = &d.meta;
        let msg = Message::OpenStream {
            disk: m.disk.clone(),
            epoch: m.epoch,
            size_bytes: m.size_bytes,
            first_seq,
        };
        self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
    }

    fn on_closed(&mut self, conn: ConnId) {
        let backoff = Link::Backoff(self.now.plus_millis(self.settings.reconnect_delay_ms));
        if matches!(self.cs, Link::Ready(c) | Link::Opening(c) if c == conn) {
            self.cs = backoff;
        }
        self.peers.closed(conn);
        self.closing.remove(&conn);
        for d in self.disks.values_mut() {
            if d.agent == Some(conn) {
                d.agent = None;
                d.state_for = None;
            }
            if matches!(d.link, Link::Opening(c) | Link::Ready(c) if c == conn) {
                d.link = backoff;
                d.sent = 0;
            }
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: Message, data: Vec<u8>) {
        if self.closing.contains(&conn) {
            // Sent before the peer heard of our close (the master target's answer on a link
            // reopened for a gap or a new epoch): nobody is waiting for it.
            return;
        }
        match msg {
            Message::OpenStream {
                disk,
                epoch,
                size_bytes,
                first_seq,
            } => self.on_open(conn, disk, epoch, size_bytes, first_seq),
            Message::Batch(header) => self.on_batch(conn, header, data),
            Message::StreamState {
                disk, applied_seq, ..
            } => self.on_stream_state(conn, disk, applied_seq),
            Message::Applied {
                disk, applied_seq, ..
            } => self.on_applied(conn, disk, applied_seq),
            Message::Routes(routes) if matches!(self.cs, Link::Ready(c) if c == conn) => {
                self.on_routes(routes)
            }
            Message::Retire(list) if matches!(self.cs, Link::Ready(c) if c == conn) => {
                self.on_retire(list)
            }
            Message::Reject { reason } => self.on_reject(conn, reason),
            other => self.refuse(
                conn,
                format!("unexpected {} on a process server connection", other.kind()),
            ),
        }
    }

    pub(super) fn refuse(&mut self, conn: ConnId, reason: String) {
        self.out
            .extend(NetCommand::refusal(conn, reason).map(Output::Net));
    }

    fn on_batch(&mut self, conn: ConnId, header: BatchHeader, data: Vec<u8>) {
        if let Err(e) = header.validate() {
            return self.refuse(conn, format!("malformed batch: {e}"));
        }
        let retry = self.settings.busy_retry_ms;
        let Some(d) = self
            .disks
            .get_mut(&header.disk)
            .filter(|d| d.agent == Some(conn) && d.state_for.is_none())
        else {
            return self.refuse(
                conn,
                format!("batch for disk {} before OpenStream", header.disk),
            );
        };
        if header.epoch != d.meta.epoch
            || header.encoding != Encoding::Raw
            || data.len() as u64 != header.raw_bytes
        {
            return self.refuse(
                conn,
                "batch epoch or encoding does not match its stream".into(),
            );
        }
        if header.last_seq < d.expect_seq {
            if header.last_seq <= d.cached_seq {
                let m = &d.meta;
                let ack = Message::BatchAck {
                    disk: m.disk.clone(),
                    epoch: m.epoch,
                    cached_seq: d.cached_seq,
                    applied_seq: m.applied_seq,
                };
                self.out.push_back(Output::Net(NetCommand::send(conn, ack)));
            }
            return; // A resend of what we have or are appending.
        }
        if header.first_seq != d.expect_seq {
            // Out of order (an earlier batch was refused): have the agent resend from what we
            // expect.
            let first_seq = d.expect_seq;
            return self.busy(conn, header.disk, first_seq, 0);
        }
        let compress = match self.compression {
            CompressionPolicy::Off => false,
            CompressionPolicy::Always => true,
            // No stream (the cache grows), or a whole window's worth of batches waiting behind
            // the window in flight: the link is the bottleneck, not a passing hiccup.
            CompressionPolicy::Adaptive => {
                !matches!(d.link, Link::Ready(_))
                    || d.entries.len().saturating_sub(d.sent) >= self.settings.window_batches_max
            }
        };
        let raw_bytes = data.len() as u64;
        let (encoding, packed) = if compress {
            compress_at(data, self.compression_level)
        } else {
            (Encoding::Raw, data)
        };
        let mut header = header;
        header.encoding = encoding;
        // The quota counts what the cache will hold: the whole frame. An empty cache always
        // takes a batch, so that one larger than the quota cannot stall.
        let msg = Message::Batch(header);
        let ctl_bytes = postcard::to_allocvec(&msg).map_or(0, |v| v.len()) as u64;
        let Message::Batch(header) = msg else {
            unreachable!("built above")
        };
        let frame_bytes =
            crate::protocol::FRAME_HEADER_BYTES as u64 + ctl_bytes + packed.len() as u64;
        let used = self.cache_bytes();
        if used > 0 && used + frame_bytes > self.settings.cache_bytes_max {
            return self.busy(conn, header.disk, header.first_seq, retry);
        }
        let d = self.disks.get_mut(&header.disk).expect("checked above");
        d.expect_seq = header.last_seq + 1;
        self.bytes_in += raw_bytes;
        let id = self.next_append;
        self.next_append += 1;
        self.appending_bytes += frame_bytes;
        let entry = (
            header.disk.clone(),
            header.first_seq,
            header.last_seq,
            header.epoch,
            frame_bytes,
        );
        self.appending.insert(id, entry);
        self.out.push_back(Output::CacheAppend {
            id,
            header,
            data: packed,
        });
    }

    fn busy(&mut self, conn: ConnId, disk: DiskId, first_seq: Seq, retry_after_ms: u64) {
        let msg = Message::Busy {
            disk,
            first_seq,
            retry_after_ms,
        };
        self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
    }

    fn on_persisted(&mut self, id: u64, loc: CacheLoc, bytes: u64) {
        let (disk, first_seq, last_seq, epoch, pending) = self
            .appending
            .remove(&id)
            .expect("CachePersisted for an unknown append");
        self.appending_bytes -= pending;
        let Some(d) = self.disks.get_mut(&disk) else {
            // The disk's protection ended while this append ran: nobody takes the batch.
            self.out.push_back(Output::CacheRelease {
                disk,
                through: last_seq,
            });
            return;
        };
        if epoch < d.meta.epoch {
            // Appended under an epoch a newer one has taken over since: never forwarded.
            self.out.push_back(Output::CacheRelease {
                disk,
                through: last_seq,
            });
            return;
        }
        d.cached_seq = d.cached_seq.max(last_seq);
        let applied = d.meta.applied_seq;
        if last_seq > applied {
            d.cached_bytes += bytes;
            d.entries.push_back(CachedBatch {
                disk: disk.clone(),
                epoch,
                first_seq,
                last_seq,
                bytes,
                loc,
            });
        } else {
            // The master target already has it (the agent resent a batch whose ack was lost in
            // a restart, and the master target said so meanwhile): nothing to forward, and the
            // record may go.
            self.out.push_back(Output::CacheRelease {
                disk: disk.clone(),
                through: applied,
            });
        }
        if let Some(agent) = d.agent {
            let ack = Message::BatchAck {
                disk: disk.clone(),
                epoch,
                cached_seq: d.cached_seq,
                applied_seq: d.meta.applied_seq,
            };
            self.out
                .push_back(Output::Net(NetCommand::send(agent, ack)));
        }
        self.pump(&disk);
    }

    fn mt_disk(&mut self, conn: ConnId, disk: &DiskId) -> Option<&mut DiskCache> {
        self.disks
            .get_mut(disk)
            .filter(|d| matches!(d.link, Link::Opening(c) | Link::Ready(c) if c == conn))
    }

    /// A master target refused a disk's stream: the reason is kept for the status (the link
    /// closes and is retried; the refusal stands until a `StreamState` says otherwise).
    fn on_reject(&mut self, conn: ConnId, reason: String) {
        for d in self.disks.values_mut() {
            if matches!(d.link, Link::Opening(c) | Link::Ready(c) if c == conn) {
                d.refused = Some(reason.clone());
            }
        }
    }

    fn on_stream_state(&mut self, conn: ConnId, disk: DiskId, applied_seq: Seq) {
        let Some(d) = self.mt_disk(conn, &disk) else {
            return self.refuse(conn, "StreamState for an unknown stream".into());
        };
        d.refused = None;
        d.link = Link::Ready(conn);
        d.sent = 0;
        self.on_applied(conn, disk, applied_seq);
    }

    fn on_applied(&mut self, conn: ConnId, disk: DiskId, applied_seq: Seq) {
        if self.mt_disk(conn, &disk).is_none() {
            return self.refuse(conn, "Applied for an unknown stream".into());
        }
        let d = self.disks.get_mut(&disk).expect("checked");
        d.progress_at = self.now;
        if applied_seq > d.meta.applied_seq {
            d.meta.applied_seq = applied_seq;
            while d.entries.front().is_some_and(|e| e.last_seq <= applied_seq) {
                let e = d.entries.pop_front().expect("front exists");
                d.cached_bytes -= e.bytes;
                d.sent = d.sent.saturating_sub(1);
            }
            self.out.push_back(Output::CacheRelease {
                disk: disk.clone(),
                through: applied_seq,
            });
            self.out.push_back(Output::SaveDisk {
                save: None,
                meta: d.meta.clone(),
            });
            if let Some(agent) = d.agent {
                let m = &d.meta;
                let ack = Message::BatchAck {
                    disk: disk.clone(),
                    epoch: m.epoch,
                    cached_seq: d.cached_seq,
                    applied_seq,
                };
                self.out
                    .push_back(Output::Net(NetCommand::send(agent, ack)));
            }
        }
        self.pump(&disk);
    }

    /// Forwards cached batches in seq order while the window allows.
    fn pump(&mut self, disk: &DiskId) {
        let window = self.settings.window_batches_max;
        let d = self.disks.get_mut(disk).expect("known disk");
        let Link::Ready(conn) = d.link else { return };
        if d.sent == 0 {
            d.progress_at = self.now;
        }
        // Entries before `sent` are in flight: every entry still cached is unapplied.
        while d.sent < d.entries.len() && d.sent < window {
            let e = &d.entries[d.sent];
            d.sent += 1;
            self.bytes_out += e.bytes;
            self.out.push_back(Output::Forward {
                conn,
                disk: disk.clone(),
                loc: e.loc,
            });
        }
    }
}

impl crate::machine::Machine for ProcessServer {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Timestamp, input: Input) {
        self.now = self.now.max(now);
        self.touch_for(&input);
        match input {
            Input::Net(ev) => self.on_net(ev),
            Input::CachePersisted { id, loc, bytes } => self.on_persisted(id, loc, bytes),
            Input::DiskSaved { save } => self.on_saved(save),
            Input::Tick => {}
        }
        self.on_timers();
        self.refile();
        // What this input closed: a frame that was already on its way there is stale.
        for o in &self.out {
            if let Output::Net(NetCommand::Close { conn }) = o {
                self.closing.insert(*conn);
            }
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.next_deadline()
    }

    fn tick() -> Input {
        Input::Tick
    }

    fn net(ev: NetEvent) -> Input {
        Input::Net(ev)
    }
}
