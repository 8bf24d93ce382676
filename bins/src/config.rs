//! The TOML configuration of each role (documented, with examples, in docs/operations.md and
//! docs/examples/). Unknown keys are errors, so that a typo is not silently ignored.

use crate::size::{de_opt_size, de_size};
use haven_core::agent::AgentSettings;
use haven_core::batch::BATCH_DATA_BYTES_MAX;
use haven_core::config_server::{ConfigServerSettings, ProtectionRule};
use haven_core::ids::{ComponentId, DiskId};
use haven_core::master_target::MasterTargetSettings;
use haven_core::process_server::ProcessServerSettings;
use haven_runtime::drivers::agent::{AgentConfig, AgentDiskConfig};
use haven_runtime::drivers::config_server::ConfigServerConfig;
use haven_runtime::drivers::master_target::MasterTargetConfig;
use haven_runtime::drivers::process_server::ProcessServerConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_BATCH_BYTES_MAX: u64 = 4 << 20;
pub const DEFAULT_BATCH_DELAY_MS: u64 = 20;
pub const DEFAULT_BUFFER_BYTES_MAX: u64 = 256 << 20;
pub const DEFAULT_WINDOW_BATCHES_MAX: usize = 32;
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_RECONNECT_DELAY_MS: u64 = 500;
pub const DEFAULT_CACHE_BYTES_MAX: u64 = 16 << 30;
pub const DEFAULT_BUSY_RETRY_MS: u64 = 1000;

fn d_batch_bytes() -> u64 {
    DEFAULT_BATCH_BYTES_MAX
}
fn d_batch_delay() -> u64 {
    DEFAULT_BATCH_DELAY_MS
}
fn d_buffer() -> u64 {
    DEFAULT_BUFFER_BYTES_MAX
}
fn d_window() -> usize {
    DEFAULT_WINDOW_BATCHES_MAX
}
fn d_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}
fn d_reconnect() -> u64 {
    DEFAULT_RECONNECT_DELAY_MS
}
fn d_cache() -> u64 {
    DEFAULT_CACHE_BYTES_MAX
}
fn d_busy() -> u64 {
    DEFAULT_BUSY_RETRY_MS
}
fn d_level() -> i32 {
    haven_core::batch::ZSTD_LEVEL_DEFAULT
}
fn d_timeout() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS * 5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub id: ComponentId,
    pub config_server: String,
    pub data_dir: PathBuf,
    pub nbd_listen: String,
    /// Where `/metrics` and `/stats` are served (none when absent).
    #[serde(default)]
    pub api_listen: Option<String>,
    #[serde(default = "d_batch_bytes", deserialize_with = "de_size")]
    pub batch_bytes_max: u64,
    #[serde(default = "d_batch_delay")]
    pub batch_delay_ms: u64,
    #[serde(default = "d_buffer", deserialize_with = "de_size")]
    pub buffer_bytes_max: u64,
    #[serde(default = "d_window")]
    pub window_batches_max: usize,
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "d_reconnect")]
    pub reconnect_delay_ms: u64,
    #[serde(rename = "disk")]
    pub disks: Vec<DiskFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    pub id: DiskId,
    pub path: PathBuf,
    #[serde(default, deserialize_with = "de_opt_size")]
    pub create_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessServerFile {
    pub id: ComponentId,
    pub config_server: String,
    pub data_dir: PathBuf,
    pub listen: String,
    /// Address agents should use, if not `listen` (e.g. behind NAT or when listening on 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where `/metrics` and `/stats` are served (none when absent).
    #[serde(default)]
    pub api_listen: Option<String>,
    #[serde(default = "d_cache", deserialize_with = "de_size")]
    pub cache_bytes_max: u64,
    #[serde(default = "d_window")]
    pub window_batches_max: usize,
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "d_reconnect")]
    pub reconnect_delay_ms: u64,
    #[serde(default = "d_busy")]
    pub busy_retry_ms: u64,
    /// zstd level of forwarded batches: -1 by default; -7..-2 faster still, 1..9 smaller.
    #[serde(default = "d_level")]
    pub compression_level: i32,
    /// When to compress: "adaptive" (while the link is the bottleneck), "always" or "off".
    #[serde(default)]
    pub compression: haven_core::batch::CompressionPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterTargetFile {
    pub id: ComponentId,
    pub config_server: String,
    pub data_dir: PathBuf,
    pub listen: String,
    pub api_listen: String,
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default)]
    pub api_advertise: Option<String>,
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "d_reconnect")]
    pub reconnect_delay_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigServerFile {
    #[serde(default = "default_cs_id")]
    pub id: ComponentId,
    pub listen: String,
    pub api_listen: String,
    /// Where the durable state lives (config-server.redb).
    pub data_dir: PathBuf,
    #[serde(default = "d_timeout")]
    pub heartbeat_timeout_ms: u64,
    /// Protect every disk an agent registers for the first time.
    #[serde(default = "d_true")]
    pub auto_protect: bool,
    #[serde(default, rename = "protect")]
    pub rules: Vec<ProtectionRule>,
}

