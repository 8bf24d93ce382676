//! Building and running the turmoil cluster.

use super::nbd_client::NbdClient;
use super::transport::TurmoilTcp;
use crate::storage::{SimRedbDisk, SimVfs};
use haven_core::agent::AgentSettings;
use haven_core::config_server::ConfigServerSettings;
use haven_core::ids::{ComponentId, DiskId};
use haven_core::master_target::MasterTargetSettings;
use haven_core::process_server::ProcessServerSettings;
use haven_runtime::drivers::agent::{AgentConfig, AgentDiskConfig};
use haven_runtime::drivers::config_server::ConfigServerConfig;
use haven_runtime::drivers::master_target::MasterTargetConfig;
use haven_runtime::drivers::process_server::ProcessServerConfig;
use haven_runtime::drivers::{self, Host};
use haven_runtime::meta::{MetaStore, PointRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Size of the simulated protected disk.
pub const DISK_BYTES: u64 = 4 << 20;
/// Fixed wall-clock base of every host, so that timestamps replay exactly.
pub const CLOCK_BASE_US: u64 = 1_800_000_000_000_000;
const CS: &str = "cs:7000";

fn id(s: &str) -> ComponentId {
    ComponentId::new(s).expect("valid id")
}

/// A simulated machine's disks: its file system and its redb files, both crash-faithful, kept
/// outside the host so that they outlive a crash.
#[derive(Clone, Default)]
pub struct Disks {
    pub vfs: SimVfs,
    redb: Arc<Mutex<BTreeMap<PathBuf, SimRedbDisk>>>,
    /// Why the role on this machine stopped, each time it did (a storage error stops a role).
    pub stops: Stops,
}

impl Disks {
    pub fn host(&self) -> Host<TurmoilTcp, SimVfs> {
        let redb = self.redb.clone();
        let open_meta = Arc::new(move |path: &Path| {
            let disk = redb
                .lock()
                .expect("redb map")
                .entry(path.to_path_buf())
                .or_default()
                .clone();
            MetaStore::with_backend(disk.backend())
        });
        Host {
            transport: TurmoilTcp,
            vfs: self.vfs.clone(),
            open_meta,
            clock_base_us: Some(CLOCK_BASE_US),
        }
    }

    /// Power loss: everything not synced is gone (the last unsynced write may be torn).
    pub fn crash(&self, seed: u64) {
        self.vfs.crash(seed, true);
        for d in self.redb.lock().expect("redb map").values() {
            d.crash();
        }
    }
}

/// The four hosts' disks.
#[derive(Clone, Default)]
pub struct ClusterDisks {
    pub cs: Disks,
    pub ps: Disks,
    pub mt: Disks,
    pub agent: Disks,
}

type HostResult = Result<(), Box<dyn std::error::Error>>;
type Stops = Arc<Mutex<Vec<String>>>;

/// Runs a started role until it stops. A role that stops on a storage error (or fails to start)
/// stops its host quietly — the test restarts it with `bounce` — and the reason is recorded for
/// the test to check.
async fn run_role<H>(
    started: Result<H, drivers::RoleError>,
    task: impl FnOnce(H) -> tokio::task::JoinHandle<Result<(), drivers::RoleError>>,
    stops: Stops,
) -> HostResult {
    let result = match started {
        Ok(h) => task(h).await.map_err(|e| e.to_string())?,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        stops.lock().expect("stops").push(e.to_string());
    }
    Ok(())
}

/// Adds the four role hosts to `sim`. Each host's closure starts its driver from its disks, so
/// `sim.bounce(name)` after `disks.crash()` is a restart after power loss.
pub fn add_hosts(sim: &mut turmoil::Sim<'_>, disks: &ClusterDisks) {
    let d = disks.cs.clone();
    sim.host("cs", move || {
        let (host, stops) = (d.host(), d.stops.clone());
        async move {
            let settings = ConfigServerSettings {
                rules: vec![],
                heartbeat_timeout_ms: 5_000,
                auto_protect: true,
            };
            let cfg = ConfigServerConfig {
                component: id("cs"),
                settings,
                data_dir: "/cs".into(),
                listen: "0.0.0.0:7000".into(),
                api_listen: "0.0.0.0:7080".into(),
            };
            run_role(
                drivers::config_server::start(host, cfg).await,
                |h| h.task,
                stops,
            )
            .await
        }
    });
    let d = disks.ps.clone();
    sim.host("ps", move || {
        let (host, stops) = (d.host(), d.stops.clone());
        async move {
            run_role(
                drivers::process_server::start(host, ps_config()).await,
                |h| h.task,
                stops,
            )
            .await
        }
    });
    let d = disks.mt.clone();
    sim.host("mt", move || {
        let (host, stops) = (d.host(), d.stops.clone());
        async move {
            run_role(
                drivers::master_target::start(host, mt_config()).await,
                |h| h.task,
                stops,
            )
            .await
        }
    });
    let d = disks.agent.clone();
    sim.host("agent", move || {
        let (host, stops) = (d.host(), d.stops.clone());
        async move {
            run_role(
                drivers::agent::start(host, agent_config()).await,
                |h| h.task,
                stops,
            )
            .await
        }
    });
}

fn ps_config() -> ProcessServerConfig {
    let settings = ProcessServerSettings {
        component: id("ps"),
        config_server_addr: CS.into(),
        data_addr: "ps:7100".into(),
        cache_bytes_max: 64 << 20,
        window_batches_max: 8,
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 200,
        busy_retry_ms: 200,
    };
    ProcessServerConfig {
        settings,
        data_dir: "/ps".into(),
        listen: "0.0.0.0:7100".into(),
        compression_level: 1,
        // Every batch, so that the compressed path is exercised whatever the timing.
        compression: haven_core::batch::CompressionPolicy::Always,
        api_listen: Some("0.0.0.0:7180".into()),
    }
}

fn mt_config() -> MasterTargetConfig {
    let settings = MasterTargetSettings {
        component: id("mt"),
        config_server_addr: CS.into(),
        data_addr: "mt:7200".into(),
        api_addr: "mt:7280".into(),
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 200,
    };
    MasterTargetConfig {
        settings,
        data_dir: "/mt".into(),
        listen: "0.0.0.0:7200".into(),
        api_listen: "0.0.0.0:7280".into(),
    }
}

fn agent_config() -> AgentConfig {
    let settings = AgentSettings {
        component: id("agent"),
        config_server_addr: CS.into(),
        batch_bytes_max: 256 << 10,
        batch_delay_ms: 10,
        buffer_bytes_max: 16 << 20,
        window_batches_max: 8,
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 200,
    };
    let disk = AgentDiskConfig {
        disk: DiskId::new("disk0").expect("valid"),
        path: "/disk0.img".into(),
        create_size: Some(DISK_BYTES),
    };
    AgentConfig {
        settings,
        disks: vec![disk],
        data_dir: "/agent".into(),
        nbd_listen: "0.0.0.0:10809".into(),
        api_listen: Some("0.0.0.0:7380".into()),
    }
}

/// A seeded xorshift for the workload.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

async fn connect_retry(addr: &str) -> std::io::Result<turmoil::net::TcpStream> {
    let mut last = None;
    for _ in 0..200 {
        match turmoil::net::TcpStream::connect(addr.to_string()).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.expect("tried"))
}

/// Applies one random op through NBD and to the model.
async fn random_op<S>(
    nbd: &mut NbdClient<S>,
    model: &mut [u8],
    rng: &mut Rng,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let size = model.len() as u64;
    let len = match rng.below(4) {
        0 => 1 + rng.below(9000),
        1 => 4096 * (1 + rng.below(8)),
        2 => 512 * (1 + rng.below(64)),
        _ => 65_536,
    }
    .min(size);
    let off = rng.below(size - len + 1);
    let range = off as usize..(off + len) as usize;
    match rng.below(10) {
        0 => {
            nbd.trim(off, len as u32).await?;
            model[range].fill(0);
        }
        1 => {
            nbd.write_zeroes(off, len as u32).await?;
            model[range].fill(0);
        }
        _ => {
            let fill = (rng.next_u64() & 0xff) as u8;
            let data: Vec<u8> = (0..len)
                .map(|i| fill.wrapping_add((i % 251) as u8))
                .collect();
            nbd.write(off, &data).await?;
            model[range].copy_from_slice(&data);
        }
    }
    Ok(())
}

/// What a workload run ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub points: Vec<PointRecord>,
    pub image_digest: u64,
    pub ops: u64,
}

pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The workload: `ops` random writes through NBD with a flush every few, then waits until the
/// newest recovery point covers everything and checks it equals the model.
pub async fn workload(seed: u64, ops: u64, result: Arc<Mutex<Option<Outcome>>>) -> HostResult {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let stream = connect_retry("agent:10809").await?;
    let mut nbd = NbdClient::connect(stream, "disk0").await?;
    let mut model = vec![0u8; nbd.size as usize];
    for i in 0..ops {
        random_op(&mut nbd, &mut model, &mut rng).await?;
        if i % 8 == 7 {
            nbd.flush().await?;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
    }
    nbd.flush().await?;
    // Everything written must reach the replica: poll the newest point until its image equals
    // the model (the check is on bytes, not on counters).
    for _ in 0..600 {
        if let Some((points, image)) = newest_image().await {
            if image == model {
                let outcome = Outcome {
                    points,
                    image_digest: fnv(&image),
                    ops,
                };
                *result.lock().expect("result") = Some(outcome);
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = http_get("cs:7080", "/api/status")
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let points = http_get("mt:7280", "/replicas")
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Err(format!(
        "the replica never converged to the source; status: {status:?}; replicas: {points:?}"
    )
    .into())
}

async fn http_get(addr: &str, path: &str) -> Option<Vec<u8>> {
    let client = haven_runtime::http::Client::new(super::transport::TurmoilTcp, addr);
    let resp = client
        .send(haven_runtime::http::Method::GET, path, &[], None)
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let body = haven_runtime::http::read_body(resp.into_body(), 64 << 20).await;
    body.ok().map(|b| b.to_vec())
}

/// The newest recovery point and its image, read from the master target's API.
pub async fn newest_image() -> Option<(Vec<PointRecord>, Vec<u8>)> {
    let body = http_get("mt:7280", "/replicas/disk0/points").await?;
    let points: Vec<PointRecord> = serde_json_points(&body)?;
    let last = points.last()?.seq;
    let image = http_get("mt:7280", &format!("/replicas/disk0/image?seq={last}")).await?;
    Some((points, image))
}

fn serde_json_points(body: &[u8]) -> Option<Vec<PointRecord>> {
    serde_json::from_slice(body).ok()
}
