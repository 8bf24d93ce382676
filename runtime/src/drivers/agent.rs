//! The agent's driver: serves each protected disk over NBD, carries out the agent's source
//! writes in the order the core emits them, and runs the agent's connections.

use super::agent_stop::{self, StopRequest, STOP_POLL};
use super::round::{Driver, Effects};
use super::{spawn_accept_loop, Host, RoleError, EVENT_CHANNEL_DEPTH};
use crate::meta::MetaStore;
use crate::nbd::{self, ExportError, Exports, NbdExport};
use crate::net::Net;
use crate::stores::source::SourceDisk;
use crate::transport::Transport;
use crate::vfs::{VFile, Vfs};
use haven_core::agent::{
    Agent, AgentDisk, AgentSettings, Input, IoId, Output, SourceOp, COPY_CHUNK_BYTES,
};
use haven_core::batch::BLOCK_BYTES;
use haven_core::ids::{DiskId, Epoch};
use haven_core::protocol::{Hello, Role, PROTOCOL_VERSION};
use haven_core::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Clone, Debug)]
pub struct AgentDiskConfig {
    pub disk: DiskId,
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Create a sparse file of this size if `path` does not exist.
    pub create_size: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub settings: AgentSettings,
    pub disks: Vec<AgentDiskConfig>,
    pub data_dir: PathBuf,
    /// Where the NBD server listens (for example 127.0.0.1:10809).
    pub nbd_listen: String,
    /// Where `/metrics` and `/stats` are served, if anywhere.
    pub api_listen: Option<String>,
}

/// A write request from the NBD server to the driver.
struct NbdRequest {
    disk: usize,
    op: Option<(SourceOp, bool)>, // None: flush
    reply: oneshot::Sender<Result<(), String>>,
}

/// One protected disk as the NBD server sees it: reads go straight to the source file, writes
/// go through the agent (in arrival order) so that each is intercepted.
pub struct AgentExport<F: VFile> {
    disk: usize,
    size: u64,
    file: Arc<F>,
    tx: mpsc::UnboundedSender<NbdRequest>,
}

impl<F: VFile> AgentExport<F> {
    fn submit(
        &self,
        op: Option<(SourceOp, bool)>,
    ) -> impl std::future::Future<Output = Result<(), ExportError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(NbdRequest {
                disk: self.disk,
                op,
                reply,
            })
            .is_ok();
        async move {
            if !sent {
                return Err(ExportError::ShuttingDown);
            }
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ExportError::Io(e)),
                Err(_) => Err(ExportError::ShuttingDown),
            }
        }
    }
}

impl<F: VFile> NbdExport for AgentExport<F> {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, ExportError>> + Send + 'static {
        let file = self.file.clone();
        async move {
            let mut buf = vec![0u8; len as usize];
            file.read_at(&mut buf, offset)
                .map_err(|e| ExportError::Io(e.to_string()))?;
            Ok(buf)
        }
    }
    fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> impl std::future::Future<Output = Result<(), ExportError>> + Send + 'static {
        self.submit(Some((SourceOp::Write { offset, data }, fua)))
    }
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl std::future::Future<Output = Result<(), ExportError>> + Send + 'static {
        self.submit(Some((
            SourceOp::Zero {
                offset,
                len: len as u64,
                punch: true,
            },
            fua,
        )))
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> impl std::future::Future<Output = Result<(), ExportError>> + Send + 'static {
        self.submit(Some((
            SourceOp::Zero {
                offset,
                len: len as u64,
                punch: !no_hole,
            },
            fua,
        )))
    }
    fn flush(&self) -> impl std::future::Future<Output = Result<(), ExportError>> + Send + 'static {
        self.submit(None)
    }
}

pub struct AgentHandle {
    pub nbd_addr: String,
    /// Where the API listens, when it was asked for.
    pub api_addr: Option<String>,
    pub task: tokio::task::JoinHandle<Result<(), RoleError>>,
    stop: Arc<StopRequest>,
}

impl AgentHandle {
    /// A handle that stops the agent cleanly (see `agent_stop`), usable after `task` is moved.
    pub fn stopper(&self) -> AgentStopper {
        AgentStopper(self.stop.clone())
    }
}

/// Stops an agent cleanly: waits until every write is cached at the process server, then the
/// agent records where each stream stands and stops; the next start resumes there.
#[derive(Clone)]
pub struct AgentStopper(Arc<StopRequest>);

impl AgentStopper {
    /// True when the agent stopped cleanly within `within`; false when it could not drain
    /// (the next start then resyncs what was not cached, as after a crash).
    pub async fn stop(&self, within: std::time::Duration) -> bool {
        agent_stop::stop(&self.0, within).await
    }
}

fn fail(e: impl std::fmt::Display) -> RoleError {
    RoleError::new("agent", e)
}

