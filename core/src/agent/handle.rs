//! The agent's input handlers.

use super::*;

impl Agent {
    /// `disks` as the driver found them. Starting reserves a fresh range of seqs above each
    /// stored one, so that a crash never reuses a seq; a disk not yet copied is copied.
    pub fn new(settings: AgentSettings, disks: Vec<AgentDisk>, now: Timestamp) -> Agent {
        let n = disks.len();
        let to_copy: Vec<usize> = (0..n).filter(|i| disks[*i].copied.is_none()).collect();
        let mut agent = Agent {
            settings,
            streams: disks
                .into_iter()
                .map(|d| {
                    let mut s = Stream::new(d.disk, d.size_bytes, d.reserved);
                    s.copied_under = d.copied;
                    // Only a seq inside the durable reservation (never one past it).
                    if let Some(n) = d.resume.filter(|n| (1..=d.reserved + 1).contains(n)) {
                        s.next_seq = n;
                    }
                    s
                })
                .collect(),
            links: vec![Link::Idle; n],
            ps_addrs: vec![None; n],
            busy_until: vec![Timestamp::ZERO; n],
            progress_at: vec![now; n],
            cs: Link::Idle,
            held: VecDeque::new(),
            pending: VecDeque::new(),
            batch_deadline: vec![None; n],
            wake: Deadlines::default(),
            touched: (0..n).collect(),
            next_heartbeat: now,
            next_token: 1,
            out: VecDeque::new(),
            now,
        };
        for disk in to_copy {
            agent.start_copy(disk);
        }
        for disk in 0..n {
            agent.reserve_more(disk);
        }
        agent.connect_cs();
        agent.refile();
        agent
    }

    pub fn stats(&self) -> AgentStats {
        let disks = self
            .streams
            .iter()
            .zip(&self.links)
            .map(|(s, l)| s.stats(self.now, matches!(l, Link::Ready(_))))
            .collect();
        AgentStats { disks }
    }

    /// Sets where disk `disk` lives on this machine (its canonical path), reported to the
    /// configuration server with each registration; set it before the first input.
    pub fn set_source_path(&mut self, disk: usize, path: String) {
        self.streams[disk].source_path = path;
    }

    /// For a clean stop: each disk's next seq, once nothing any disk wrote is held any more
    /// (every seq assigned is cached at the process server) and no source write is under way;
    /// `None` until then. A driver that persists these must not hand the agent another input:
    /// the next start resumes each stream there (`AgentDisk::resume`).
    pub fn resume_points(&self) -> Option<Vec<Seq>> {
        let drained = self.pending.is_empty()
            && self
                .streams
                .iter()
                .all(|s| s.queue.is_empty() && s.open.is_none());
        drained.then(|| self.streams.iter().map(|s| s.next_seq).collect())
    }

    /// The id of disk `disk` (an index into the disks given to `new`).
    pub fn disk_id(&self, disk: usize) -> &DiskId {
        &self.streams[disk].disk
    }

    /// The newest seq assigned on `disk`, and the newest the process server has cached.
    pub fn seqs(&self, disk: usize) -> (Seq, Seq) {
        let s = &self.streams[disk];
        (s.seq_written(), s.cached_seq)
    }

    fn can_start(&self, input: &Input) -> bool {
        let disk = match input {
            Input::Write { disk, .. } => *disk,
            Input::Flush { .. } => return true,
            _ => unreachable!("only writes are held"),
        };
        let s = &self.streams[disk];
        // One seq per op; an op may not start until its seq is durably reserved. A retired
        // disk assigns no seqs and buffers nothing. A write waits for an outstanding copy read
        // of its disk, whose chunk takes the seq before it.
        s.retired
            || (s.next_seq <= s.reserved
                && s.buffered_bytes() < self.settings.buffer_bytes_max
                && !self.copy_reading(disk))
    }

    fn release_held(&mut self) {
        while let Some(input) = self.held.front() {
            if !self.can_start(input) {
                break;
            }
            let input = self.held.pop_front().expect("front exists");
            self.start(input);
        }
    }

    fn start(&mut self, input: Input) {
        match input {
            Input::Write { io, disk, op, fua } => {
                self.touched.push(disk);
                let span = op.block_span();
                self.pending.push_back((io, Pending { disk, fua, span }));
                self.out.push_back(Output::SourceWrite { io, disk, op });
            }
            Input::Flush { io, disk } => {
                self.touched.push(disk);
                // A flush is a natural consistency point: close the batch so it ends there.
                self.streams[disk].close_batch();
                self.batch_deadline[disk] = None;
                self.pump(disk);
                self.out.push_back(Output::SourceSync { io, disk });
            }
            _ => unreachable!("only writes start"),
        }
    }

