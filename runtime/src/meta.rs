//! Metadata in redb: small records that must survive restarts. Block data never goes here; it
//! lives in segment files and images (redb is for the index, not the payload).
//!
//! Every commit that backs a promise to a peer is `Durability::Immediate`. A failed commit is
//! fatal for the role: the caller stops, and reopening repairs (redb recovers on open).

use haven_core::config_server::state::event_slot;
use haven_core::config_server::{ConfigState, Record};
use haven_core::ids::{ComponentId, DiskId, Epoch, Seq};
use haven_core::master_target::ReplicaMeta;
use haven_core::process_server::CacheDiskMeta;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use std::path::Path;

mod legacy;

const AGENT_RESERVED: TableDefinition<&str, u64> = TableDefinition::new("agent_reserved");
/// Disks whose initial copy has completed.
/// Agent, as stores before 2026-12-04 kept it: disk id -> copied (no epoch). Read, never written.
const AGENT_COPIED: TableDefinition<&str, bool> = TableDefinition::new("agent_copied");
/// Agent: disk id -> the epoch under which the disk's whole copy is cached.
const AGENT_COPIED_EPOCH: TableDefinition<&str, u64> = TableDefinition::new("agent_copied_epoch");
/// Agent: disk id -> the next seq at a clean stop (every seq before it cached at the process
/// server). Taken (read and deleted durably) at the next start, before any seq is used.
const AGENT_RESUME: TableDefinition<&str, u64> = TableDefinition::new("agent_resume");
const PS_DISKS: TableDefinition<&str, &[u8]> = TableDefinition::new("ps_disks");
const MT_REPLICAS: TableDefinition<&str, &[u8]> = TableDefinition::new("mt_replicas");
/// (disk, seq) -> postcard `PointRecord`.
const MT_POINTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mt_points");
/// Configuration server: component id -> postcard `ComponentRecord`.
const CS_COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("cs_components");
/// Configuration server: disk id -> postcard `ProtectionRecord`.
const CS_PROTECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("cs_protections");
/// Configuration server: event ring slot -> postcard `Event`.
const CS_EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("cs_events");

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store {path}: {msg}; if the file is damaged, restore it or remove it to rebuild from the data files")]
    Open { path: String, msg: String },
    #[error("metadata store {path} is held by another haven process (a daemon or a lab using this data directory); stop it, or give this one another data directory")]
    Held { path: String },
    #[error("metadata store: {0}")]
    Db(String),
}

fn db_err<E: std::fmt::Display>(e: E) -> MetaError {
    MetaError::Db(e.to_string())
}

