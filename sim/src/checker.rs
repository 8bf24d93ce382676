//! The checkers: continuously (every promise sent, every journal append, every recovery point,
//! every clock tick) and at the end of a run.

use crate::cluster::{Cluster, R};
use crate::net::Node;
use crate::rng::first_difference;
use crate::scenario::ReplicaExpect;
use crate::stores::apply;
use crate::workload::Replay;
use haven_core::batch::{BatchHeader, Encoding, OpKind, BLOCK_BYTES};
use haven_core::master_target::APPENDS_IN_FLIGHT_MAX;
use haven_core::protocol::Message;

const B: usize = BLOCK_BYTES as usize;

impl Cluster {
    fn replica_inconsistent(&self) -> bool {
        self.mt_store
            .metas
            .values()
            .any(|m| m.inconsistent.is_some())
    }

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

    pub(crate) fn check_promise(&mut self, from: Node, msg: &Message) -> R {
        if from == Node::Cs {
            return self.check_announcement(msg);
        }
        let (cached, applied) = match (from, msg) {
            (
                Node::Ps,
                Message::BatchAck {
                    cached_seq,
                    applied_seq,
                    ..
                }
                | Message::StreamState {
                    cached_seq,
                    applied_seq,
                    ..
                },
            ) => {
                self.ps_acked = self.ps_acked.max(*cached_seq);
                (*cached_seq, *applied_seq)
            }
            (Node::Mt, Message::StreamState { applied_seq, .. })
            | (Node::Mt, Message::Applied { applied_seq, .. }) => (0, *applied_seq),
            _ => return Ok(()),
        };
        let journal = self.mt_store.durable_seq();
        let cache = self.ps_store.synced_seq.max(journal);
        if cached > cache || applied > journal {
            return Err(format!(
                "{from:?} promised {msg:?} with cache synced through {cache} and journal through {journal}"
            ));
        }
        Ok(())
    }

    /// A journal append: well formed, in seq order with nothing lost or repeated (a gap only
    /// after an agent crash, with the replica marked inconsistent), and every op byte-equal to
    /// the source write that got its seq.
    pub(crate) fn check_journal(&mut self, h: &BatchHeader, data: &[u8]) -> R {
        if let Err(e) = h.validate() {
            return Err(format!("journal append of a malformed batch: {e}"));
        }
        if h.encoding != Encoding::Raw || data.len() as u64 != h.raw_bytes {
            return Err(format!("journal append of undecoded data: {h:?}"));
        }
        let meta = self.mt_store.metas.get(&h.disk);
        if meta.is_some_and(|m| h.epoch < m.epoch) {
            return Err(format!("journal append of epoch {} data", h.epoch));
        }
        let after = self.mt_store.appended_seq;
        if h.first_seq != after + 1 {
            let gap_ok =
                h.first_seq > after + 1 && self.agent_crashed && self.replica_inconsistent();
            if !gap_ok {
                return Err(format!(
                    "journal append {}..={} after {after}: lost or repeated",
                    h.first_seq, h.last_seq
                ));
            }
        }
        let mut at = 0;
        for op in &h.ops {
            let Some(src) = self.wl.record_of_seq(op.seq) else {
                return Err(format!(
                    "seq {} was never assigned to a source write",
                    op.seq
                ));
            };
            if (op.block, op.blocks) != src.span || (op.kind == OpKind::Zero) != src.aligned_zero {
                return Err(format!(
                    "seq {} is {op:?}, but the source write was {:?}",
                    op.seq, src.span
                ));
            }
            if op.kind == OpKind::Data {
                let len = op.blocks as usize * B;
                if data[at..at + len] != src.blocks[..] {
                    return Err(format!(
                        "seq {}: journal data differs from the source write",
                        op.seq
                    ));
                }
                at += len;
            }
        }
        Ok(())
    }

    /// A recovery point just became durable: the replica equals the source as it was then.
    pub(crate) fn check_point(&mut self, index: usize) -> R {
        let h = &self.mt_store.journal[index].header;
        if !h.consistent || self.replica_inconsistent() {
            return Ok(());
        }
        let seq = h.last_seq;
        let version = self.wl.seq_version[&seq];
        if self.mt_store.digest.sum != self.wl.digest_at(version) {
            let src = self.wl.image_at(version);
            let at = first_difference(&src, &self.mt_store.replica);
            return Err(format!(
                "recovery point at seq {seq}: replica differs from the source at byte {at:?}"
            ));
        }
        Ok(())
    }

    /// Memory and queue limits, and the RPO bound while healthy.
    pub(crate) fn check_limits(&mut self) -> R {
        let t = &self.scn.topology;
        let p = &self.scn.workload;
        if let Some(a) = &self.agent {
            let st = &a.stats().disks[0];
            // Writes start while the buffer is below its bound; those started but not yet done
            // land on top of it.
            // (the workload's largest op spans max_blocks + 1 blocks, or 3 for unaligned zeroing).
            let span = (p.max_blocks + 1).max(3);
            let bound = t.buffer_blocks * BLOCK_BYTES + p.depth as u64 * span * BLOCK_BYTES;
            if st.buffered_bytes > bound {
                return Err(format!(
                    "agent buffers {} bytes, bound {bound}",
                    st.buffered_bytes
                ));
            }
            // RPO while healthy: from the moment replication has caught up after the last fault
            // (draining a backlog is the liveness phase's business).
            if self.healthy_since.is_some() && st.rpo_ms == 0 {
                self.caught_up = true;
            }
            if let (Some(bound), true) = (self.scn.expect.rpo_below_ms, self.caught_up) {
                self.max_healthy_rpo_ms = self.max_healthy_rpo_ms.max(st.rpo_ms);
                if st.rpo_ms > bound {
                    return Err(format!(
                        "RPO {} ms while healthy, bound {bound} ms",
                        st.rpo_ms
                    ));
                }
            }
        }
        if let Some(ps) = &self.ps {
            let used = ps.cache_bytes();
            let max = t.cache_blocks * BLOCK_BYTES;
            // An empty cache always takes one batch, however large.
            if used > max + self.cache_slack && self.ps_store.entries_len() > 1 {
                return Err(format!(
                    "process server cache holds {used} bytes, bound {max}"
                ));
            }
        }
        if self.mt_store.pending.len() > APPENDS_IN_FLIGHT_MAX {
            return Err(format!(
                "{} journal appends in flight",
                self.mt_store.pending.len()
            ));
        }
        Ok(())
    }