    fn on_source_done(&mut self, io: IoId, data: Option<Vec<u8>>) {
        let (pio, p) = self
            .pending
            .pop_front()
            .expect("SourceDone without a pending SourceWrite");
        assert_eq!(
            pio, io,
            "the driver must complete source writes in emission order"
        );
        if let Some(d) = &data {
            assert_eq!(
                d.len() as u64,
                p.span.1 as u64 * BLOCK_BYTES,
                "SourceDone data must cover the op's blocks"
            );
        }
        if !self.streams[p.disk].retired {
            self.record(p.disk, p.span.0, p.span.1, data);
        }
        if p.fua {
            self.out.push_back(Output::SourceSync { io, disk: p.disk });
        } else {
            self.out.push_back(Output::Complete { io, result: Ok(()) });
        }
    }

    fn on_source_failed(&mut self, io: IoId, error: String) {
        let (pio, _) = self
            .pending
            .pop_front()
            .expect("SourceFailed without a pending SourceWrite");
        assert_eq!(
            pio, io,
            "the driver must complete source writes in emission order"
        );
        // The source disk refused the write: nothing changed that must be replicated. The
        // workload sees the error, as it would without Haven.
        self.out.push_back(Output::Complete {
            io,
            result: Err(error),
        });
    }

    pub(super) fn record(&mut self, disk: usize, block: u64, blocks: u32, data: Option<Vec<u8>>) {
        let now = self.now;
        let s = &self.streams[disk];
        let max = s.batch_bytes_max.unwrap_or(self.settings.batch_bytes_max);
        let delay = s.batch_delay_ms.unwrap_or(self.settings.batch_delay_ms);
        let full = self.streams[disk].record(now, block, blocks, data, max);
        if full {
            self.streams[disk].close_batch();
            self.batch_deadline[disk] = None;
            self.pump(disk);
        } else if self.batch_deadline[disk].is_none() {
            self.batch_deadline[disk] = Some(now.plus_millis(delay));
        }
        self.reserve_more(disk);
    }

    /// Asks for the next seq reservation once half of the current one is used.
    fn reserve_more(&mut self, disk: usize) {
        let s = &mut self.streams[disk];
        if !s.reserving && s.next_seq + SEQ_RESERVE_CHUNK / 2 > s.reserved {
            s.reserving = true;
            let reserved = s.reserved.max(s.next_seq - 1) + SEQ_RESERVE_CHUNK;
            self.out.push_back(Output::Reserve { disk, reserved });
        }
    }

    /// True when the stream is waiting for an answer (so silence means trouble).
    fn stalled_candidate(&self, disk: usize, link: &Link) -> bool {
        match link {
            Link::Opening(_) => true,
            Link::Ready(_) => self.streams[disk].in_flight() > 0,
            _ => false,
        }
    }

    /// The earliest of `disk`'s timers.
    fn disk_deadline(&self, disk: usize) -> Option<Timestamp> {
        let mut t = self.batch_deadline[disk];
        let link = self.links[disk];
        if let Link::Backoff(at) = link {
            t = earliest(t, Some(at));
        }
        if self.stalled_candidate(disk, &link) {
            let stall = self.progress_at[disk].plus_millis(super::STREAM_STALL_MS);
            t = earliest(t, Some(stall));
        }
        let busy = self.busy_until[disk];
        if busy > self.now && self.streams[disk].has_unsent() {
            t = earliest(t, Some(busy));
        }
        t
    }

    /// Marks the disks `input` concerns, before it is handled: a source completion's or copy
    /// read's disk, the disk whose stream a message arrived on; every disk for the rest of the
    /// network (the configuration server's messages, connects and closes). A write or flush
    /// marks its disk when it starts.
    fn touch_for(&mut self, input: &Input) {
        let disk = match input {
            Input::Net(NetEvent::Received { conn, .. }) => self
                .links
                .iter()
                .position(|l| matches!(l, Link::Opening(c) | Link::Ready(c) if c == conn)),
            Input::Net(_) => None,
            Input::SourceDone { io, .. } | Input::SourceFailed { io, .. } => {
                let p = self.pending.iter().find(|(i, _)| i == io);
                return self.touched.extend(p.map(|(_, p)| p.disk));
            }
            Input::CopyData { disk, .. } | Input::Reserved { disk, .. } => Some(*disk),
            Input::Write { .. } | Input::Flush { .. } | Input::Synced { .. } | Input::Tick => {
                return;
            }
        };
        match disk {
            Some(d) => self.touched.push(d),
            None => self.touched.extend(0..self.streams.len()),
        }
    }

