//! The checkers: continuously (every promise sent, every journal append, every recovery point,
//! every clock tick) and at the end of a run, for every disk and every node. The end-of-run
//! checks are in [`crate::final_check`].

use crate::cluster::{Cluster, R};
use crate::net::Node;
use crate::rng::first_difference;
use haven_core::batch::{BatchHeader, Encoding, OpKind, BLOCK_BYTES};
use haven_core::master_target::APPENDS_IN_FLIGHT_MAX;
use haven_core::protocol::Message;
use haven_core::stats::AgentDiskStats;
use haven_core::DiskId;

const B: usize = BLOCK_BYTES as usize;

impl Cluster {
    /// The durability chain: no acknowledgement runs ahead of what storage has synced.
    /// What the configuration server announces must be durable: every epoch and placement in
    /// an `Assign` or `Routes` is in its store's durable state.
    fn check_announcement(&self, msg: &Message) -> R {
        let durable = &self.cs_store.durable.protections;
        let placed = |disk: &haven_core::DiskId, epoch, ps: Option<&str>, mt: Option<&str>| {
            let p = durable.get(disk).filter(|p| p.epoch == epoch);
            let ok = p.is_some_and(|p| {
                ps.is_none_or(|x| p.process_server.as_ref().is_some_and(|c| c.as_str() == x))
                    && mt.is_none_or(|x| p.master_target.as_ref().is_some_and(|c| c.as_str() == x))
            });
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "the configuration server announced {msg:?} but its durable state has {:?}",
                    durable.get(disk)
                ))
            }
        };
        match msg {
            Message::Assign(list) => list
                .iter()
                .try_for_each(|a| placed(&a.disk, a.epoch, Some(a.process_server.as_str()), None)),
            Message::Routes(list) => list
                .iter()
                .try_for_each(|r| placed(&r.disk, r.epoch, None, Some(r.master_target.as_str()))),
            _ => Ok(()),
        }
    }

    /// The index of `disk` in `disks`, or an error naming who spoke of an unknown disk.
    pub(crate) fn disk_no(&self, disk: &DiskId, who: Node) -> Result<usize, String> {
        self.disk_index
            .get(disk)
            .copied()
            .ok_or_else(|| format!("{} spoke of unknown disk {disk}", who.name()))
    }

    pub(crate) fn check_promise(&mut self, from: Node, msg: &Message) -> R {
        if from == Node::Cs {
            return self.check_announcement(msg);
        }
        let (disk, cached, applied, journal) = match (from, msg) {
            (
                Node::Ps(i),
                Message::BatchAck {
                    disk,
                    cached_seq,
                    applied_seq,
                    ..
                }
                | Message::StreamState {
                    disk,
                    cached_seq,
                    applied_seq,
                    ..
                },
            ) => {
                let d = self.disk_no(disk, from)?;
                self.disks[d].ps_acked = self.disks[d].ps_acked.max(*cached_seq);
                let journal = self.journal_seq(disk);
                let synced = self.ps_stores[i as usize].synced_seq.get(disk);
                let cache = synced.copied().unwrap_or(0).max(journal);
                (disk, (*cached_seq, cache), *applied_seq, journal)
            }
            (
                Node::Mt(i),
                Message::StreamState {
                    disk, applied_seq, ..
                },
            )
            | (
                Node::Mt(i),
                Message::Applied {
                    disk, applied_seq, ..
                },
            ) => {
                self.disk_no(disk, from)?;
                let journal = self.mt_stores[i as usize].durable_seq(disk);
                (disk, (0, 0), *applied_seq, journal)
            }
            _ => return Ok(()),
        };
        let ((cached, cache), name) = (cached, from.name());
        if cached > cache || applied > journal {
            return Err(format!(
                "{name} promised {msg:?} with {disk} cached through {cache} and journaled through {journal}"
            ));
        }
        Ok(())
    }

    /// A journal append on master target `i`: of a replica it holds, well formed, in seq order
    /// with nothing lost or repeated (a gap only after an agent crash, with the replica marked
    /// inconsistent), and every op byte-equal to the source write that got its seq.
    pub(crate) fn check_journal(&mut self, i: usize, h: &BatchHeader, data: &[u8]) -> R {
        if let Err(e) = h.validate() {
            return Err(format!("journal append of a malformed batch: {e}"));
        }
        if h.encoding != Encoding::Raw || data.len() as u64 != h.raw_bytes {
            return Err(format!("journal append of undecoded data: {h:?}"));
        }
        let d = self.disk_no(&h.disk, Node::Mt(i as u8))?;
        let Some(r) = self.mt_stores[i].replicas.get(&h.disk) else {
            return Err(format!(
                "journal append for {}, no replica on mt{}",
                h.disk,
                i + 1
            ));
        };
        if h.epoch < r.meta.epoch {
            return Err(format!("journal append of epoch {} data", h.epoch));
        }
        let after = r.appended_seq;
        if h.first_seq != after + 1 {
            let crashed = self.agent_crashed[self.disks[d].agent];
            let gap_ok = h.first_seq > after + 1 && crashed && r.meta.inconsistent.is_some();
            if !gap_ok {
                return Err(format!(
                    "journal append {}..={} of {} after {after}: lost or repeated",
                    h.first_seq, h.last_seq, h.disk
                ));
            }
        }
        let wl = &self.disks[d].wl;
        let mut at = 0;
        for op in &h.ops {
            let Some(src) = wl.record_of_seq(op.seq) else {
                return Err(format!(
                    "seq {} of {} was never assigned to a source write",
                    op.seq, h.disk
                ));
            };
            if (op.block, op.blocks) != src.span || (op.kind == OpKind::Zero) != src.aligned_zero {
                return Err(format!(
                    "seq {} of {} is {op:?}, but the source write was {:?}",
                    op.seq, h.disk, src.span
                ));
            }
            if op.kind == OpKind::Data {
                let len = op.blocks as usize * B;
                if data[at..at + len] != src.blocks[..] {
                    return Err(format!(
                        "seq {} of {}: journal data differs from the source write",
                        op.seq, h.disk
                    ));
                }
                at += len;
            }
        }
        Ok(())
    }

    /// A recovery point of `disk` on master target `i` just became durable: the replica equals
    /// the source as it was then.
    pub(crate) fn check_point(&mut self, i: usize, disk: &DiskId, index: usize) -> R {
        let r = &self.mt_stores[i].replicas[disk];
        let h = &r.journal[index].header;
        if !h.consistent || r.meta.inconsistent.is_some() {
            return Ok(());
        }
        let seq = h.last_seq;
        let wl = &self.disks[self.disk_index[disk]].wl;
        let version = wl.seq_version[&seq];
        if r.digest.sum != wl.digest_at(version) {
            let src = wl.image_at(version);
            let at = first_difference(&src, &r.image);
            return Err(format!(
                "recovery point of {disk} at seq {seq}: replica differs from the source at byte {at:?}"
            ));
        }
        Ok(())
    }

    /// Each agent's buffer of each disk and, while healthy, each disk's RPO.
    fn check_agents(&mut self) -> R {
        let t = &self.scn.topology;
        let p = &self.scn.workload;
        // Writes start while the buffer is below its bound; those started but not yet done
        // land on top of it (the workload's largest op spans max_blocks + 1 blocks, or 3 for
        // unaligned zeroing).
        let span = (p.max_blocks + 1).max(3);
        let bound = t.buffer_blocks * BLOCK_BYTES + p.depth as u64 * span * BLOCK_BYTES;
        for a in 0..self.agents.len() {
            let Some(agent) = &self.agents[a] else {
                continue;
            };
            let stats = agent.stats();
            for d in self.disks_of(a) {
                self.check_agent_disk(d, &stats.disks[self.disks[d].slot], bound)?;
            }
        }
        Ok(())
    }

    fn check_agent_disk(&mut self, d: usize, st: &AgentDiskStats, bound: u64) -> R {
        let disk = &self.disks[d];
        if st.buffered_bytes > bound {
            return Err(format!(
                "agent{} buffers {} bytes of {}, bound {bound}",
                disk.agent + 1,
                st.buffered_bytes,
                disk.id
            ));
        }
        // RPO while healthy: from the moment this disk's replication has caught up after the
        // last fault (draining a backlog is the liveness phase's business).
        let rpo_ms = st.rpo_ms;
        if self.healthy_since.is_some() && rpo_ms == 0 {
            self.disks[d].caught_up = true;
        }
        if let (Some(bound), true) = (self.scn.expect.rpo_below_ms, self.disks[d].caught_up) {
            self.max_healthy_rpo_ms = self.max_healthy_rpo_ms.max(rpo_ms);
            if rpo_ms > bound {
                return Err(format!(
                    "RPO of {} {rpo_ms} ms while healthy, bound {bound} ms",
                    self.disks[d].id
                ));
            }
        }
        Ok(())
    }

    /// Memory and queue limits, and the RPO bound while healthy.
    pub(crate) fn check_limits(&mut self) -> R {
        self.check_agents()?;
        let max = self.scn.topology.cache_blocks * BLOCK_BYTES;
        for (i, ps) in self.pss.iter().enumerate() {
            let Some(ps) = ps else { continue };
            let used = ps.cache_bytes();
            // An empty cache always takes one batch, however large.
            if used > max + self.cache_slack && self.ps_stores[i].entries_len() > 1 {
                return Err(format!(
                    "process server ps{} cache holds {used} bytes, bound {max}",
                    i + 1
                ));
            }
        }
        for (i, s) in self.mt_stores.iter().enumerate() {
            if s.pending.len() <= APPENDS_IN_FLIGHT_MAX {
                continue;
            }
            for disk in s.replicas.keys() {
                let n = s.pending_of(disk);
                if n > APPENDS_IN_FLIGHT_MAX {
                    return Err(format!(
                        "{n} journal appends of {disk} in flight on mt{}",
                        i + 1
                    ));
                }
            }
        }
        Ok(())
    }
}
