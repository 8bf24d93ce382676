//! The master target's driver: replicas (journal, index, base), recovery points, and the HTTP
//! API that lists points and serves images.

use super::round::{Driver, Effects, NoInbox};
use super::{Host, RoleError, EVENT_CHANNEL_DEPTH};
use crate::meta::{MetaStore, PointRecord};
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
use tokio::sync::{mpsc, watch};

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
        let (r, m) = Replica::open(&vfs, &cfg.data_dir, m, &meta).map_err(fail)?;
        tracing::info!(
            "replica {}: applied through seq {}, {} points",
            m.disk,
            m.applied_seq,
            m.points
        );
        replicas.insert(m.disk.clone(), r);
        metas.push(m);
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
    let mt = MasterTarget::new(cfg.settings.clone(), metas, host.clock().now());
    let (stats, stats_rx) = watch::channel(mt.stats());
    let router = crate::api::master_target::router(crate::api::master_target::MtApi {
        replicas: replicas.clone(),
        meta: meta.clone(),
        stats: stats_rx,
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
    let effects = MtEffects {
        net,
        replicas,
        meta,
        vfs,
        root: cfg.data_dir.clone(),
        appended: vec![],
        stats,
        stats_at: None,
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
    /// Appends of this round, waiting for the round's fsync.
    appended: Vec<Appended>,
    /// The replicas' metadata as the core has it, for the API, and when it was last refreshed.
    stats: watch::Sender<haven_core::stats::MasterTargetStats>,
    stats_at: Option<haven_core::time::Timestamp>,
}

/// An append done in this round, waiting for the round's fsync.
struct Appended {
    id: u64,
    disk: DiskId,
    point: Option<PointRecord>,
    sync_point: bool,
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

    /// The API lists what the core holds, refreshed as the process server's stats are (at most
    /// every `STATS_PUBLISH_MS`, so that a busy round loop does not copy them each round).
    fn after_round(&mut self, mt: &MasterTarget, now: haven_core::time::Timestamp) {
        if super::stats_due(&mut self.stats_at, now) {
            self.stats.send_replace(mt.stats());
        }
    }

    /// Syncs the journals appended to, records their points, then reports them persisted.
    fn commit(&mut self, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        if self.appended.is_empty() {
            return Ok(());
        }
        let appended = std::mem::take(&mut self.appended);
        let mut replicas = self.replicas.lock().expect("replica lock");
        // Per disk: its points of the round, and whether the core asked for one to be synced.
        let mut points: BTreeMap<DiskId, (Vec<PointRecord>, bool)> = BTreeMap::new();
        for a in &appended {
            let (pts, sync) = points.entry(a.disk.clone()).or_default();
            pts.extend(a.point.clone());
            *sync |= a.sync_point;
        }
        for (disk, (pts, sync)) in &points {
            let Some(r) = replicas.get_mut(disk) else {
                continue; // Removed after its append in this round.
            };
            r.sync()
                .map_err(|e| fail(format!("journal fsync failed: {e}")))?;
            if !pts.is_empty() {
                self.meta.add_points_with(disk, pts, *sync).map_err(fail)?;
            }
        }
        for a in appended {
            let journal_bytes = replicas.get(&a.disk).map_or(0, |r| r.journal_bytes());
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
                let disk = m.disk.clone();
                let (r, _) = Replica::open(&self.vfs, &self.root, m, &self.meta).map_err(fail)?;
                tracing::info!("replica {disk} created ({} bytes)", r.size_bytes());
                self.replicas.lock().expect("replica lock").insert(disk, r);
                inputs.push_back(Input::ReplicaSaved { save });
            }
            Output::SaveReplica { save, meta: m } => {
                if let Some(why) = &m.inconsistent {
                    tracing::warn!("replica {} is inconsistent: {why}", m.disk);
                }
                self.meta.save_replica(&m).map_err(fail)?;
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
            Output::JournalAppend {
                id,
                header,
                data,
                point,
                sync_point,
            } => {
                let mut replicas = self.replicas.lock().expect("replica lock");
                let r = replicas
                    .get_mut(&header.disk)
                    .expect("core appends only to known replicas");
                r.append(&header, &data).map_err(fail)?;
                self.appended.push(Appended {
                    id,
                    disk: header.disk.clone(),
                    point,
                    sync_point,
                });
            }
        }
        Ok(())
    }
}
