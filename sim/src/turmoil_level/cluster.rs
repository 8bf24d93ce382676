//! Building and running the turmoil cluster.

use super::durability::Durability;
use super::tap::{SendHook, TapTcp};
use super::topology::{DiskSpec, Topology};
use crate::storage::{SimRedbDisk, SimVfs};
use haven_core::agent::AgentSettings;
use haven_core::config_server::ConfigServerSettings;
use haven_core::ids::ComponentId;
use haven_core::master_target::MasterTargetSettings;
use haven_core::process_server::ProcessServerSettings;
use haven_runtime::drivers::agent::{AgentConfig, AgentDiskConfig};
use haven_runtime::drivers::config_server::ConfigServerConfig;
use haven_runtime::drivers::master_target::MasterTargetConfig;
use haven_runtime::drivers::process_server::ProcessServerConfig;
use haven_runtime::drivers::{self, Host};
use haven_runtime::meta::MetaStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// The host named `name` on these disks; what it sends is shown to `hook`.
    pub fn host(&self, name: &'static str, hook: Option<SendHook>) -> Host<TapTcp, SimVfs> {
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
            transport: TapTcp { host: name, hook },
            vfs: self.vfs.clone(),
            open_meta,
            clock_base_us: Some(CLOCK_BASE_US),
        }
    }

    /// Power loss: everything not synced is gone (the last unsynced write may be torn).
    pub fn crash(&self, seed: u64) {
        self.vfs.crash(seed, true);
        self.crash_meta();
    }

    /// Power loss of the redb files alone (after a power cut of the file system).
    pub fn crash_meta(&self) {
        for d in self.redb.lock().expect("redb map").values() {
            d.crash();
        }
    }
}

/// Every host's disks, and the checker of the durability chain that watches them.
#[derive(Clone)]
pub struct ClusterDisks {
    pub topology: Topology,
    pub cs: Disks,
    /// One per process server, in the order of `Topology::ps_hosts`.
    pub ps: Vec<Disks>,
    /// One per master target, in the order of `Topology::mt_hosts`.
    pub mt: Vec<Disks>,
    /// One per agent, in the order of `Topology::agent_hosts`.
    pub agent: Vec<Disks>,
    pub durability: Arc<Durability>,
}

impl Default for ClusterDisks {
    fn default() -> Self {
        ClusterDisks::new(&Topology::single())
    }
}

impl ClusterDisks {
    pub fn new(topology: &Topology) -> ClusterDisks {
        let ps: Vec<Disks> = (0..topology.pss).map(|_| Disks::default()).collect();
        let mt: Vec<Disks> = (0..topology.mts).map(|_| Disks::default()).collect();
        let durability = Arc::new(Durability::new(
            topology
                .ps_hosts()
                .iter()
                .copied()
                .zip(ps.iter().map(|d| d.vfs.clone()))
                .collect(),
            topology
                .mt_hosts()
                .iter()
                .copied()
                .zip(mt.iter().map(|d| d.vfs.clone()))
                .collect(),
        ));
        for (i, d) in ps.iter().enumerate() {
            let checker = durability.clone();
            d.vfs
                .on_remove(Arc::new(move |path| checker.on_ps_remove(i, path)));
        }
        ClusterDisks {
            topology: topology.clone(),
            cs: Disks::default(),
            ps,
            mt,
            agent: topology.agents.iter().map(|_| Disks::default()).collect(),
            durability,
        }
    }

    /// The disks of the host named `host`.
    pub fn of(&self, host: &str) -> &Disks {
        let t = &self.topology;
        if host == "cs" {
            return &self.cs;
        }
        if let Some(i) = t.ps_hosts().iter().position(|h| *h == host) {
            return &self.ps[i];
        }
        if let Some(i) = t.mt_hosts().iter().position(|h| *h == host) {
            return &self.mt[i];
        }
        let i = t
            .agent_hosts()
            .iter()
            .position(|h| *h == host)
            .unwrap_or_else(|| panic!("no host {host} in {t:?}"));
        &self.agent[i]
    }

    /// The hook that shows every message a host sends to the durability checker.
    fn send_hook(&self) -> SendHook {
        let d = self.durability.clone();
        Arc::new(move |host, msg| d.on_send(host, msg))
    }
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

/// Adds the topology's role hosts to `sim`. Each host's closure starts its driver from its
/// disks, so `sim.bounce(name)` after `disks.crash()` is a restart after power loss.
pub fn add_hosts(sim: &mut turmoil::Sim<'_>, disks: &ClusterDisks) {
    let d = disks.cs.clone();
    sim.host("cs", move || {
        let (host, stops) = (d.host("cs", None), d.stops.clone());
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
    let t = disks.topology.clone();
    for (i, &name) in t.ps_hosts().iter().enumerate() {
        let (d, hook) = (disks.ps[i].clone(), disks.send_hook());
        sim.host(name, move || {
            let (host, stops) = (d.host(name, Some(hook.clone())), d.stops.clone());
            async move {
                run_role(
                    drivers::process_server::start(host, ps_config(name)).await,
                    |h| h.task,
                    stops,
                )
                .await
            }
        });
    }
    for (i, &name) in t.mt_hosts().iter().enumerate() {
        let (d, hook) = (disks.mt[i].clone(), disks.send_hook());
        sim.host(name, move || {
            let (host, stops) = (d.host(name, Some(hook.clone())), d.stops.clone());
            async move {
                run_role(
                    drivers::master_target::start(host, mt_config(name)).await,
                    |h| h.task,
                    stops,
                )
                .await
            }
        });
    }
    let all = t.disks();
    for (i, &name) in t.agent_hosts().iter().enumerate() {
        let d = disks.agent[i].clone();
        let mine: Vec<DiskSpec> = all.iter().filter(|s| s.agent == name).cloned().collect();
        sim.host(name, move || {
            let (host, stops) = (d.host(name, None), d.stops.clone());
            let cfg = agent_config(name, &mine);
            async move { run_role(drivers::agent::start(host, cfg).await, |h| h.task, stops).await }
        });
    }
}

fn ps_config(name: &str) -> ProcessServerConfig {
    let settings = ProcessServerSettings {
        component: id(name),
        config_server_addr: CS.into(),
        data_addr: format!("{name}:7100"),
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
        // Small segments, so that the cache deletes segments as the master target applies
        // batches, and the durability checker sees every deletion.
        cache_segment_bytes: 64 << 10,
    }
}

fn mt_config(name: &str) -> MasterTargetConfig {
    let settings = MasterTargetSettings {
        component: id(name),
        config_server_addr: CS.into(),
        data_addr: format!("{name}:7200"),
        api_addr: format!("{name}:7280"),
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

fn agent_config(name: &str, disks: &[DiskSpec]) -> AgentConfig {
    let settings = AgentSettings {
        component: id(name),
        config_server_addr: CS.into(),
        batch_bytes_max: 256 << 10,
        batch_delay_ms: 10,
        buffer_bytes_max: 16 << 20,
        window_batches_max: 8,
        heartbeat_interval_ms: 500,
        reconnect_delay_ms: 200,
    };
    let disks = disks
        .iter()
        .map(|s| AgentDiskConfig {
            disk: s.disk.clone(),
            path: s.path.clone().into(),
            create_size: Some(DISK_BYTES),
        })
        .collect();
    AgentConfig {
        settings,
        disks,
        data_dir: "/agent".into(),
        nbd_listen: "0.0.0.0:10809".into(),
        api_listen: Some("0.0.0.0:7380".into()),
    }
}
