//! The agent's connections: one to the configuration server, one per disk to its process server.

use super::*;

impl Agent {
    pub(super) fn connect_cs(&mut self) {
        let addr = self.settings.config_server_addr.clone();
        self.cs = Link::Connecting(CS_TOKEN);
        self.out.push_back(Output::Net(NetCommand::Connect {
            token: CS_TOKEN,
            addr,
            epoch: Epoch(0),
        }));
    }

    pub(super) fn connect_ps(&mut self, disk: usize) {
        if self.links[disk] != Link::Idle {
            return;
        }
        let Some(addr) = self.ps_addrs[disk].clone() else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        self.links[disk] = Link::Connecting(token);
        let epoch = self.streams[disk].epoch;
        self.out
            .push_back(Output::Net(NetCommand::Connect { token, addr, epoch }));
    }

    pub(super) fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected { token, conn, .. } => self.on_connected(token, conn),
            NetEvent::ConnectFailed { token, .. } => {
                let backoff = Link::Backoff(self.now.plus_millis(self.settings.reconnect_delay_ms));
                if token == CS_TOKEN {
                    self.cs = backoff;
                } else if let Some(i) = self
                    .links
                    .iter()
                    .position(|l| *l == Link::Connecting(token))
                {
                    self.links[i] = backoff;
                }
            }
            NetEvent::Accepted { conn, .. } => {
                self.out.push_back(Output::Net(NetCommand::Close { conn }));
            }
            NetEvent::Received { conn, msg, .. } => self.on_message(conn, msg),
            NetEvent::Closed { conn, .. } => self.on_closed(conn),
        }
    }

    fn on_connected(&mut self, token: ConnectToken, conn: ConnId) {
        if token == CS_TOKEN {
            self.cs = Link::Ready(conn);
            let disks = self
                .streams
                .iter()
                .map(|s| DiskInfo {
                    disk: s.disk.clone(),
                    size_bytes: s.size_bytes,
                    source_path: s.source_path.clone(),
                })
                .collect();
            let reg = Registration {
                data_addr: String::new(),
                api_addr: String::new(),
                disks,
            };
            self.out
                .push_back(Output::Net(NetCommand::send(conn, Message::Register(reg))));
            return;
        }
        let Some(disk) = self
            .links
            .iter()
            .position(|l| *l == Link::Connecting(token))
        else {
            // A stale attempt (the assignment changed meanwhile).
            self.out.push_back(Output::Net(NetCommand::Close { conn }));
            return;
        };
        self.links[disk] = Link::Opening(conn);
        self.progress_at[disk] = self.now;
        let s = &self.streams[disk];
        let first_seq = s.oldest_held_seq();
        let msg = Message::OpenStream {
            disk: s.disk.clone(),
            epoch: s.epoch,
            size_bytes: s.size_bytes,
            first_seq,
        };
        self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
    }

    fn on_closed(&mut self, conn: ConnId) {
        let backoff = Link::Backoff(self.now.plus_millis(self.settings.reconnect_delay_ms));
        if matches!(self.cs, Link::Ready(c) if c == conn) {
            self.cs = backoff;
        }
        for disk in 0..self.links.len() {
            if matches!(self.links[disk], Link::Opening(c) | Link::Ready(c) if c == conn) {
                self.links[disk] = backoff;
                self.streams[disk].unsend_from(0);
            }
        }
    }

    fn disk_of(&self, conn: ConnId, disk: &DiskId) -> Option<usize> {
        let i = self.streams.iter().position(|s| &s.disk == disk)?;
        matches!(self.links[i], Link::Opening(c) | Link::Ready(c) if c == conn).then_some(i)
    }

    fn on_message(&mut self, conn: ConnId, msg: Message) {
        match msg {
            Message::Assign(list) if matches!(self.cs, Link::Ready(c) if c == conn) => {
                self.on_assign(list)
            }
            Message::Retire(list) if matches!(self.cs, Link::Ready(c) if c == conn) => {
                self.on_retire(list)
            }
            Message::StreamState {
                disk,
                cached_seq,
                applied_seq,
                ..
            } => {
                let Some(i) = self.disk_of(conn, &disk) else {
                    return self.protocol_error(conn, "StreamState");
                };
                self.progress_at[i] = self.now;
                self.links[i] = Link::Ready(conn);
                self.streams[i].acked(cached_seq, applied_seq);
                self.streams[i].unsend_from(0);
                self.pump(i);
            }
            Message::BatchAck {
                disk,
                cached_seq,
                applied_seq,
                ..
            } => {
                let Some(i) = self.disk_of(conn, &disk) else {
                    return self.protocol_error(conn, "BatchAck");
                };
                self.progress_at[i] = self.now;
                self.streams[i].acked(cached_seq, applied_seq);
                self.pump(i);
            }
            Message::Busy {
                disk,
                first_seq,
                retry_after_ms,
            } => {
                let Some(i) = self.disk_of(conn, &disk) else {
                    return self.protocol_error(conn, "Busy");
                };
                self.progress_at[i] = self.now;
                self.streams[i].unsend_from(first_seq);
                // A later Busy never shortens an earlier wait (an out-of-order refusal says 0).
                let until = self.now.plus_millis(retry_after_ms.min(10_000));
                self.busy_until[i] = self.busy_until[i].max(until);
            }
            Message::Reject { .. } => {} // The driver logs it; the connection closes.
            other => self.protocol_error(conn, other.kind()),
        }
    }

    fn protocol_error(&mut self, conn: ConnId, what: &str) {
        let _ = what;
        self.out.push_back(Output::Net(NetCommand::Close { conn }));
    }

    fn on_assign(&mut self, list: Vec<crate::protocol::Assignment>) {
        for a in list {
            let Some(i) = self.streams.iter().position(|s| s.disk == a.disk) else {
                continue;
            };
            let s = &mut self.streams[i];
            if a.epoch < s.epoch {
                continue; // A stale assignment.
            }
            s.batch_bytes_max = a.batch_bytes_max;
            s.batch_delay_ms = a.batch_delay_ms;
            // Protected again: stream anew from the next seq, starting with a full copy. Also when
            // this agent missed the retirement (it was away while the disk was unprotected and
            // protected again): its copy is of an older protection.
            let missed = s.copied_under.is_some_and(|e| e != Epoch(0) && e < a.epoch)
                && matches!(s.copy, super::copy::CopyState::Idle);
            if s.retired || missed {
                s.retired = false;
                self.start_copy(i);
            }
            let s = &mut self.streams[i];
            let changed = self.ps_addrs[i].as_deref() != Some(a.process_server_addr.as_str())
                || s.epoch != a.epoch;
            s.epoch = a.epoch;
            // Batches not yet sent carry the epoch they will be sent under.
            for b in s.queue.iter_mut() {
                b.header.epoch = a.epoch;
            }
            self.ps_addrs[i] = Some(a.process_server_addr);
            if changed {
                if let Link::Opening(c) | Link::Ready(c) = self.links[i] {
                    self.out
                        .push_back(Output::Net(NetCommand::Close { conn: c }));
                }
                self.links[i] = Link::Idle;
                self.streams[i].unsend_from(0);
                self.connect_ps(i);
            }
        }
    }

    fn on_retire(&mut self, list: Vec<crate::protocol::Retired>) {
        for r in list {
            let Some(i) = self.streams.iter().position(|s| s.disk == r.disk) else {
                continue;
            };
            if self.streams[i].retired || r.epoch < self.streams[i].epoch {
                continue; // Done already, or about an older protection.
            }
            self.streams[i].retire();
            self.streams[i].epoch = r.epoch;
            if let Link::Opening(c) | Link::Ready(c) = self.links[i] {
                self.out
                    .push_back(Output::Net(NetCommand::Close { conn: c }));
            }
            self.links[i] = Link::Idle;
            self.ps_addrs[i] = None;
            self.batch_deadline[i] = None;
            self.out.push_back(Output::Retired { disk: i });
        }
    }
}