    /// Everything written has made it through, and nothing is in flight.
    pub fn converged(&self) -> bool {
        let (Some(a), Some(ps)) = (&self.agent, &self.ps) else {
            return false;
        };
        self.events.is_empty()
            && self.mt.is_some()
            && self.cs.is_some()
            && self.wl.done()
            && a.stats().disks[0].buffered_bytes == 0
            && (self.wl.max_seq() <= self.incarnation_base
                || self.mt_store.durable_seq() >= self.wl.max_seq())
            && ps.cache_bytes() == 0
            && self.agent_store.pending.is_empty()
            && self.ps_store.pending.is_empty()
            && self.mt_store.pending.is_empty()
    }

    /// The end-of-run checks.
    pub fn final_check(&self) -> R {
        let durable = self.mt_store.durable_seq();
        let max_seq = self.wl.max_seq();
        let inconsistent = self.replica_inconsistent();
        // Nothing acknowledged is lost: every seq the process server acknowledged, and (without
        // an agent crash) every seq at all, is in the journal.
        let mut journaled = std::collections::BTreeSet::new();
        for e in &self.mt_store.journal {
            journaled.extend(e.header.ops.iter().map(|o| o.seq));
        }
        for &(first, last) in &self.ps_store.durable_ranges {
            for seq in first..=last {
                if !journaled.contains(&seq) {
                    return Err(format!(
                        "seq {seq} was durably cached (and may be acknowledged) by the process server but is not in the journal"
                    ));
                }
            }
        }
        if !self.agent_crashed {
            if let Some(seq) = self.wl.seq_version.keys().find(|s| !journaled.contains(s)) {
                return Err(format!("seq {seq} is not in the journal (no agent crash)"));
            }
        }
        if !self.agent_crashed && durable != max_seq {
            return Err(format!(
                "journal ends at {durable}, the agent wrote through {max_seq}"
            ));
        }
        // Recovery points resume: the last write is a recovery point.
        if let Some(last) = self.mt_store.journal.last() {
            if !last.header.consistent || (last.header.last_seq != max_seq && !self.agent_crashed) {
                return Err(format!(
                    "the last journal entry {:?} is not a recovery point at {max_seq}",
                    last.header.last_seq
                ));
            }
        }
        // The replica against the source.
        let expect = self.scn.expect.replica;
        match (expect, inconsistent) {
            (ReplicaExpect::Gap, false) => {
                return Err("expected a gap; the replica is consistent".into())
            }
            (ReplicaExpect::Equal, true) => {
                return Err("the replica was marked inconsistent".into())
            }
            (_, true) if !self.agent_crashed => {
                return Err("the replica was marked inconsistent without an agent crash".into())
            }
            _ => {}
        }
        // After an agent crash the replica may lack writes the agent had not handed on (by
        // design, until the activity log): only its recovery points are checked then.
        let strict = !self.agent_crashed || expect == ReplicaExpect::Equal;
        if strict && !inconsistent && !self.mt_store.replica.is_empty() {
            if let Some(at) = first_difference(&self.mt_store.replica, &self.wl.source) {
                return Err(format!("the replica differs from the source at byte {at}"));
            }
        }
        self.reread_points()?;
        let e = &self.scn.expect;
        if e.busy && self.counters.busy == 0 {
            return Err("expected the process server to say Busy".into());
        }
        for n in &e.stopped {
            if self.counters.stops[n.index()] == 0 {
                return Err(format!("expected {} to stop on a storage error", n.name()));
            }
        }
        Ok(())
    }

    /// Every recovery point listed reads back, byte for byte, as the source was at its seq: the
    /// journal and the source history are replayed side by side.
    fn reread_points(&self) -> R {
        let bytes = self.wl.source.len();
        let mut replica = vec![0u8; bytes];
        let mut src = Replay::new(bytes);
        let mut next = 0;
        // Points past a gap are not consistent with the source (a resync is needed).
        let mut expect = 1;
        let gap_at = self
            .mt_store
            .journal
            .iter()
            .position(|e| {
                let gap = e.header.first_seq != expect;
                expect = e.header.last_seq + 1;
                gap
            })
            .unwrap_or(usize::MAX);
        for &(seq, index) in &self.mt_store.points {
            if index >= gap_at {
                break;
            }
            while next <= index {
                let e = &self.mt_store.journal[next];
                apply(&mut replica, &e.header, &e.data);
                next += 1;
            }
            let version = self.wl.seq_version[&seq];
            src.advance(&self.wl, version);
            if let Some(at) = first_difference(&replica, &src.img) {
                return Err(format!(
                    "recovery point at seq {seq} reads back different from the source at byte {at}"
                ));
            }
        }
        Ok(())
    }
}
