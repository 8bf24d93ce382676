//! The master target's driver: replicas (journal, index, base), recovery points, and the HTTP
//! API that lists points and serves images.

use super::round::{Driver, Effects, NoInbox};
use super::{Host, RoleError, EVENT_CHANNEL_DEPTH};
use crate::meta::{MetaStore, PointKind, PointRecord};
use crate::net::Net;
use crate::stores::replica::Replica;
use crate::transport::Transport;
use crate::vfs::Vfs;
use haven_core::ids::{DiskId, Epoch};
use haven_core::master_target::{Input, MasterTarget, MasterTargetSettings, Output};
use haven_core::protocol::{Hello, Role, PROTOCOL_VERSION};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct MasterTargetConfig {
    pub settings: MasterTargetSettings,
    pub data_dir: PathBuf,
    /// Where process servers connect.
    pub listen: String,
    /// Where the HTTP API (points, images) listens.
    pub api_listen: String,
}

pub struct MasterTargetHandle {
    pub addr: String,
    pub api_addr: String,
    pub task: tokio::task::JoinHandle<Result<(), RoleError>>,
}

/// Replicas shared between the driver (appends) and the API (reads).
pub type Replicas<V> = Arc<Mutex<BTreeMap<DiskId, Replica<V>>>>;

fn fail(e: impl std::fmt::Display) -> RoleError {
    RoleError::new("master-target", e)
}

pub async fn start<T: Transport, V: Vfs + Clone>(
    host: Host<T, V>,
    mut cfg: MasterTargetConfig,
) -> Result<MasterTargetHandle, RoleError> {
    let vfs = host.vfs.clone();
    crate::vfs::create_dir_all_durable(&vfs, &cfg.data_dir).map_err(fail)?;
    let meta = Arc::new((host.open_meta)(&cfg.data_dir.join("master-target.redb")).map_err(fail)?);
    let mut replicas = BTreeMap::new();
    let mut metas = vec![];
    for m in meta.replicas().map_err(fail)? {
        let r = Replica::open(&vfs, &cfg.data_dir, m, &meta).map_err(fail)?;
        tracing::info!(
            "replica {}: applied through seq {}, {} points",
            r.meta.disk,
            r.meta.applied_seq,
            r.meta.points
        );
        metas.push(r.meta.clone());
        replicas.insert(r.meta.disk.clone(), r);
    }
    let replicas: Replicas<V> = Arc::new(Mutex::new(replicas));
    let (listener, addr) = super::bind(&host.transport, &cfg.listen, "protocol")
        .await
        .map_err(fail)?;
    let (api, api_addr) = super::bind(&host.transport, &cfg.api_listen, "API")
        .await
        .map_err(fail)?;
    if cfg.settings.data_addr.is_empty() {
        cfg.settings.data_addr = addr.clone();
    }
    if cfg.settings.api_addr.is_empty() {
        cfg.settings.api_addr = api_addr.clone();
    }
    let router = crate::api::master_target::router(crate::api::master_target::MtApi {
        replicas: replicas.clone(),
        meta: meta.clone(),
    });
    super::spawn_http_api::<T>(api, "master target API", router);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_DEPTH);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: Role::MasterTarget,
        component: cfg.settings.component.clone(),
        epoch: Epoch(0),
    };
    let net = Net::new(
        host.transport.clone(),
        hello,
        vec![Role::ProcessServer],
        ev_tx,
    );
    net.listen(listener);
    let clock = host.clock();
    let mt = MasterTarget::new(cfg.settings.clone(), metas, clock.now());
    let effects = MtEffects {
        net,
        replicas,
        meta,
        vfs,
        root: cfg.data_dir.clone(),
        point_commits: 0,
        appended: vec![],
    };
    let task = tokio::spawn(Driver::new(mt, effects, clock).run(ev_rx, NoInbox));
    Ok(MasterTargetHandle {
        addr,
        api_addr,
        task,
    })
}

/// The master target's effects: replicas (journal, index, base) and recovery points.
struct MtEffects<T: Transport, V: Vfs + Clone> {
    net: Net<T>,
    replicas: Replicas<V>,
    meta: Arc<MetaStore>,
    vfs: V,
    root: PathBuf,
    point_commits: u64,
    /// Appends of this round, waiting for the round's fsync.
    appended: Vec<Appended>,
}