fn d_true() -> bool {
    true
}

fn default_cs_id() -> ComponentId {
    ComponentId::new("config-server").expect("valid")
}

pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// True for an address no peer can connect to as it is: 0.0.0.0 or [::], any port.
fn is_wildcard(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
}

/// A role hands its `listen` address to the configuration server, which hands it to the peers
/// named by `who`; a wildcard there is useless to them, so `advertise` must name the address.
fn check_advertised(
    (listen_key, listen): (&str, &str),
    (advertise_key, advertise): (&str, Option<&str>),
    who: &str,
) -> Result<(), String> {
    match advertise {
        Some(a) if is_wildcard(a) => Err(format!(
            "{advertise_key} = {a:?} is a wildcard address; set it to the host name or address \
             {who} should connect to"
        )),
        None if is_wildcard(listen) => {
            let port = listen.rsplit(':').next().unwrap_or("PORT");
            Err(format!(
                "{listen_key} = {listen:?} is a wildcard address, which {who} cannot connect to; \
                 set {advertise_key} to the address they should use (e.g. {advertise_key} = \
                 \"host.example:{port}\")"
            ))
        }
        _ => Ok(()),
    }
}

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

impl AgentFile {
    pub fn into_config(self) -> Result<AgentConfig, String> {
        check(
            self.batch_bytes_max >= 4096 && self.batch_bytes_max <= BATCH_DATA_BYTES_MAX / 2,
            "batch_bytes_max must be between 4K and 32M",
        )?;
        check(
            self.buffer_bytes_max >= self.batch_bytes_max * 2,
            "buffer_bytes_max must be at least twice batch_bytes_max",
        )?;
        check(
            self.window_batches_max >= 1 && self.window_batches_max <= 1024,
            "window_batches_max must be between 1 and 1024",
        )?;
        check(
            !self.disks.is_empty(),
            "an agent needs at least one [[disk]]",
        )?;
        let settings = AgentSettings {
            component: self.id,
            config_server_addr: self.config_server,
            batch_bytes_max: self.batch_bytes_max,
            batch_delay_ms: self.batch_delay_ms.max(1),
            buffer_bytes_max: self.buffer_bytes_max,
            window_batches_max: self.window_batches_max,
            heartbeat_interval_ms: self.heartbeat_interval_ms.max(100),
            reconnect_delay_ms: self.reconnect_delay_ms.max(10),
        };
        let disks = self
            .disks
            .into_iter()
            .map(|d| AgentDiskConfig {
                disk: d.id,
                path: d.path,
                create_size: d.create_size,
            })
            .collect();
        Ok(AgentConfig {
            settings,
            disks,
            data_dir: self.data_dir,
            nbd_listen: self.nbd_listen,
            api_listen: self.api_listen,
        })
    }
}

impl ProcessServerFile {
    pub fn into_config(self) -> Result<ProcessServerConfig, String> {
        check(
            self.cache_bytes_max >= 64 << 20,
            "cache_bytes_max must be at least 64M",
        )?;
        check(
            self.window_batches_max >= 1 && self.window_batches_max <= 1024,
            "window_batches_max must be between 1 and 1024",
        )?;
        check_advertised(
            ("listen", &self.listen),
            ("advertise", self.advertise.as_deref()),
            "agents",
        )?;
        let settings = ProcessServerSettings {
            component: self.id,
            config_server_addr: self.config_server,
            data_addr: self.advertise.unwrap_or_default(),
            cache_bytes_max: self.cache_bytes_max,
            window_batches_max: self.window_batches_max,
            heartbeat_interval_ms: self.heartbeat_interval_ms.max(100),
            reconnect_delay_ms: self.reconnect_delay_ms.max(10),
            busy_retry_ms: self.busy_retry_ms.max(10),
        };
        check(
            haven_core::batch::ZSTD_LEVELS.contains(&self.compression_level),
            "compression_level must be between -7 and 9",
        )?;
        Ok(ProcessServerConfig {
            settings,
            data_dir: self.data_dir,
            listen: self.listen,
            compression_level: self.compression_level,
            compression: self.compression,
            api_listen: self.api_listen,
            cache_segment_bytes: haven_runtime::segment::DEFAULT_SEGMENT_BYTES_MAX,
        })
    }
}