    /// Files the touched disks' deadlines again.
    fn refile(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &disk in &touched {
            self.wake.set(disk, self.disk_deadline(disk));
        }
        touched.clear();
        self.touched = touched; // Keeps its capacity.
    }

    /// One disk's timers (a stalled stream, its batch deadline, its reconnect), then whatever
    /// its state now allows (connect, send, report the copy cached).
    fn disk_timers(&mut self, disk: usize) {
        let now = self.now;
        let link = self.links[disk];
        if self.stalled_candidate(disk, &link)
            && now.millis_since(self.progress_at[disk]) >= super::STREAM_STALL_MS
        {
            if let Link::Opening(conn) | Link::Ready(conn) = link {
                self.out.push_back(Output::Net(NetCommand::Close { conn }));
                self.links[disk] = Link::Backoff(now.plus_millis(self.settings.reconnect_delay_ms));
                self.streams[disk].unsend_from(0);
            }
        }
        if self.batch_deadline[disk].is_some_and(|t| t <= now) {
            self.batch_deadline[disk] = None;
            self.streams[disk].close_batch();
        }
        if let Link::Backoff(at) = self.links[disk] {
            if at <= now {
                self.links[disk] = Link::Idle;
            }
        }
        self.connect_ps(disk);
        self.pump(disk);
        self.copy_cached(disk);
    }

    /// The timers of the touched disks and of the disks that are due, then the agent's own.
    fn on_timers(&mut self) {
        let now = self.now;
        let due: Vec<usize> = self.wake.due(now).collect();
        self.touched.extend(due);
        self.touched.sort_unstable();
        self.touched.dedup();
        for i in 0..self.touched.len() {
            self.disk_timers(self.touched[i]);
        }
        if matches!(self.cs, Link::Backoff(at) if at <= now) {
            self.connect_cs();
        }
        if self.next_heartbeat <= now {
            self.next_heartbeat = now.plus_millis(self.settings.heartbeat_interval_ms);
            if let Link::Ready(conn) = self.cs {
                let msg = Message::AgentHeartbeat(self.stats());
                self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
            }
        }
    }

    /// Sends unsent batches in seq order while the window allows.
    pub(super) fn pump(&mut self, disk: usize) {
        let Link::Ready(conn) = self.links[disk] else {
            return;
        };
        if self.busy_until[disk] > self.now {
            return;
        }
        if self.streams[disk].in_flight() == 0 {
            // Nothing was outstanding: silence so far was not a stall.
            self.progress_at[disk] = self.now;
        }
        let window = self.settings.window_batches_max;
        let s = &mut self.streams[disk];
        while s.sent < window && s.has_unsent() {
            let b = &s.queue[s.sent];
            s.sent += 1;
            let msg = Message::Batch(b.header.clone());
            self.out.push_back(Output::Net(NetCommand::Send {
                conn,
                msg,
                data: b.data.clone(),
            }));
        }
    }
}

impl crate::machine::Machine for Agent {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Timestamp, input: Input) {
        self.now = self.now.max(now);
        let tick = matches!(input, Input::Tick);
        self.touch_for(&input);
        match input {
            Input::Net(ev) => self.on_net(ev),
            Input::Write { .. } | Input::Flush { .. } => {
                if self.held.is_empty() && self.can_start(&input) {
                    self.start(input);
                } else {
                    self.held.push_back(input);
                }
            }
            Input::CopyData { disk, offset, data } => self.on_copy_data(disk, offset, data),
            Input::SourceDone { io, data } => self.on_source_done(io, data),
            Input::SourceFailed { io, error } => self.on_source_failed(io, error),
            Input::Synced { io } => self.out.push_back(Output::Complete { io, result: Ok(()) }),
            Input::Reserved { disk, reserved } => {
                let s = &mut self.streams[disk];
                s.reserved = s.reserved.max(reserved);
                s.reserving = false;
            }
            Input::Tick => {}
        }
        self.on_timers();
        self.release_held();
        if tick {
            self.copy_step();
        }
        self.refile();
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let mut t = earliest(Some(self.next_heartbeat), self.wake.next());
        if let Link::Backoff(at) = self.cs {
            t = earliest(t, Some(at));
        }
        if (0..self.streams.len()).any(|d| self.copy_read_due(d)) {
            t = Some(self.now); // The next chunk of a copy, at the next tick.
        }
        t
    }

    fn tick() -> Input {
        Input::Tick
    }

    fn net(ev: NetEvent) -> Input {
        Input::Net(ev)
    }
}
