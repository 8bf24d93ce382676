//! The end of a run: whether everything has converged, and the end-of-run checks, for every
//! disk (nothing acknowledged lost, recovery points resumed, the replica against the source,
//! every listed recovery point re-read) and the scenario's expectations.

use crate::cluster::{Cluster, SimDisk, R};
use crate::rng::first_difference;
use crate::scenario::ReplicaExpect;
use crate::stores::{apply, JournalEntry, Replica};
use crate::workload::Replay;
use std::collections::BTreeSet;

impl Cluster {
    /// Everything written has made it through, and nothing is in flight.
    pub fn converged(&self) -> bool {
        self.events.is_empty()
            && self.disks.iter().all(|d| d.wl.done())
            && self.nodes().into_iter().all(|n| self.up(n))
            && (0..self.disks.len()).all(|d| self.disk_converged(d))
            && self.pss.iter().flatten().all(|p| p.cache_bytes() == 0)
            && self.agent_stores.iter().all(|s| s.pending.is_empty())
            && self.ps_stores.iter().all(|s| s.pending.is_empty())
            && self.mt_stores.iter().all(|s| s.pending.is_empty())
    }

    fn disk_converged(&self, d: usize) -> bool {
        let disk = &self.disks[d];
        let Some(a) = &self.agents[disk.agent] else {
            return false;
        };
        let max_seq = disk.wl.max_seq();
        disk.wl.done()
            && a.stats().disks[disk.slot].buffered_bytes == 0
            && (max_seq <= disk.incarnation_base || self.journal_seq(&disk.id) >= max_seq)
    }

    /// The end-of-run checks.
    pub fn final_check(&self) -> R {
        for d in 0..self.disks.len() {
            self.final_check_disk(d)
                .map_err(|e| format!("{}: {e}", self.disks[d].id))?;
        }
        let e = &self.scn.expect;
        let inconsistent = self
            .mt_stores
            .iter()
            .flat_map(|s| s.replicas.values())
            .any(|r| r.meta.inconsistent.is_some());
        if e.replica == ReplicaExpect::Gap && !inconsistent {
            return Err("expected a gap; every replica is consistent".into());
        }
        if e.busy && self.counters.busy == 0 {
            return Err("expected a process server to say Busy".into());
        }
        for n in &e.stopped {
            if self.counters.stops.get(n).copied().unwrap_or(0) == 0 {
                return Err(format!("expected {} to stop on a storage error", n.name()));
            }
        }
        Ok(())
    }

    /// Nothing acknowledged is lost: every seq a process server acknowledged, and (without an
    /// agent crash) every seq at all, is in the journal, and the journal ends at the last one.
    fn check_nothing_lost(&self, disk: &SimDisk, journal: &[JournalEntry]) -> R {
        let crashed = self.agent_crashed[disk.agent];
        let mut journaled = BTreeSet::new();
        for e in journal {
            journaled.extend(e.header.ops.iter().map(|o| o.seq));
        }
        for (i, s) in self.ps_stores.iter().enumerate() {
            let ranges = s.durable_ranges.get(&disk.id).map_or(&[][..], |r| &r[..]);
            for &(first, last) in ranges {
                if let Some(seq) = (first..=last).find(|s| !journaled.contains(s)) {
                    return Err(format!(
                        "seq {seq} was durably cached (and may be acknowledged) by ps{} but is not in the journal",
                        i + 1
                    ));
                }
            }
        }
        let wl = &disk.wl;
        if !crashed {
            if let Some(seq) = wl.seq_version.keys().find(|s| !journaled.contains(s)) {
                return Err(format!("seq {seq} is not in the journal (no agent crash)"));
            }
        }
        let durable = journal.last().map_or(0, |e| e.header.last_seq);
        if !crashed && durable != wl.max_seq() {
            return Err(format!(
                "journal ends at {durable}, the agent wrote through {}",
                wl.max_seq()
            ));
        }
        Ok(())
    }

    fn final_check_disk(&self, d: usize) -> R {
        let disk = &self.disks[d];
        let replica = self.replica(&disk.id).map(|(_, r)| r);
        let journal = replica.map_or(&[][..], |r| &r.journal[..]);
        let crashed = self.agent_crashed[disk.agent];
        let max_seq = disk.wl.max_seq();
        self.check_nothing_lost(disk, journal)?;
        // Recovery points resume: the last write is a recovery point.
        if let Some(last) = journal.last() {
            if !last.header.consistent || (last.header.last_seq != max_seq && !crashed) {
                return Err(format!(
                    "the last journal entry {:?} is not a recovery point at {max_seq}",
                    last.header.last_seq
                ));
            }
        }
        let Some(replica) = replica else {
            return Ok(());
        };
        // The replica against the source.
        let inconsistent = replica.meta.inconsistent.is_some();
        let expect = self.scn.expect.replica;
        match (expect, inconsistent) {
            (ReplicaExpect::Equal, true) => {
                return Err("the replica was marked inconsistent".into())
            }
            (_, true) if !crashed => {
                return Err("the replica was marked inconsistent without an agent crash".into())
            }
            _ => {}
        }
        // After an agent crash the replica may lack writes the agent had not handed on (by
        // design, until the activity log): only its recovery points are checked then.
        let strict = !crashed || expect == ReplicaExpect::Equal;
        if strict && !inconsistent {
            if let Some(at) = first_difference(&replica.image, &disk.wl.source) {
                return Err(format!("the replica differs from the source at byte {at}"));
            }
        }
        reread_points(disk, replica)
    }
}

/// Every recovery point listed reads back, byte for byte, as the source was at its seq: the
/// journal and the source history are replayed side by side.
fn reread_points(disk: &SimDisk, r: &Replica) -> R {
    let wl = &disk.wl;
    let bytes = wl.source.len();
    let mut replica = vec![0u8; bytes];
    let mut src = Replay::new(bytes);
    let mut next = 0;
    // Points past a gap are not consistent with the source (a resync is needed).
    let mut expect = 1;
    let gap_at = r
        .journal
        .iter()
        .position(|e| {
            let gap = e.header.first_seq != expect;
            expect = e.header.last_seq + 1;
            gap
        })
        .unwrap_or(usize::MAX);
    for &(seq, index) in &r.points {
        if index >= gap_at {
            break;
        }
        while next <= index {
            let e = &r.journal[next];
            apply(&mut replica, &e.header, &e.data);
            next += 1;
        }
        let version = wl.seq_version[&seq];
        src.advance(wl, version);
        if let Some(at) = first_difference(&replica, &src.img) {
            return Err(format!(
                "recovery point at seq {seq} reads back different from the source at byte {at}"
            ));
        }
    }
    Ok(())
}