/// Opens the disks and the metadata, starts the NBD server and the driver.
pub async fn start<T: Transport, V: Vfs + Clone>(
    host: Host<T, V>,
    cfg: AgentConfig,
) -> Result<AgentHandle, RoleError> {
    let vfs = host.vfs.clone();
    crate::vfs::create_dir_all_durable(&vfs, &cfg.data_dir).map_err(fail)?;
    let meta = (host.open_meta)(&cfg.data_dir.join("agent.redb")).map_err(fail)?;
    let (nbd_tx, nbd_rx) = mpsc::unbounded_channel();
    let mut sources = vec![];
    let mut exports = Exports::new();
    let mut disks = vec![];
    // Each disk's canonical path, which the agent reports so that no export overwrites it.
    let mut paths = vec![];
    for (i, d) in cfg.disks.iter().enumerate() {
        let src = SourceDisk::open(&vfs, &d.path, d.create_size)
            .map_err(|e| fail(format!("disk {}: {e}", d.disk)))?;
        let file = Arc::new(vfs.open(&d.path, false).map_err(fail)?);
        let export = AgentExport {
            disk: i,
            size: src.size_bytes(),
            file,
            tx: nbd_tx.clone(),
        };
        exports.add(d.disk.as_str(), Arc::new(export));
        let path = vfs
            .canonicalize(&d.path)
            .map_err(|e| fail(format!("disk {}: {}: {e}", d.disk, d.path.display())))?;
        paths.push(path.to_string_lossy().into_owned());
        disks.push(AgentDisk {
            disk: d.disk.clone(),
            size_bytes: src.size_bytes(),
            reserved: meta.agent_reserved(&d.disk).map_err(fail)?,
            copied: meta.agent_copied(&d.disk).map_err(fail)?,
            resume: meta.take_agent_resume(&d.disk).map_err(fail)?,
        });
        sources.push(src);
    }
    drop(nbd_tx);
    let (listener, nbd_addr) = super::bind(&host.transport, &cfg.nbd_listen, "NBD")
        .await
        .map_err(fail)?;
    let exports = Arc::new(exports);
    spawn_accept_loop::<T, _, _>(listener, "NBD", move |stream| {
        let exports = exports.clone();
        async move {
            if let Err(e) = nbd::serve_connection(stream, exports).await {
                tracing::info!("NBD connection ended: {e}");
            }
        }
    });
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_DEPTH);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: Role::Agent,
        component: cfg.settings.component.clone(),
        epoch: Epoch(0),
    };
    let net = Net::new(host.transport.clone(), hello, vec![], ev_tx);
    let clock = host.clock();
    let mut agent = Agent::new(cfg.settings.clone(), disks, clock.now());
    for (i, path) in paths.into_iter().enumerate() {
        agent.set_source_path(i, path);
    }
    let (stats, stats_rx) = watch::channel(agent.stats());
    let api_addr = match &cfg.api_listen {
        Some(listen) => {
            let (api, addr) = super::bind(&host.transport, listen, "API")
                .await
                .map_err(fail)?;
            let router = crate::api::stats::agent_router(stats_rx);
            super::spawn_http_api::<T>(api, "agent API", router);
            Some(addr)
        }
        None => None,
    };
    let stop = Arc::new(StopRequest::default());
    let effects = AgentEffects {
        net,
        sources,
        meta,
        replies: BTreeMap::new(),
        next_io: 1,
        disk_ids: cfg.disks.iter().map(|d| d.disk.clone()).collect(),
        syncs: vec![],
        stats,
        stats_at: None,
        stop: stop.clone(),
    };
    let task = tokio::spawn(Driver::new(agent, effects, clock).run(ev_rx, nbd_rx));
    Ok(AgentHandle {
        nbd_addr,
        api_addr,
        task,
        stop,
    })
}

/// The agent's effects: the source disks, NBD replies, initial copies, its metadata.
struct AgentEffects<T: Transport, F: VFile> {
    net: Net<T>,
    sources: Vec<SourceDisk<F>>,
    meta: MetaStore,
    replies: BTreeMap<IoId, oneshot::Sender<Result<(), String>>>,
    next_io: IoId,
    /// The disks' ids, by index.
    disk_ids: Vec<DiskId>,
    /// FUA writes and flushes of this round, waiting for the round's fsync of their disk.
    syncs: Vec<(IoId, usize)>,
    /// The stats snapshot the API reads, and when it was last refreshed.
    stats: watch::Sender<haven_core::stats::AgentStats>,
    stats_at: Option<Timestamp>,
    /// A clean stop: asked by the handle; done once the marks are persisted (the loop then
    /// ends before another input).
    stop: Arc<StopRequest>,
}

