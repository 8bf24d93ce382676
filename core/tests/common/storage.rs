//! The `Cluster`'s storage: it carries out the roles' storage outputs in memory (source disk,
//! process server cache, master target journal and replica), checking the durability and ordering
//! promises as it goes, and crashes and restarts the process server.

use super::cluster::{Cluster, Local};
use super::{ps_settings, Node, B, DISK_BYTES};
use haven_core::agent::{self, SourceOp};
use haven_core::batch::{Encoding, OpKind};
use haven_core::master_target as mt;
use haven_core::net::NetEvent;
use haven_core::process_server::{self as ps, CacheDiskMeta, CacheLoc, CachedBatch, ProcessServer};
use haven_core::protocol::{self, Message};
use haven_core::ConnId;

impl Cluster {
    // ---- storage ----

    pub(super) fn agent_output(&mut self, o: agent::Output) {
        match o {
            agent::Output::Net(cmd) => self.net_cmd(Node::Agent, cmd),
            agent::Output::CopyRead { disk, offset } => {
                self.lifecycle.push(format!("CopyRead {disk} {offset}"));
                let end = (offset as usize + agent::COPY_CHUNK_BYTES as usize).min(DISK_BYTES);
                let data = self.source[(offset as usize).min(end)..end].to_vec();
                self.local
                    .push_back(Local::Agent(agent::Input::CopyData { disk, offset, data }));
            }
            agent::Output::CopyCached { disk, epoch } => {
                self.lifecycle.push(format!("CopyCached {disk} {epoch}"))
            }
            agent::Output::Retired { disk } => self.lifecycle.push(format!("Retired {disk}")),
            agent::Output::SourceWrite { io, disk, op } => {
                assert_eq!(disk, 0);
                let aligned_zero = matches!(op, SourceOp::Zero { .. }) && op.aligned();
                match &op {
                    SourceOp::Write { offset, data } => {
                        let o = *offset as usize;
                        self.source[o..o + data.len()].copy_from_slice(data);
                    }
                    SourceOp::Zero { offset, len, .. } => {
                        let o = *offset as usize;
                        self.source[o..o + *len as usize].fill(0);
                    }
                }
                let (first, blocks) = op.block_span();
                let (s, e) = (first as usize * B, (first as usize + blocks as usize) * B);
                let data = (!aligned_zero).then(|| self.source[s..e].to_vec());
                self.source_at.push(self.source.clone());
                self.source_ops.push((io, op));
                self.local
                    .push_back(Local::Agent(agent::Input::SourceDone { io, data }));
            }
            agent::Output::SourceSync { io, .. } => self
                .local
                .push_back(Local::Agent(agent::Input::Synced { io })),
            agent::Output::Complete { io, result } => {
                assert!(
                    self.completed.insert(io, result).is_none(),
                    "io {io} completed twice"
                );
            }
            agent::Output::Reserve { disk, reserved } => self
                .local
                .push_back(Local::Agent(agent::Input::Reserved { disk, reserved })),
        }
    }

    pub(super) fn ps_output(&mut self, o: ps::Output) {
        match o {
            ps::Output::ForgetDisk(disk) => {
                self.ps_meta.remove(&disk);
                self.lifecycle.push(format!("ForgetDisk {disk}"));
            }
            ps::Output::Net(cmd) => self.net_cmd(Node::Ps, cmd),
            ps::Output::CacheAppend { id, header, data } => {
                let frame = protocol::encode(&Message::Batch(header.clone()), &data).unwrap();
                let loc = CacheLoc {
                    segment: 0,
                    offset: self.next_loc,
                };
                self.next_loc += frame.len() as u64;
                let entry = CachedBatch {
                    disk: header.disk.clone(),
                    epoch: header.epoch,
                    first_seq: header.first_seq,
                    last_seq: header.last_seq,
                    bytes: frame.len() as u64,
                    loc,
                };
                self.pending_cache.push_back((id, entry, frame));
                if !self.hold_cache {
                    self.persist_cache(usize::MAX);
                }
            }
            ps::Output::Forward { conn, disk, loc } => {
                let frame = self
                    .cache
                    .get(&loc)
                    .expect("forward of a batch not in the cache");
                let (msg, data, _) = protocol::decode(frame).unwrap().unwrap();
                let Message::Batch(h) = &msg else {
                    panic!("cache holds a {}", msg.kind())
                };
                assert_eq!(h.disk, disk);
                if self.conns.get(&conn).is_some_and(|c| c.open) {
                    let to = self.other_end(conn, Node::Ps);
                    self.net
                        .push_back((to, NetEvent::Received { conn, msg, data }));
                }
            }
            ps::Output::CacheRelease { disk, through } => {
                assert!(
                    through <= self.journal_seq,
                    "cache released past what is journaled"
                );
                let cache = &mut self.cache;
                self.cache_index.retain(|e| {
                    let gone = e.disk == disk && e.last_seq <= through;
                    if gone {
                        cache.remove(&e.loc);
                    }
                    !gone
                });
            }
            ps::Output::SaveDisk { save, meta } => {
                self.ps_meta.insert(meta.disk.clone(), meta);
                if let Some(save) = save {
                    self.local
                        .push_back(Local::Ps(ps::Input::DiskSaved { save }));
                }
            }
        }
    }

