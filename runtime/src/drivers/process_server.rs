//! The process server's driver: the durable cache, forwarding of cached frames, connections.

use super::round::{Driver, Effects, NoInbox};
use super::{Host, RoleError, EVENT_CHANNEL_DEPTH};
use crate::meta::MetaStore;
use crate::net::Net;
use crate::stores::cache::Cache;
use crate::transport::Transport;
use crate::vfs::Vfs;
use haven_core::ids::Epoch;
use haven_core::process_server::{Input, Output, ProcessServer, ProcessServerSettings};
use haven_core::protocol::{Hello, Role, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::path::PathBuf;
use tokio::sync::{mpsc, watch};

#[derive(Clone, Debug)]
pub struct ProcessServerConfig {
    pub settings: ProcessServerSettings,
    pub data_dir: PathBuf,
    /// Where agents connect (for example 0.0.0.0:7100).
    pub listen: String,
    /// zstd level for forwarded batches (`haven_core::batch::ZSTD_LEVELS`).
    pub compression_level: i32,
    /// When forwarded batches are compressed.
    pub compression: haven_core::batch::CompressionPolicy,
    /// Where `/metrics` and `/stats` are served, if anywhere.
    pub api_listen: Option<String>,
    /// Size of one cache segment (`segment::DEFAULT_SEGMENT_BYTES_MAX` unless a test wants
    /// segments released often).
    pub cache_segment_bytes: u64,
}

pub struct ProcessServerHandle {
    pub addr: String,
    /// Where the API listens, when it was asked for.
    pub api_addr: Option<String>,
    pub task: tokio::task::JoinHandle<Result<(), RoleError>>,
}

fn fail(e: impl std::fmt::Display) -> RoleError {
    RoleError::new("process-server", e)
}

pub async fn start<T: Transport, V: Vfs + Clone>(
    host: Host<T, V>,
    mut cfg: ProcessServerConfig,
) -> Result<ProcessServerHandle, RoleError> {
    let vfs = host.vfs.clone();
    crate::vfs::create_dir_all_durable(&vfs, &cfg.data_dir).map_err(fail)?;
    let meta = (host.open_meta)(&cfg.data_dir.join("process-server.redb")).map_err(fail)?;
    let (cache, cached) = Cache::open(vfs, &cfg.data_dir, cfg.cache_segment_bytes).map_err(fail)?;
    let (listener, addr) = super::bind(&host.transport, &cfg.listen, "protocol")
        .await
        .map_err(fail)?;
    if cfg.settings.data_addr.is_empty() {
        cfg.settings.data_addr = addr.clone();
    }
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_DEPTH);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: Role::ProcessServer,
        component: cfg.settings.component.clone(),
        epoch: Epoch(0),
    };
    let net = Net::new(host.transport.clone(), hello, vec![Role::Agent], ev_tx);
    net.listen(listener);
    let clock = host.clock();
    let disks = meta.ps_disks().map_err(fail)?;
    tracing::info!("process server: {} cached batches recovered", cached.len());
    let mut ps = ProcessServer::new(cfg.settings.clone(), disks, cached, clock.now());
    ps.set_compression(cfg.compression, cfg.compression_level);
    let (stats, stats_rx) = watch::channel(ps.stats());
    let api_addr = match &cfg.api_listen {
        Some(listen) => {
            let (api, addr) = super::bind(&host.transport, listen, "API")
                .await
                .map_err(fail)?;
            let router =
                crate::api::stats::process_server_router(cfg.settings.component.clone(), stats_rx);
            super::spawn_http_api::<T>(api, "process server API", router);
            Some(addr)
        }
        None => None,
    };
    let effects = PsEffects {
        net,
        cache,
        meta,
        persisted: vec![],
        stats,
        stats_at: None,
    };
    let driver = Driver::new(ps, effects, clock);
    let task = tokio::spawn(driver.run(ev_rx, NoInbox));
    Ok(ProcessServerHandle {
        addr,
        api_addr,
        task,
    })
}

/// The process server's effects: the durable cache, forwarding, its metadata.
struct PsEffects<T: Transport, V: Vfs> {
    net: Net<T>,
    cache: Cache<V>,
    meta: MetaStore,
    /// Appends of this round, reported persisted after the round's fsync.
    persisted: Vec<Input>,
    /// The stats snapshot the API reads, and when it was last refreshed.
    stats: watch::Sender<haven_core::stats::ProcessServerStats>,
    stats_at: Option<haven_core::time::Timestamp>,
}

impl<T: Transport, V: Vfs + Clone + Send + 'static> Effects for PsEffects<T, V> {
    type M = ProcessServer;
    type T = T;
    type Extra = std::convert::Infallible;

    fn net(&mut self) -> &mut Net<T> {
        &mut self.net
    }

    /// A disk's metadata with a save id is saved in a redb commit that waits for the disk, so
    /// its `DiskSaved` is fed back at once.
    fn execute(&mut self, out: Output, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        match out {
            Output::Net(cmd) => self.net.execute(cmd),
            Output::CacheAppend { id, header, data } => {
                let (loc, bytes) = self.cache.append(header, data).map_err(fail)?;
                self.persisted
                    .push(Input::CachePersisted { id, loc, bytes });
            }
            Output::Forward { conn, disk, loc } => {
                let (head, data) = self.cache.take_frame(&disk, loc).map_err(fail)?;
                self.net.send_raw(conn, head, data);
            }
            Output::CacheRelease { disk, through } => {
                self.cache.release_through(&disk, through).map_err(fail)?
            }
            Output::SaveDisk { save, meta } => {
                self.meta
                    .save_ps_disk(&meta, save.is_some())
                    .map_err(fail)?;
                if let Some(save) = save {
                    inputs.push_back(Input::DiskSaved { save });
                }
            }
            Output::ForgetDisk(disk) => {
                tracing::info!("disk {disk}: protection ended, its cache is dropped");
                self.meta.forget_ps_disk(&disk).map_err(fail)?
            }
        }
        Ok(())
    }

    /// One fsync covers every cache append of the round.
    fn commit(&mut self, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        if !self.persisted.is_empty() {
            self.cache
                .sync()
                .map_err(|e| fail(format!("cache fsync failed: {e}")))?;
            inputs.extend(self.persisted.drain(..));
        }
        Ok(())
    }

    fn extra(&mut self, x: Self::Extra) -> Input {
        match x {}
    }

    fn after_round(&mut self, ps: &ProcessServer, now: haven_core::time::Timestamp) {
        if super::stats_due(&mut self.stats_at, now) {
            self.stats.send_replace(ps.stats());
        }
    }
}