fn dec<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, MetaError> {
    postcard::from_bytes(v).map_err(db_err)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, MetaError> {
    postcard::to_allocvec(v).map_err(db_err)
}

/// Recovery points are decided by the master target's core; the store records them.
pub use haven_core::master_target::{PointKind, PointRecord};

pub struct MetaStore {
    db: Database,
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => MetaError::Held {
                path: path.display().to_string(),
            },
            e => MetaError::Open {
                path: path.display().to_string(),
                msg: e.to_string(),
            },
        })?;
        Self::init(db)
    }

    /// Opens a store over any redb backend (the simulation's crash-faithful one).
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<MetaStore, MetaError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| MetaError::Open {
                path: "(storage backend)".into(),
                msg: e.to_string(),
            })?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<MetaStore, MetaError> {
        let store = MetaStore { db };
        // Create the tables so that readers never find them missing.
        store.write(|tx| {
            tx.open_table(AGENT_RESERVED).map_err(db_err)?;
            tx.open_table(PS_DISKS).map_err(db_err)?;
            tx.open_table(AGENT_COPIED).map_err(db_err)?;
            tx.open_table(AGENT_COPIED_EPOCH).map_err(db_err)?;
            tx.open_table(AGENT_RESUME).map_err(db_err)?;
            tx.open_table(MT_REPLICAS).map_err(db_err)?;
            tx.open_table(MT_POINTS).map_err(db_err)?;
            tx.open_table(CS_COMPONENTS).map_err(db_err)?;
            tx.open_table(CS_PROTECTIONS).map_err(db_err)?;
            tx.open_table(CS_EVENTS).map_err(db_err)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn write<R>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, MetaError>,
    ) -> Result<R, MetaError> {
        self.write_with(Durability::Immediate, f)
    }

    fn write_with<R>(
        &self,
        d: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, MetaError>,
    ) -> Result<R, MetaError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(d).map_err(db_err)?;
        let r = f(&tx)?;
        tx.commit().map_err(db_err)?;
        Ok(r)
    }

    pub fn agent_reserved(&self, disk: &DiskId) -> Result<Seq, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(AGENT_RESERVED).map_err(db_err)?;
        Ok(t.get(disk.as_str())
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    pub fn set_agent_reserved(&self, disk: &DiskId, reserved: Seq) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.open_table(AGENT_RESERVED)
                .map_err(db_err)?
                .insert(disk.as_str(), reserved)
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// The epoch the disk's cached copy was made under; `Some(Epoch(0))` for a copy an older
    /// store recorded without one; `None`: not copied.
    pub fn agent_copied(&self, disk: &DiskId) -> Result<Option<Epoch>, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(AGENT_COPIED_EPOCH).map_err(db_err)?;
        if let Some(v) = t.get(disk.as_str()).map_err(db_err)? {
            return Ok(Some(Epoch(v.value())));
        }
        let old = tx.open_table(AGENT_COPIED).map_err(db_err)?;
        let copied = old
            .get(disk.as_str())
            .map_err(db_err)?
            .is_some_and(|v| v.value());
        Ok(copied.then_some(Epoch(0)))
    }

    pub fn set_agent_copied(&self, disk: &DiskId, epoch: Epoch) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.open_table(AGENT_COPIED_EPOCH)
                .map_err(db_err)?
                .insert(disk.as_str(), epoch.0)
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// The disk's protection ended: a later protection copies it again.
    pub fn clear_agent_copied(&self, disk: &DiskId) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.open_table(AGENT_COPIED_EPOCH)
                .map_err(db_err)?
                .remove(disk.as_str())
                .map_err(db_err)?;
            tx.open_table(AGENT_COPIED)
                .map_err(db_err)?
                .remove(disk.as_str())
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// A clean stop: the disk's stream resumes at `next_seq` at the next start.
    pub fn set_agent_resume(&self, disk: &DiskId, next_seq: Seq) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.open_table(AGENT_RESUME)
                .map_err(db_err)?
                .insert(disk.as_str(), next_seq)
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// The seq a clean stop left for `disk`, deleted durably before it is returned: a crash
    /// after this start must not resume there again (its seqs may have been used since).
    pub fn take_agent_resume(&self, disk: &DiskId) -> Result<Option<Seq>, MetaError> {
        self.write(|tx| {
            let mut t = tx.open_table(AGENT_RESUME).map_err(db_err)?;
            let v = t.remove(disk.as_str()).map_err(db_err)?.map(|v| v.value());
            Ok(v)
        })
    }

    pub fn forget_ps_disk(&self, disk: &DiskId) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.open_table(PS_DISKS)
                .map_err(db_err)?
                .remove(disk.as_str())
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// Deletes a replica's metadata and points in one commit.
    pub fn remove_replica(&self, disk: &DiskId) -> Result<(), MetaError> {
        self.write(|tx| {
            tx.open_table(MT_REPLICAS)
                .map_err(db_err)?
                .remove(disk.as_str())
                .map_err(db_err)?;
            tx.open_table(MT_POINTS)
                .map_err(db_err)?
                .retain_in((disk.as_str(), 0)..=(disk.as_str(), u64::MAX), |_, _| false)
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// The configuration server's whole state.
    pub fn config_state(&self) -> Result<ConfigState, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut state = ConfigState::default();
        for r in tx
            .open_table(CS_COMPONENTS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = r.map_err(db_err)?;
            let id = ComponentId::new(k.value()).map_err(db_err)?;
            let record =
                legacy::component(v.value()).map_err(|e| db_err(format!("component {id}: {e}")))?;
            state.components.insert(id, record);
        }
        for r in tx
            .open_table(CS_PROTECTIONS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = r.map_err(db_err)?;
            let disk = DiskId::new(k.value()).map_err(db_err)?;
            state.protections.insert(disk, dec(v.value())?);
        }
        for r in tx
            .open_table(CS_EVENTS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (_, v) = r.map_err(db_err)?;
            state.events.push(dec(v.value())?);
        }
        Ok(state)
    }

    /// Writes configuration-server records in one durable transaction: all or none.
    pub fn persist_config(&self, records: &[Record]) -> Result<(), MetaError> {
        self.write(|tx| {
            let mut comps = tx.open_table(CS_COMPONENTS).map_err(db_err)?;
            let mut prots = tx.open_table(CS_PROTECTIONS).map_err(db_err)?;
            let mut events = tx.open_table(CS_EVENTS).map_err(db_err)?;
            for r in records {
                match r {
                    Record::Component { id, record } => {
                        let b = enc(record)?;
                        comps.insert(id.as_str(), b.as_slice()).map_err(db_err)?;
                    }
                    Record::Protection { disk, record } => {
                        let b = enc(record)?;
                        prots.insert(disk.as_str(), b.as_slice()).map_err(db_err)?;
                    }
                    Record::Event(e) => {
                        let b = enc(e)?;
                        events
                            .insert(event_slot(e.id), b.as_slice())
                            .map_err(db_err)?;
                    }
                }
            }
            Ok(())
        })
    }

    pub fn ps_disks(&self) -> Result<Vec<CacheDiskMeta>, MetaError> {
        self.all(PS_DISKS)
    }

    /// With `durable`, the commit waits for the disk (a new epoch or size that a stream waits
    /// for); without, losing it only causes resends, and the next durable commit carries it.
    pub fn save_ps_disk(&self, m: &CacheDiskMeta, durable: bool) -> Result<(), MetaError> {
        let bytes = postcard::to_allocvec(m).map_err(db_err)?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.write_with(durability, |tx| {
            tx.open_table(PS_DISKS)
                .map_err(db_err)?
                .insert(m.disk.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }

    pub fn replicas(&self) -> Result<Vec<ReplicaMeta>, MetaError> {
        self.all(MT_REPLICAS)
    }

    pub fn save_replica(&self, m: &ReplicaMeta) -> Result<(), MetaError> {
        let bytes = postcard::to_allocvec(m).map_err(db_err)?;
        self.write(|tx| {
            tx.open_table(MT_REPLICAS)
                .map_err(db_err)?
                .insert(m.disk.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }

    /// Records recovery points (one commit for the lot).
    /// Records recovery points (one commit for the lot). The journal is the truth for points
    /// (they are re-derived from it on open), so most of these commits need not wait for the
    /// disk: `durable` is asked for now and then to bound what redb holds unsynced.
    pub fn add_points_with(
        &self,
        disk: &DiskId,
        points: &[PointRecord],
        durable: bool,
    ) -> Result<(), MetaError> {
        let d = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.write_with(d, |tx| {
            let mut t = tx.open_table(MT_POINTS).map_err(db_err)?;
            for p in points {
                let bytes = postcard::to_allocvec(p).map_err(db_err)?;
                t.insert((disk.as_str(), p.seq), bytes.as_slice())
                    .map_err(db_err)?;
            }
            Ok(())
        })
    }

    pub fn add_points(&self, disk: &DiskId, points: &[PointRecord]) -> Result<(), MetaError> {
        self.write(|tx| {
            let mut t = tx.open_table(MT_POINTS).map_err(db_err)?;
            for p in points {
                let bytes = postcard::to_allocvec(p).map_err(db_err)?;
                t.insert((disk.as_str(), p.seq), bytes.as_slice())
                    .map_err(db_err)?;
            }
            Ok(())
        })
    }

    /// Drops points above `seq` (a journal tail cut after a crash took their data).
    pub fn truncate_points_after(&self, disk: &DiskId, seq: Seq) -> Result<usize, MetaError> {
        self.write(|tx| {
            let mut t = tx.open_table(MT_POINTS).map_err(db_err)?;
            let doomed: Vec<u64> = t
                .range((disk.as_str(), seq.saturating_add(1))..=(disk.as_str(), u64::MAX))
                .map_err(db_err)?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            for s in &doomed {
                t.remove((disk.as_str(), *s)).map_err(db_err)?;
            }
            Ok(doomed.len())
        })
    }

    pub fn points(&self, disk: &DiskId) -> Result<Vec<PointRecord>, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(MT_POINTS).map_err(db_err)?;
        let mut out = vec![];
        for r in t
            .range((disk.as_str(), 0)..=(disk.as_str(), u64::MAX))
            .map_err(db_err)?
        {
            let (_, v) = r.map_err(db_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    /// True when `seq` is a recovery point of `disk` (one key lookup).
    pub fn has_point(&self, disk: &DiskId, seq: Seq) -> Result<bool, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(MT_POINTS).map_err(db_err)?;
        Ok(t.get((disk.as_str(), seq)).map_err(db_err)?.is_some())
    }

    pub fn last_point(&self, disk: &DiskId) -> Result<Option<PointRecord>, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(MT_POINTS).map_err(db_err)?;
        let last = t
            .range((disk.as_str(), 0)..=(disk.as_str(), u64::MAX))
            .map_err(db_err)?
            .next_back();
        match last {
            Some(r) => Ok(Some(
                postcard::from_bytes(r.map_err(db_err)?.1.value()).map_err(db_err)?,
            )),
            None => Ok(None),
        }
    }

    fn all<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, MetaError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(def).map_err(db_err)?;
        let mut out = vec![];
        for r in t.iter().map_err(db_err)? {
            let (_, v) = r.map_err(db_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's copy record: under an epoch once set; a store that recorded it as a bool
    /// (before epochs) reads as copied under no recorded epoch; cleared, both are gone. The
    /// clean-stop mark is read once.
    #[test]
    fn agent_copy_records_and_resume_marks() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("agent.redb")).unwrap();
        let d = DiskId::new("disk0").unwrap();
        assert_eq!(m.agent_copied(&d).unwrap(), None);
        m.write(|tx| {
            tx.open_table(AGENT_COPIED)
                .map_err(db_err)?
                .insert(d.as_str(), true)
                .map_err(db_err)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(m.agent_copied(&d).unwrap(), Some(Epoch(0)));
        m.set_agent_copied(&d, Epoch(3)).unwrap();
        assert_eq!(m.agent_copied(&d).unwrap(), Some(Epoch(3)));
        m.clear_agent_copied(&d).unwrap();
        assert_eq!(m.agent_copied(&d).unwrap(), None);

        assert_eq!(m.take_agent_resume(&d).unwrap(), None);
        m.set_agent_resume(&d, 42).unwrap();
        drop(m);
        let m = MetaStore::open(&dir.path().join("agent.redb")).unwrap();
        assert_eq!(m.take_agent_resume(&d).unwrap(), Some(42));
        assert_eq!(m.take_agent_resume(&d).unwrap(), None, "taken once");
    }
}
