//! `haven lab`: all four roles on loopback in one process, with one sparse disk, for a local
//! trial and for scripts (which source DIR/lab.env). `--processes` runs them as supervised child
//! processes instead (lab_processes.rs); the pieces both modes share are here.

use crate::config::*;
use crate::console::disk_line;
use haven_core::agent::AgentSettings;
use haven_core::config_server::{ConfigServerSettings, StatusView};
use haven_core::ids::{ComponentId, DiskId};
use haven_core::master_target::MasterTargetSettings;
use haven_core::process_server::ProcessServerSettings;
use haven_runtime::drivers::Host;
use haven_runtime::drivers::{self, RoleError};
use std::path::{Path, PathBuf};

pub struct LabOptions {
    pub dir: PathBuf,
    pub disk_size: u64,
    /// Protected disks of the lab's agent: disk0..disk{N-1}, each `disk_size`.
    pub disks: u32,
    pub nbd_listen: String,
    pub api_listen: String,
    pub status_interval_s: u64,
    /// When the process server compresses.
    pub compression: haven_core::batch::CompressionPolicy,
    /// Each role in a child process of its own (lab_processes.rs).
    pub processes: bool,
}

/// The lab's component ids, the same in both modes so that one DIR serves either.
pub const CONFIG_SERVER_ID: &str = "config-server";
pub const PROCESS_SERVER_ID: &str = "ps1";
pub const MASTER_TARGET_ID: &str = "mt1";
pub const AGENT_ID: &str = "lab-agent";
/// The process server's cache in the lab.
pub const CACHE_BYTES_MAX: u64 = 4 << 30;

fn id(s: &str) -> ComponentId {
    ComponentId::new(s).expect("valid built-in id")
}

/// Most disks `haven lab --disks` makes.
pub const LAB_DISKS_MAX: u32 = 64;

pub async fn run(o: LabOptions) -> Result<(), String> {
    if !(1..=LAB_DISKS_MAX).contains(&o.disks) {
        return Err(format!(
            "--disks {} is out of range: 1 to {LAB_DISKS_MAX}",
            o.disks
        ));
    }
    std::fs::create_dir_all(&o.dir)
        .map_err(|e| format!("cannot create {}: {e}", o.dir.display()))?;
    let dir = o.dir.canonicalize().map_err(|e| e.to_string())?;
    if o.processes {
        return crate::lab_processes::run(o, dir).await;
    }
    let e = |e: RoleError| e.to_string();
    let cs = drivers::config_server::start(
        Host::real(),
        drivers::config_server::ConfigServerConfig {
            component: id(CONFIG_SERVER_ID),
            settings: ConfigServerSettings {
                rules: vec![],
                heartbeat_timeout_ms: DEFAULT_HEARTBEAT_INTERVAL_MS * 5,
                auto_protect: true,
            },
            data_dir: dir.join("config-server"),
            listen: "127.0.0.1:0".into(),
            api_listen: o.api_listen.clone(),
        },
    )
    .await
    .map_err(e)?;
    let ps = drivers::process_server::start(Host::real(), ps_config(&dir, &cs.addr, &o))
        .await
        .map_err(e)?;
    let mt = drivers::master_target::start(Host::real(), mt_config(&dir, &cs.addr))
        .await
        .map_err(e)?;
    let agent = drivers::agent::start(Host::real(), agent_config(&dir, &cs.addr, &o))
        .await
        .map_err(e)?;
    let api = format!("http://{}", cs.api_addr);
    let nbd = agent.nbd_addr.to_string();
    let agent_stop = agent.stopper();
    write_env(&dir, &env_text(&api, &nbd, &dir, o.disks))?;
    print_banner("all four roles on loopback", &api, &nbd, &dir, &o);
    let client = cs.client.clone();
    let every = std::time::Duration::from_secs(o.status_interval_s.max(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let tasks = async {
        tokio::select! {
            r = cs.task => r,
            r = ps.task => r,
            r = mt.task => r,
            r = agent.task => r,
        }
    };
    tokio::pin!(tasks);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                print_disks(&client.status());
            }
            r = &mut tasks => {
                return match r {
                    Ok(Ok(())) => Err("a role stopped".into()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("a role panicked: {e}")),
                };
            }
            _ = crate::shutdown_signal() => {
                println!("stopping the lab");
                // The agent first, while the process server can still take what it holds.
                crate::stop_agent(&agent_stop).await;
                return Ok(());
            }
        }
    }
}

/// DIR/lab.env without the pids: the API, the NBD URIs (`nbd` is the agent's host:port) and DIR.
pub fn env_text(api: &str, nbd: &str, dir: &Path, disks: u32) -> String {
    let mut env = format!(
        "HAVEN_API={api}\nHAVEN_NBD_URI=nbd://{nbd}/disk0\nHAVEN_LAB_DIR={}\n",
        dir.display()
    );
    for i in 0..disks {
        env.push_str(&format!("HAVEN_NBD_URI_DISK{i}=nbd://{nbd}/disk{i}\n"));
    }
    env
}

