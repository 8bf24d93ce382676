//! The durability chain, checked on the real drivers at the turmoil level: at the instant a
//! process server or master target sends an acknowledgement, what it promises must already be
//! on its disk durably (what a power loss at that instant would leave, read back with the
//! runtime's own segment log), and a process server may delete a cache segment only when the
//! master target holds every batch in it durably. The workload checks the agent's part (a flush
//! answered means the source disk is durable). Violations are collected, not panicked on (the
//! hooks run inside the hosts' tasks); the run fails on them at its end.

use crate::storage::SimVfs;
use haven_core::ids::DiskId;
use haven_core::protocol::Message;
use haven_runtime::segment::{SegmentLog, SegmentSettings};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the turmoil cluster's roles keep their logs (their `data_dir`s are `/ps` and `/mt`).
const PS_CACHE: &str = "/ps/cache";
const MT_REPLICAS: &str = "/mt/replicas";

/// What the checker saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurabilityReport {
    /// Acknowledgements checked against durable state.
    pub acks: u64,
    /// Cache segments whose deletion was checked.
    pub releases: u64,
    /// Flushes whose answer was checked against the durable source disk.
    pub flushes: u64,
    pub violations: Vec<String>,
}

/// The checker of every process server and master target of a run, by host name.
pub struct Durability {
    ps: Vec<(&'static str, SimVfs)>,
    mt: Vec<(&'static str, SimVfs)>,
    report: Mutex<DurabilityReport>,
}

/// The highest seq of every record in the segment log at `dir` on `vfs` (0 if none), and the
/// highest seq per segment file.
fn log_seqs(vfs: SimVfs, dir: PathBuf) -> (u64, Vec<(u64, u64)>) {
    match SegmentLog::open(vfs, dir, SegmentSettings::default()) {
        Ok((_, metas)) => {
            let last = metas.iter().map(|m| m.last).max().unwrap_or(0);
            let per = metas.iter().map(|m| (m.loc.segment, m.last)).collect();
            (last, per)
        }
        Err(_) => (0, vec![]),
    }
}

impl Durability {
    pub fn new(ps: Vec<(&'static str, SimVfs)>, mt: Vec<(&'static str, SimVfs)>) -> Durability {
        Durability {
            ps,
            mt,
            report: Mutex::new(DurabilityReport::default()),
        }
    }

    pub fn report(&self) -> DurabilityReport {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DurabilityReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }

    /// The highest seq of `disk` in master target `mt`'s journal that survives a power loss now.
    fn mt_durable_on(&self, mt: &SimVfs, disk: &DiskId) -> u64 {
        let dir = Path::new(MT_REPLICAS).join(disk.as_str()).join("journal");
        log_seqs(mt.durable_copy(&dir), dir).0
    }

    /// The same on whichever master target holds `disk` (the others hold nothing of it).
    fn mt_durable(&self, disk: &DiskId) -> u64 {
        self.mt
            .iter()
            .map(|(_, v)| self.mt_durable_on(v, disk))
            .max()
            .unwrap_or(0)
    }

    fn ps_durable(&self, ps: &SimVfs, disk: &DiskId) -> u64 {
        let dir = Path::new(PS_CACHE).join(disk.as_str());
        log_seqs(ps.durable_copy(&dir), dir).0
    }

    fn vfs_of<'a>(list: &'a [(&'static str, SimVfs)], host: &str) -> Option<&'a SimVfs> {
        list.iter().find(|(h, _)| *h == host).map(|(_, v)| v)
    }

    /// `host` sent `msg`: an acknowledgement must not run ahead of durable state.
    pub fn on_send(&self, host: &str, msg: &Message) {
        let ps = Self::vfs_of(&self.ps, host);
        let mt = Self::vfs_of(&self.mt, host);
        match (ps, mt, msg) {
            (
                Some(ps),
                _,
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
                let journal = self.mt_durable(disk);
                // A batch the master target holds durably may be gone from the cache.
                let cache = self.ps_durable(ps, disk).max(journal);
                if *cached_seq > cache || *applied_seq > journal {
                    self.violation(format!(
                        "process server {host} sent {msg:?} while {disk} was durable through \
                         {cache} in its cache and {journal} in the master target's journal"
                    ));
                }
            }
            (
                _,
                Some(mt),
                Message::StreamState {
                    disk, applied_seq, ..
                }
                | Message::Applied {
                    disk, applied_seq, ..
                },
            ) => {
                let journal = self.mt_durable_on(mt, disk);
                if *applied_seq > journal {
                    self.violation(format!(
                        "master target {host} sent {msg:?} while its journal of {disk} was \
                         durable through {journal}"
                    ));
                }
            }
            _ => return,
        }
        self.lock().acks += 1;
    }

    /// Process server `ps` (its index) is about to delete `path`: if it is a cache segment,
    /// every batch in it must be durable at the master target.
    pub fn on_ps_remove(&self, ps: usize, path: &Path) {
        let Ok(rest) = path.strip_prefix(PS_CACHE) else {
            return;
        };
        let (Some(disk), Some(file)) = (rest.parent(), rest.file_name()) else {
            return;
        };
        let Some(disk) = disk.to_str().and_then(|d| DiskId::new(d).ok()) else {
            return;
        };
        let index = file
            .to_str()
            .and_then(|f| f.split('.').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        let Some(index) = index else { return };
        let dir = Path::new(PS_CACHE).join(disk.as_str());
        let (host, vfs) = &self.ps[ps];
        let (_, per) = log_seqs(vfs.current_copy(&dir), dir);
        let last = per
            .iter()
            .filter(|(seg, _)| *seg == index)
            .map(|(_, last)| *last)
            .max()
            .unwrap_or(0);
        let journal = self.mt_durable(&disk);
        if last > journal {
            self.violation(format!(
                "process server {host} deleted cache segment {} holding {disk} through seq \
                 {last} while the master target's journal was durable through {journal}",
                path.display()
            ));
        }
        self.lock().releases += 1;
    }

    /// The workload's flush was answered: the agent's source disk must be durably what the
    /// workload wrote (`model`).
    pub fn on_flush_answered(&self, agent: &SimVfs, path: &Path, model: &[u8]) {
        let durable = agent.durable_copy(path).contents(path);
        let same = durable
            .as_deref()
            .is_some_and(|d| d.len() >= model.len() && &d[..model.len()] == model);
        if !same {
            let n = self.lock().flushes;
            self.violation(format!(
                "flush {n} was answered but the source disk {} is not durably what was written",
                path.display()
            ));
        }
        self.lock().flushes += 1;
    }
}
