//! The process server's streams: an agent's `OpenStream` (fencing, what is saved before it is
//! answered), the configuration server's `Routes` and `Retire`, and the durable saves they wait
//! for.

use super::*;
use crate::protocol::Route;

impl ProcessServer {
    pub(super) fn on_open(
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
        let meta = CacheDiskMeta {
            disk: disk.clone(),
            epoch,
            size_bytes,
            applied_seq: 0,
        };
        let known = self.disks.contains_key(&disk);
        let d = self.disk_entry(meta);
        if epoch < d.meta.epoch {
            let reason = format!(
                "disk {disk}: epoch {epoch} is older than {}; this stream is fenced",
                d.meta.epoch
            );
            return self.refuse(conn, reason);
        }
        // A disk new here (its stream came before its route), a new epoch or a new size:
        // saved durably before the agent is answered.
        let new_epoch = d.meta.epoch != epoch;
        let changed = !known || new_epoch || d.meta.size_bytes != size_bytes;
        d.meta.epoch = epoch;
        d.meta.size_bytes = size_bytes;
        d.agent = Some(conn);
        if new_epoch {
            self.drop_older_epochs(&disk);
        }
        let d = self.disks.get_mut(&disk).expect("entry made above");
        // The link to the master target was made for the old epoch: it takes a new connection.
        let mut reopen_mt = new_epoch;
        if first_seq > d.expect_seq {
            // The agent no longer has the writes in between (it crashed). Take what it has; the
            // master target records the gap and the replica is marked for resync. If nothing
            // cached will carry the gap to the master target, reopen its stream so that
            // `OpenStream` tells it now (the replica is flagged at once, not at the next write).
            d.expect_seq = first_seq;
            reopen_mt |= d.entries.is_empty();
        }
        let mut reopen = None;
        if let (true, Link::Opening(c) | Link::Ready(c)) = (reopen_mt, d.link) {
            d.link = Link::Idle;
            d.sent = 0;
            reopen = Some(c);
        }
        if changed {
            self.save_durably(&disk);
        }
        let d = self.disks.get_mut(&disk).expect("entry made above");
        if d.saving.is_some() {
            d.state_for = Some(conn); // Answered at `DiskSaved`.
        } else {
            d.state_for = None;
            self.send_state(conn, &disk);
        }
        if let Some(conn) = reopen {
            self.out.push_back(Output::Net(NetCommand::Close { conn }));
        }
    }

    /// Tells the agent on `conn` where the disk's stream stands.
    fn send_state(&mut self, conn: ConnId, disk: &DiskId) {
        let d = &self.disks[disk];
        let msg = Message::StreamState {
            disk: disk.clone(),
            epoch: d.meta.epoch,
            cached_seq: d.cached_seq,
            applied_seq: d.meta.applied_seq,
        };
        self.out.push_back(Output::Net(NetCommand::send(conn, msg)));
    }

    /// Saves through `save` are durable: the streams that waited for them are answered.
    pub(super) fn on_saved(&mut self, save: u64) {
        let mut answer = Vec::new();
        for (id, d) in self.disks.iter_mut() {
            if d.saving.is_some_and(|s| s <= save) {
                d.saving = None;
                if let Some(conn) = d.state_for.take().filter(|c| d.agent == Some(*c)) {
                    answer.push((conn, id.clone()));
                }
            }
        }
        for (conn, disk) in answer {
            self.send_state(conn, &disk);
        }
    }

    /// A newer epoch took `disk` over: what is cached of older ones can never be applied (the
    /// master target refuses an older epoch, and forwarding it would only be refused again and
    /// again), so it is released, not forwarded. Batches are cached in seq order and epochs
    /// only grow along it: the older ones are at the front.
    fn drop_older_epochs(&mut self, disk: &DiskId) {
        let d = self.disks.get_mut(disk).expect("a known disk");
        let epoch = d.meta.epoch;
        let mut through = None;
        while d.entries.front().is_some_and(|e| e.epoch < epoch) {
            let e = d.entries.pop_front().expect("front exists");
            d.cached_bytes -= e.bytes;
            through = Some(e.last_seq);
        }
        d.sent = 0;
        if let Some(through) = through {
            let disk = disk.clone();
            self.out.push_back(Output::CacheRelease { disk, through });
        }
    }

    /// Saves `disk`'s metadata durably (a new epoch or size, or a disk new here, which a peer
    /// will be told of): its stream to the agent is answered, and its master target connected,
    /// only once `DiskSaved` says so.
    fn save_durably(&mut self, disk: &DiskId) {
        let save = self.next_save;
        self.next_save += 1;
        let d = self.disks.get_mut(disk).expect("a known disk");
        d.saving = Some(save);
        let meta = d.meta.clone();
        self.out.push_back(Output::SaveDisk {
            save: Some(save),
            meta,
        });
    }

    pub(super) fn on_routes(&mut self, routes: Vec<Route>) {
        for r in routes {
            let meta = CacheDiskMeta {
                disk: r.disk.clone(),
                epoch: r.epoch,
                size_bytes: r.size_bytes,
                applied_seq: 0,
            };
            let known = self.disks.contains_key(&r.disk);
            let d = self.disk_entry(meta);
            if r.epoch < d.meta.epoch {
                continue; // A route of an older protection.
            }
            // A disk new here, or one whose epoch or size the route corrects (a disk known
            // only from cached batches after a restart has neither): saved before it is used.
            let new_epoch = d.meta.epoch != r.epoch;
            let changed = !known || new_epoch || d.meta.size_bytes != r.size_bytes;
            d.meta.epoch = r.epoch;
            d.meta.size_bytes = r.size_bytes;
            if new_epoch {
                self.drop_older_epochs(&r.disk);
            }
            if changed {
                self.save_durably(&r.disk);
            }
            let d = self.disks.get_mut(&r.disk).expect("just inserted");
            if new_epoch || d.route.as_deref() != Some(r.master_target_addr.as_str()) {
                if let Link::Opening(c) | Link::Ready(c) = d.link {
                    self.out
                        .push_back(Output::Net(NetCommand::Close { conn: c }));
                }
                let d = self.disks.get_mut(&r.disk).expect("just inserted");
                d.route = Some(r.master_target_addr);
                d.link = Link::Idle;
                d.sent = 0;
                self.connect_mt(&r.disk);
            }
        }
    }

    /// Protections that ended: drop everything cached of the disk (nobody will take it), close
    /// its streams, and forget the disk.
    pub(super) fn on_retire(&mut self, list: Vec<crate::protocol::Retired>) {
        for r in list {
            let Some(d) = self.disks.get(&r.disk) else {
                continue;
            };
            if d.meta.epoch > r.epoch {
                continue; // A newer protection holds the disk.
            }
            let d = self.disks.remove(&r.disk).expect("checked");
            for conn in [d.agent, d.link_conn()].into_iter().flatten() {
                self.out.push_back(Output::Net(NetCommand::Close { conn }));
            }
            self.out.push_back(Output::CacheRelease {
                disk: r.disk.clone(),
                through: Seq::MAX,
            });
            self.out.push_back(Output::ForgetDisk(r.disk));
        }
    }
}