impl<T: Transport, F: VFile + Send + 'static> Effects for AgentEffects<T, F> {
    type M = Agent;
    type T = T;
    type Extra = NbdRequest;
    /// Source writes go to the page cache (as the NBD reads come from it); only the round's
    /// fsync waits for the disk, and it runs under `block_in_place` (see `commit`).
    const ROUND_BLOCKS: bool = false;

    fn net(&mut self) -> &mut Net<T> {
        &mut self.net
    }

    fn extra(&mut self, req: NbdRequest) -> Input {
        let io = self.next_io;
        self.next_io += 1;
        self.replies.insert(io, req.reply);
        match req.op {
            Some((op, fua)) => Input::Write {
                io,
                disk: req.disk,
                op,
                fua,
            },
            None => Input::Flush { io, disk: req.disk },
        }
    }

    fn execute(&mut self, out: Output, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        match out {
            Output::Net(cmd) => self.net.execute(cmd),
            Output::SourceWrite { io, disk, op } => {
                let done = match self.sources[disk].apply(op) {
                    Ok(data) => Input::SourceDone { io, data },
                    Err(e) => Input::SourceFailed {
                        io,
                        error: e.to_string(),
                    },
                };
                inputs.push_back(done);
            }
            Output::SourceSync { io, disk } => self.syncs.push((io, disk)),
            Output::Complete { io, result } => {
                if let Some(tx) = self.replies.remove(&io) {
                    let _ = tx.send(result);
                }
            }
            Output::Reserve { disk, reserved } => {
                self.meta
                    .set_agent_reserved(&self.disk_id(disk), reserved)
                    .map_err(fail)?;
                inputs.push_back(Input::Reserved { disk, reserved });
            }
            Output::Retired { disk } => {
                let id = self.disk_id(disk);
                self.meta.clear_agent_copied(&id).map_err(fail)?;
                tracing::info!("disk {id} is not protected: served without replication");
            }
            Output::CopyRead { disk, offset } => {
                let (offset, data) = super::blocking(|| self.copy_read(disk, offset))?;
                inputs.push_back(Input::CopyData { disk, offset, data });
            }
            Output::CopyCached { disk, epoch } => {
                let id = self.disk_id(disk);
                self.meta.set_agent_copied(&id, epoch).map_err(fail)?;
                tracing::info!("initial copy of {id} is cached at the process server");
            }
        }
        Ok(())
    }

    /// One fsync per disk covers every FUA write and flush of the round.
    fn commit(&mut self, inputs: &mut VecDeque<Input>) -> Result<(), RoleError> {
        if self.syncs.is_empty() {
            return Ok(());
        }
        let disks: BTreeSet<usize> = self.syncs.iter().map(|s| s.1).collect();
        super::blocking(|| {
            for d in disks {
                if let Err(e) = self.sources[d].sync() {
                    return Err(fail(format!(
                        "fsync of source disk failed: {e}; the disk's durability is unknown"
                    )));
                }
            }
            Ok(())
        })?;
        inputs.extend(self.syncs.drain(..).map(|(io, _)| Input::Synced { io }));
        Ok(())
    }

    /// A clean stop asked for: once nothing is held, each disk's next seq is persisted and the
    /// loop ends; until then the loop looks again every `STOP_POLL`.
    fn before_wait(
        &mut self,
        agent: &mut Agent,
        _inputs: &mut VecDeque<Input>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, RoleError> {
        if !self.stop.requested() || self.stop.done() {
            return Ok(None);
        }
        let Some(next) = agent.resume_points() else {
            return Ok(Some(now.plus_millis(STOP_POLL.as_millis() as u64)));
        };
        for (disk, seq) in next.into_iter().enumerate() {
            let id = self.disk_id(disk);
            self.meta.set_agent_resume(&id, seq).map_err(fail)?;
        }
        tracing::info!("agent stopped cleanly: every write is cached at the process server");
        self.stop.set_done();
        Ok(None)
    }

    fn finished(&self) -> bool {
        self.stop.done()
    }

    fn after_round(&mut self, agent: &Agent, now: Timestamp) {
        if super::stats_due(&mut self.stats_at, now) {
            self.stats.send_replace(agent.stats());
        }
    }
}

impl<T: Transport, F: VFile> AgentEffects<T, F> {
    fn disk_id(&self, disk: usize) -> DiskId {
        self.disk_ids[disk].clone()
    }

    /// Reads the first chunk of `disk` holding data at or after `offset` (holes skipped a
    /// chunk at a time): its offset and whole blocks, the last padded with zeros; nothing at
    /// the end of the disk.
    fn copy_read(&self, disk: usize, offset: u64) -> Result<(u64, Vec<u8>), RoleError> {
        let src = &self.sources[disk];
        let size = src.size_bytes();
        if offset == 0 {
            tracing::info!("initial copy of {}: copying the disk", self.disk_id(disk));
        }
        let data_at = src
            .next_data(offset)
            .map_err(|e| fail(format!("initial copy: finding data: {e}")))?;
        let off = data_at.map_or(size, |d| {
            offset.max(d / COPY_CHUNK_BYTES * COPY_CHUNK_BYTES)
        });
        if off >= size {
            tracing::info!("initial copy of {} read to its end", self.disk_id(disk));
            return Ok((size, Vec::new()));
        }
        let padded = size.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let mut buf = vec![0u8; COPY_CHUNK_BYTES.min(padded - off) as usize];
        let in_file = (size - off).min(buf.len() as u64) as usize;
        src.read_at(&mut buf[..in_file], off)
            .map_err(|e| fail(format!("initial copy read: {e}")))?;
        Ok((off, buf))
    }
}
