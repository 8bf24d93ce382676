//! The process server's timers: per disk, the master-target link's reconnect and a stalled
//! stream; its own heartbeat and configuration-server reconnect. Each disk's earliest timer is
//! filed in a deadline index, so an input visits only the disks it concerns and those due.

use super::*;
use crate::time::earliest;

impl ProcessServer {
    /// Marks the disks `input` concerns, before it is handled: the disk a stream message names,
    /// the disk of a cache append; every disk for the rest (the configuration server's messages,
    /// a refusal, connects and closes, a durable save).
    pub(super) fn touch_for(&mut self, input: &Input) {
        let disk = match input {
            Input::Net(NetEvent::Received { msg, .. }) => match msg {
                Message::OpenStream { disk, .. }
                | Message::StreamState { disk, .. }
                | Message::Applied { disk, .. } => Some(disk.clone()),
                Message::Batch(h) => Some(h.disk.clone()),
                _ => None,
            },
            Input::Net(_) | Input::DiskSaved { .. } => None,
            Input::CachePersisted { id, .. } => match self.appending.get(id) {
                Some(a) => Some(a.0.clone()),
                None => return,
            },
            Input::Tick => return,
        };
        match disk {
            Some(d) => self.touched.push(d),
            None => self.touched_all = true,
        }
    }

    /// The earliest of `disk`'s timers.
    fn disk_deadline(&self, disk: &DiskId) -> Option<Timestamp> {
        let d = self.disks.get(disk)?;
        let backoff = match d.link {
            Link::Backoff(at) => Some(at),
            _ => None,
        };
        let stall = d
            .waiting()
            .then(|| d.progress_at.plus_millis(STREAM_STALL_MS));
        earliest(backoff, stall)
    }

    /// The timers of the touched disks and of those due, then the process server's own.
    pub(super) fn on_timers(&mut self) {
        let now = self.now;
        let mut visit = if self.touched_all {
            self.touched.clear();
            self.disks.keys().cloned().collect()
        } else {
            let mut v = std::mem::take(&mut self.touched);
            v.extend(self.wake.due(now));
            v.sort_unstable();
            v.dedup();
            v
        };
        for id in &visit {
            self.disk_timers(id);
        }
        if !self.touched_all {
            visit.append(&mut self.touched);
            self.touched = visit; // Filed again by `refile`.
        }
        if matches!(self.cs, Link::Backoff(at) if at <= now) {
            self.connect_cs();
        }
        if self.next_heartbeat <= now {
            self.next_heartbeat = now.plus_millis(self.settings.heartbeat_interval_ms);
            if let Link::Ready(conn) = self.cs {
                let msg = Message::ProcessServerHeartbeat(self.stats());
                self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
            }
        }
    }

    /// One disk's timers: a reconnect that is due, a stream to the master target that went
    /// silent; then the connect its state allows.
    fn disk_timers(&mut self, id: &DiskId) {
        let now = self.now;
        let Some(d) = self.disks.get_mut(id) else {
            return; // Retired meanwhile.
        };
        if matches!(d.link, Link::Backoff(at) if at <= now) {
            d.link = Link::Idle;
        }
        if d.waiting() && now.millis_since(d.progress_at) >= STREAM_STALL_MS {
            if let Link::Opening(conn) | Link::Ready(conn) = d.link {
                // The master target went silent with batches outstanding: reconnect.
                self.out.push_back(Output::Net(NetCommand::Close { conn }));
                d.link = Link::Backoff(now.plus_millis(self.settings.reconnect_delay_ms));
                d.sent = 0;
            }
        }
        self.connect_mt(id);
    }

    /// Files the touched disks' deadlines again (all of them, the index rebuilt, after an input
    /// that concerned every disk: disks may have come or gone).
    pub(super) fn refile(&mut self) {
        if std::mem::take(&mut self.touched_all) {
            self.touched.clear();
            self.wake = Deadlines::default();
            let ids: Vec<DiskId> = self.disks.keys().cloned().collect();
            for id in ids {
                let at = self.disk_deadline(&id);
                self.wake.set(id, at);
            }
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for id in touched.drain(..) {
            let at = self.disk_deadline(&id);
            self.wake.set(id, at);
        }
        self.touched = touched; // Keeps its capacity.
    }

    /// When the next timer is due.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        let cs = match self.cs {
            Link::Backoff(at) => Some(at),
            _ => None,
        };
        earliest(earliest(Some(self.next_heartbeat), cs), self.wake.next())
    }
}