impl MasterTargetFile {
    pub fn into_config(self) -> Result<MasterTargetConfig, String> {
        check_advertised(
            ("listen", &self.listen),
            ("advertise", self.advertise.as_deref()),
            "process servers",
        )?;
        check_advertised(
            ("api_listen", &self.api_listen),
            ("api_advertise", self.api_advertise.as_deref()),
            "the console (haven export)",
        )?;
        let settings = MasterTargetSettings {
            component: self.id,
            config_server_addr: self.config_server,
            data_addr: self.advertise.unwrap_or_default(),
            api_addr: self.api_advertise.unwrap_or_default(),
            heartbeat_interval_ms: self.heartbeat_interval_ms.max(100),
            reconnect_delay_ms: self.reconnect_delay_ms.max(10),
        };
        Ok(MasterTargetConfig {
            settings,
            data_dir: self.data_dir,
            listen: self.listen,
            api_listen: self.api_listen,
        })
    }
}

impl ConfigServerFile {
    pub fn into_config(self) -> ConfigServerConfig {
        let settings = ConfigServerSettings {
            rules: self.rules,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms.max(500),
            auto_protect: self.auto_protect,
        };
        ConfigServerConfig {
            component: self.id,
            settings,
            data_dir: self.data_dir,
            listen: self.listen,
            api_listen: self.api_listen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/examples")
            .join(name)
    }

    #[test]
    fn example_configs_load_and_validate() {
        let a = load::<AgentFile>(&example("agent.toml"))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(a.disks.len(), 1);
        assert_eq!(a.disks[0].create_size, Some(20u64 << 30));
        assert_eq!(a.settings.batch_bytes_max, 4 << 20);
        let p = load::<ProcessServerFile>(&example("process-server.toml"))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(p.settings.cache_bytes_max, 100u64 << 30);
        assert_eq!(p.settings.data_addr, "ps1.prod.example:7100");
        let m = load::<MasterTargetFile>(&example("master-target.toml"))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(m.settings.api_addr, "mt1.dr.example:7280");
        let c = load::<ConfigServerFile>(&example("config-server.toml"))
            .unwrap()
            .into_config();
        assert_eq!(c.settings.rules.len(), 1);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let bad: Result<ProcessServerFile, _> =
            toml::from_str("id = \"ps1\"\nconfig_server = \"x:1\"\ndata_dir = \"/x\"\nlisten = \"a:1\"\ncache_byte_max = 1\n");
        assert!(bad.unwrap_err().to_string().contains("cache_byte_max"));
        let small: ProcessServerFile =
            toml::from_str("id = \"ps1\"\nconfig_server = \"x:1\"\ndata_dir = \"/x\"\nlisten = \"a:1\"\ncache_bytes_max = \"1M\"\n").unwrap();
        assert!(small.into_config().is_err());
        let bad_id: Result<ProcessServerFile, _> = toml::from_str(
            "id = \"p s\"\nconfig_server = \"x:1\"\ndata_dir = \"/x\"\nlisten = \"a:1\"\n",
        );
        assert!(bad_id.is_err());
    }

    const PS: &str = "id = \"ps1\"\nconfig_server = \"x:1\"\ndata_dir = \"/x\"\n";
    const MT: &str = "id = \"mt1\"\nconfig_server = \"x:1\"\ndata_dir = \"/x\"\n";

    #[test]
    fn a_wildcard_listen_needs_advertise() {
        let ps = |rest: &str| {
            toml::from_str::<ProcessServerFile>(&format!("{PS}{rest}"))
                .unwrap()
                .into_config()
        };
        let e = ps("listen = \"0.0.0.0:7100\"\n").unwrap_err();
        assert!(e.contains("set advertise") && e.contains(":7100"), "{e}");
        assert!(ps("listen = \"[::]:7100\"\n")
            .unwrap_err()
            .contains("set advertise"));
        let e = ps("listen = \"0.0.0.0:7100\"\nadvertise = \"0.0.0.0:7100\"\n").unwrap_err();
        assert!(
            e.contains("advertise = \"0.0.0.0:7100\" is a wildcard"),
            "{e}"
        );
        assert!(ps("listen = \"0.0.0.0:7100\"\nadvertise = \"ps1:7100\"\n").is_ok());
        assert!(ps("listen = \"127.0.0.1:7100\"\n").is_ok());
        assert!(ps("listen = \"ps1.example:7100\"\n").is_ok());

        let mt = |rest: &str| {
            toml::from_str::<MasterTargetFile>(&format!("{MT}{rest}"))
                .unwrap()
                .into_config()
        };
        let both = "listen = \"0.0.0.0:7200\"\nadvertise = \"mt1:7200\"\n";
        let e = mt(&format!("{both}api_listen = \"0.0.0.0:7280\"\n")).unwrap_err();
        assert!(e.contains("set api_advertise"), "{e}");
        let e = mt("listen = \"[::]:7200\"\napi_listen = \"127.0.0.1:7280\"\n").unwrap_err();
        assert!(e.contains("set advertise"), "{e}");
        let ok = format!("{both}api_listen = \"0.0.0.0:7280\"\napi_advertise = \"mt1:7280\"\n");
        assert!(mt(&ok).is_ok());
    }
}