    /// Makes the first `n` pending cache appends durable.
    pub fn persist_cache(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, entry, frame)) = self.pending_cache.pop_front() else {
                return;
            };
            self.cache_persisted_seq = self.cache_persisted_seq.max(entry.last_seq);
            self.cache.insert(entry.loc, frame);
            let (loc, bytes) = (entry.loc, entry.bytes);
            self.cache_index.push(entry);
            self.local
                .push_back(Local::Ps(ps::Input::CachePersisted { id, loc, bytes }));
        }
    }

    pub(super) fn mt_output(&mut self, o: mt::Output) {
        match o {
            mt::Output::RemoveReplica(disk) => self.lifecycle.push(format!("RemoveReplica {disk}")),
            mt::Output::Net(cmd) => self.net_cmd(Node::Mt, cmd),
            mt::Output::CreateReplica { save, meta } => {
                assert_eq!(meta.size_bytes, DISK_BYTES as u64);
                self.replica = vec![0; meta.size_bytes as usize];
                self.local
                    .push_back(Local::Mt(mt::Input::ReplicaSaved { save }));
            }
            mt::Output::SaveReplica { save, .. } => {
                self.local
                    .push_back(Local::Mt(mt::Input::ReplicaSaved { save }));
            }
            mt::Output::JournalAppend {
                id,
                header,
                data,
                point,
                ..
            } => {
                if let Some(p) = &point {
                    assert_eq!(p.seq, header.last_seq, "a point inside a batch");
                }
                self.pending_journal
                    .push_back((id, header, data, point.is_some()));
                if !self.hold_journal {
                    self.persist_journal(usize::MAX);
                }
            }
        }
    }

    /// Makes the first `n` pending journal appends durable, applying them to the replica.
    pub fn persist_journal(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, h, data, point)) = self.pending_journal.pop_front() else {
                return;
            };
            h.validate().unwrap();
            assert_eq!(h.encoding, Encoding::Raw);
            assert_eq!(data.len() as u64, h.raw_bytes);
            // Exactly once, in order.
            assert_eq!(
                h.first_seq,
                self.journal_seq + 1,
                "journal append out of order or repeated: {h:?}"
            );
            let mut at = 0;
            for op in &h.ops {
                // Seq order is the order the writes reached the source disk.
                let (_, src) = &self.source_ops[op.seq as usize - 1];
                assert_eq!(
                    (op.block, op.blocks),
                    src.block_span(),
                    "seq {} is not the write carried out as #{}",
                    op.seq,
                    op.seq
                );
                let aligned_zero = matches!(src, SourceOp::Zero { .. }) && src.aligned();
                assert_eq!(
                    op.kind == OpKind::Zero,
                    aligned_zero,
                    "op kind of seq {}",
                    op.seq
                );
                let (s, len) = (op.block as usize * B, op.blocks as usize * B);
                match op.kind {
                    OpKind::Data => {
                        self.replica[s..s + len].copy_from_slice(&data[at..at + len]);
                        at += len;
                    }
                    OpKind::Zero => self.replica[s..s + len].fill(0),
                }
            }
            assert_eq!(at, data.len());
            self.journal_seq = h.last_seq;
            self.journal_bytes += data.len() as u64 + 64;
            self.journal_appends += 1;
            assert_eq!(
                point, h.consistent,
                "a point where a batch is not consistent"
            );
            if point {
                assert!(
                    self.replica == self.source_at[h.last_seq as usize],
                    "replica differs from the source as it was at seq {}",
                    h.last_seq
                );
                self.replica_at.insert(h.last_seq, self.replica.clone());
            }
            self.local.push_back(Local::Mt(mt::Input::JournalPersisted {
                id,
                journal_bytes: self.journal_bytes,
            }));
        }
    }

    // ---- process server crash ----

    pub fn crash_ps(&mut self) {
        self.ps = None;
        self.pending_cache.clear(); // not synced: lost
        self.local.retain(|l| !matches!(l, Local::Ps(_)));
        self.net.retain(|(to, _)| *to != Node::Ps);
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && (c.ends.0 == Node::Ps || c.ends.1 == Node::Ps))
            .map(|(k, _)| *k)
            .collect();
        for conn in conns {
            let c = self.conns.get_mut(&conn).unwrap();
            c.open = false;
            let other = if c.ends.0 == Node::Ps {
                c.ends.1
            } else {
                c.ends.0
            };
            self.net.push_back((
                other,
                NetEvent::Closed {
                    conn,
                    reason: "process server crashed".into(),
                },
            ));
        }
    }

    pub fn restart_ps(&mut self) {
        let metas: Vec<CacheDiskMeta> = self.ps_meta.values().cloned().collect();
        let mut cached = self.cache_index.clone();
        cached.sort_by_key(|e| (e.disk.clone(), e.first_seq));
        self.ps = Some(ProcessServer::new(ps_settings(), metas, cached, self.now));
    }
}