/// Replaces DIR/lab.env at once (a temporary file renamed over it), so that a script sourcing
/// it never reads half a file.
pub fn write_env(dir: &Path, text: &str) -> Result<(), String> {
    let tmp = dir.join("lab.env.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, dir.join("lab.env")))
        .map_err(|e| format!("cannot write {}/lab.env: {e}", dir.display()))
}

/// What the lab prints once it runs; `how` says how the roles run.
pub fn print_banner(how: &str, api: &str, nbd: &str, dir: &Path, o: &LabOptions) {
    println!("Haven lab is running ({how}), data in {}", dir.display());
    for i in 0..o.disks {
        // A disk that existed keeps its size: say so when it is not what was asked for.
        let size =
            std::fs::metadata(dir.join(format!("disk{i}.img"))).map_or(o.disk_size, |m| m.len());
        let note = if size == o.disk_size {
            String::new()
        } else {
            format!(
                "; it existed and keeps its size (--disk-size {} applies to new disks)",
                crate::size::human_bytes(o.disk_size)
            )
        };
        println!(
            "  protected disk disk{i} ({}): nbd://{nbd}/disk{i}{note}",
            crate::size::human_bytes(size)
        );
    }
    println!("  configuration server API: {api}");
    println!(
        "  environment for scripts: source {}/lab.env",
        dir.display()
    );
    println!("  try: qemu-io -f raw -c 'write -P 0x5a 0 1M' nbd://{nbd}/disk0");
    println!("       haven status --api {api}; haven export disk0 --api {api} --point latest --out disk0.img");
}

/// One "[status]" line per disk.
pub fn print_disks(s: &StatusView) {
    for d in &s.disks {
        println!("[status] {}", disk_line(d));
    }
    if s.disks.is_empty() {
        println!("[status] waiting for the roles to register");
    }
}

fn ps_config(dir: &Path, cs: &str, o: &LabOptions) -> drivers::process_server::ProcessServerConfig {
    drivers::process_server::ProcessServerConfig {
        settings: ProcessServerSettings {
            component: id(PROCESS_SERVER_ID),
            config_server_addr: cs.into(),
            data_addr: String::new(),
            cache_bytes_max: CACHE_BYTES_MAX,
            window_batches_max: DEFAULT_WINDOW_BATCHES_MAX,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            reconnect_delay_ms: DEFAULT_RECONNECT_DELAY_MS,
            busy_retry_ms: DEFAULT_BUSY_RETRY_MS,
        },
        data_dir: dir.join("process-server"),
        listen: "127.0.0.1:0".into(),
        compression_level: haven_core::batch::ZSTD_LEVEL_DEFAULT,
        compression: o.compression,
        api_listen: Some("127.0.0.1:0".into()),
        cache_segment_bytes: haven_runtime::segment::DEFAULT_SEGMENT_BYTES_MAX,
    }
}

fn mt_config(dir: &Path, cs: &str) -> drivers::master_target::MasterTargetConfig {
    drivers::master_target::MasterTargetConfig {
        settings: MasterTargetSettings {
            component: id(MASTER_TARGET_ID),
            config_server_addr: cs.into(),
            data_addr: String::new(),
            api_addr: String::new(),
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            reconnect_delay_ms: DEFAULT_RECONNECT_DELAY_MS,
        },
        data_dir: dir.join("master-target"),
        listen: "127.0.0.1:0".into(),
        api_listen: "127.0.0.1:0".into(),
    }
}

fn agent_config(dir: &Path, cs: &str, o: &LabOptions) -> drivers::agent::AgentConfig {
    drivers::agent::AgentConfig {
        settings: AgentSettings {
            component: id(AGENT_ID),
            config_server_addr: cs.into(),
            batch_bytes_max: DEFAULT_BATCH_BYTES_MAX,
            batch_delay_ms: DEFAULT_BATCH_DELAY_MS,
            buffer_bytes_max: DEFAULT_BUFFER_BYTES_MAX,
            window_batches_max: DEFAULT_WINDOW_BATCHES_MAX,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            reconnect_delay_ms: DEFAULT_RECONNECT_DELAY_MS,
        },
        disks: (0..o.disks)
            .map(|i| drivers::agent::AgentDiskConfig {
                disk: DiskId::new(format!("disk{i}")).expect("valid"),
                path: dir.join(format!("disk{i}.img")),
                create_size: Some(o.disk_size),
            })
            .collect(),
        data_dir: dir.join("agent"),
        nbd_listen: o.nbd_listen.clone(),
        api_listen: Some("127.0.0.1:0".into()),
    }
}