/// Point commits between two that wait for the disk (the others are rebuilt from the journal
/// after a crash).
const POINT_COMMITS_PER_SYNC: u64 = 64;

/// An append done in this round, waiting for the round's fsync.
struct Appended {
    id: u64,
    disk: DiskId,
    point: Option<PointRecord>,
}

impl<T: Transport, V: Vfs + Clone + Send + 'static> Effects for MtEffects<T, V> {
    type M = MasterTarget;
    type T = T;
    type Extra = std::convert::Infallible;

    fn net(&mut self) -> &mut Net<T> {
        &mut self.net
    }

    fn extra(&mut self, x: Self::Extra) -> Input {
        match x {}
    }

    /// Syncs the journals appended to, records their points, then reports them persisted.
    fn commit(&mut self, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        if self.appended.is_empty() {
            return Ok(());
        }
        let appended = std::mem::take(&mut self.appended);
        let mut replicas = self.replicas.lock().expect("replica lock");
        let mut points: BTreeMap<DiskId, Vec<PointRecord>> = BTreeMap::new();
        for a in &appended {
            points
                .entry(a.disk.clone())
                .or_default()
                .extend(a.point.clone());
        }
        for (disk, pts) in &points {
            let Some(r) = replicas.get_mut(disk) else {
                continue; // Removed after its append in this round.
            };
            r.sync()
                .map_err(|e| fail(format!("journal fsync failed: {e}")))?;
            self.point_commits += 1;
            let durable = self.point_commits.is_multiple_of(POINT_COMMITS_PER_SYNC);
            self.meta
                .add_points_with(disk, pts, durable)
                .map_err(fail)?;
            r.meta.points += pts.len() as u64;
        }
        for a in appended {
            let journal_bytes = replicas.get(&a.disk).map_or(0, |r| r.meta.journal_bytes);
            inputs.push_back(Input::JournalPersisted {
                id: a.id,
                journal_bytes,
            });
        }
        Ok(())
    }

    /// A replica's metadata is saved in a redb commit of its own that waits for the disk, so
    /// its `ReplicaSaved` is fed back at once.
    fn execute(&mut self, out: Output, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        match out {
            Output::Net(cmd) => self.net.execute(cmd),
            Output::CreateReplica { save, meta: m } => {
                self.meta.save_replica(&m).map_err(fail)?;
                let r = Replica::open(&self.vfs, &self.root, m, &self.meta).map_err(fail)?;
                tracing::info!(
                    "replica {} created ({} bytes)",
                    r.meta.disk,
                    r.meta.size_bytes
                );
                self.replicas
                    .lock()
                    .expect("replica lock")
                    .insert(r.meta.disk.clone(), r);
                inputs.push_back(Input::ReplicaSaved { save });
            }
            Output::SaveReplica { save, meta: m } => {
                if let Some(why) = &m.inconsistent {
                    tracing::warn!("replica {} is inconsistent: {why}", m.disk);
                }
                self.meta.save_replica(&m).map_err(fail)?;
                if let Some(r) = self.replicas.lock().expect("replica lock").get_mut(&m.disk) {
                    r.meta.epoch = m.epoch;
                    r.meta.inconsistent = m.inconsistent.clone();
                }
                inputs.push_back(Input::ReplicaSaved { save });
            }
            Output::RemoveReplica(disk) => {
                let r = self.replicas.lock().expect("replica lock").remove(&disk);
                if let Some(r) = r {
                    r.remove(&self.vfs, &self.root).map_err(fail)?;
                }
                self.meta.remove_replica(&disk).map_err(fail)?;
                tracing::info!("replica {disk} removed: its protection ended");
            }
            Output::JournalAppend { id, header, data } => {
                let mut replicas = self.replicas.lock().expect("replica lock");
                let r = replicas
                    .get_mut(&header.disk)
                    .expect("core appends only to known replicas");
                r.append(&header, &data).map_err(fail)?;
                let point = header.consistent.then_some(PointRecord {
                    seq: header.last_seq,
                    time: header.last_time,
                    kind: PointKind::Crash,
                });
                self.appended.push(Appended {
                    id,
                    disk: header.disk.clone(),
                    point,
                });
            }
        }
        Ok(())
    }
}
