//! `haven`: runs any Haven role, all roles at once (`haven lab`), and the console commands.

mod commands;
mod config;
mod console;
mod download;
mod lab;
mod lab_processes;
mod size;

use clap::{Parser, Subcommand};
use haven_runtime::drivers::Host;
use haven_runtime::drivers::{self, RoleError};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "haven",
    version,
    about = "Haven: disaster recovery by continuous replication of server disks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent of a protected machine (serves its disks over NBD).
    Agent {
        /// The role's TOML file (see docs/examples/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a process server (durable cache between agents and master targets).
    ProcessServer {
        /// The role's TOML file (see docs/examples/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a master target (replicas and their recovery points).
    MasterTarget {
        /// The role's TOML file (see docs/examples/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the configuration server (registration, placement, monitoring, REST API).
    ConfigServer {
        /// The role's TOML file (see docs/examples/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run all four roles on loopback with sparse disks, for a local trial.
    Lab {
        /// Where the lab keeps its disks, the roles' data and lab.env (reused if it exists).
        #[arg(long, default_value = "haven-lab")]
        dir: PathBuf,
        /// Size of each disk (sparse files under DIR).
        #[arg(long, default_value = "1G", value_parser = size::parse_size)]
        disk_size: u64,
        /// Number of protected disks: disk0..disk{N-1} (lab.env gets HAVEN_NBD_URI_DISK<i>).
        #[arg(long, default_value_t = 1)]
        disks: u32,
        /// Where the agent serves the disks over NBD (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        nbd_listen: String,
        /// Where the configuration server's REST API listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        api_listen: String,
        /// Seconds between status lines.
        #[arg(long, default_value_t = 5)]
        status_interval: u64,
        /// When the process server compresses: adaptive (while the link is the bottleneck),
        /// always, or off.
        #[arg(long, default_value = "adaptive")]
        compression: haven_core::batch::CompressionPolicy,
        /// Run each role as a child process of the lab (DIR/<role>.toml, logs in DIR/logs/),
        /// restarted a second after it dies; lab.env gains HAVEN_PID_<ROLE> lines, for trying
        /// faults such as `kill -9 "$HAVEN_PID_PROCESS_SERVER"`.
        #[arg(long)]
        processes: bool,
    },
    /// Show components and protected disks; the exit code tells the health (docs/operations.md).
    Status {
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
        /// Print the status as JSON (as GET /api/status serves it).
        #[arg(long)]
        json: bool,
    },
    /// List a disk's recovery points.
    Points {
        /// The disk id, as `haven status` shows it.
        disk: String,
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
        /// Print the points as JSON (seq, time in µs, time_rfc3339, kind).
        #[arg(long)]
        json: bool,
    },
    /// Start replicating a disk that an agent registered.
    Protect {
        /// The disk as AGENT/DISK (for example agent1/disk0).
        target: String,
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
        /// Place it on this process server (default: the least loaded online one).
        #[arg(long)]
        process_server: Option<String>,
        /// Keep its replica on this master target (default: the least loaded online one).
        #[arg(long)]
        master_target: Option<String>,
    },
    /// Stop replicating a disk; the agent keeps serving it, unreplicated.
    Unprotect {
        /// The disk id, as `haven status` shows it.
        disk: String,
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
        /// Keep the replica (and its recovery points) on the master target.
        #[arg(long)]
        keep_replica: bool,
    },
    /// Change a disk's settings: rpo_threshold=DURATION, batch_bytes_max=SIZE, batch_delay=DURATION.
    Settings {
        /// The disk id, as `haven status` shows it.
        disk: String,
        /// KEY=VALUE pairs, e.g. rpo_threshold=5m batch_bytes_max=4M batch_delay=20ms.
        #[arg(required = true)]
        pairs: Vec<String>,
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
    },
    /// List the registered components (agents, process servers, master targets).
    Components {
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
        /// Print the components as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a disk as it was at a recovery point to a raw image file.
    Export {
        /// The disk id, as `haven status` shows it.
        disk: String,
        /// The configuration server's API, e.g. http://cs:7080 (`haven lab` prints it).
        #[arg(long, env = "HAVEN_API")]
        api: String,
        /// `latest`, a seq, or a time as `haven points` prints it (RFC 3339:
        /// 2026-12-02T14:48:59.102Z, or +01:00 in place of Z; or @UNIX_SECONDS): the newest
        /// point at or before it.
        #[arg(long, default_value = "latest")]
        point: String,
        /// The image file to write (raw, sparse).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite `--out` if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Logs to stderr, coloured only on a terminal; `HAVEN_LOG` (tracing's `EnvFilter` syntax)
/// sets the levels, and a value it cannot parse is an error rather than silence.
fn init_tracing() -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = match std::env::var("HAVEN_LOG") {
        Ok(v) => tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| {
            format!("HAVEN_LOG={v:?} is not a log filter ({e}); try HAVEN_LOG=info or HAVEN_LOG=haven_runtime=debug")
        })?,
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, kill): either stops a daemon cleanly.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long a stopping agent may take to hand every write to the process server.
pub const AGENT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops an agent cleanly (its streams resume where they were at the next start), or says why
/// the next start will resync.
pub async fn stop_agent(stopper: &drivers::agent::AgentStopper) {
    if !stopper.stop(AGENT_STOP_TIMEOUT).await {
        tracing::warn!(
            "the agent stopped before every write reached the process server (within {} s); \
             the next start resyncs what it held",
            AGENT_STOP_TIMEOUT.as_secs()
        );
    }
}

async fn wait(
    name: &str,
    task: tokio::task::JoinHandle<Result<(), RoleError>>,
) -> Result<(), String> {
    tokio::select! {
        r = task => match r {
            Ok(Ok(())) => Err(format!("{name} stopped")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("{name} panicked: {e}")),
        },
        _ = shutdown_signal() => Ok(()),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let api = |a: &str| haven_runtime::http::parse_base_url(a).map_err(|e| e.to_string());
    match cli.command {
        Command::Agent { config } => {
            let cfg = config::load::<config::AgentFile>(&config)?
                .into_config()
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let h = drivers::agent::start(Host::real(), cfg)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!("agent running; NBD on {}", h.nbd_addr);
            let stopper = h.stopper();
            wait("agent", h.task).await?;
            stop_agent(&stopper).await;
            Ok(())
        }
        Command::ProcessServer { config } => {
            let cfg = config::load::<config::ProcessServerFile>(&config)?
                .into_config()
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let h = drivers::process_server::start(Host::real(), cfg)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!("process server running on {}", h.addr);
            wait("process server", h.task).await
        }
        Command::MasterTarget { config } => {
            let cfg = config::load::<config::MasterTargetFile>(&config)?
                .into_config()
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let h = drivers::master_target::start(Host::real(), cfg)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!("master target running on {}, API on {}", h.addr, h.api_addr);
            wait("master target", h.task).await
        }
        Command::ConfigServer { config } => {
            let cfg = config::load::<config::ConfigServerFile>(&config)?.into_config();
            let h = drivers::config_server::start(Host::real(), cfg)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                "configuration server running on {}, API on http://{}",
                h.addr,
                h.api_addr
            );
            wait("configuration server", h.task).await
        }
        Command::Lab {
            dir,
            disk_size,
            disks,
            nbd_listen,
            api_listen,
            status_interval,
            compression,
            processes,
        } => {
            let o = lab::LabOptions {
                dir,
                disk_size,
                disks,
                nbd_listen,
                api_listen,
                status_interval_s: status_interval,
                compression,
                processes,
            };
            lab::run(o).await
        }
        Command::Status { api: a, json } => console::status(&api(&a)?, json).await,
        Command::Points { disk, api: a, json } => console::points(&api(&a)?, &disk, json).await,
        Command::Protect {
            target,
            api: a,
            process_server,
            master_target,
        } => commands::protect(&api(&a)?, &target, process_server, master_target).await,
        Command::Unprotect {
            disk,
            api: a,
            keep_replica,
        } => commands::unprotect(&api(&a)?, &disk, keep_replica).await,
        Command::Settings {
            disk,
            pairs,
            api: a,
        } => commands::settings(&api(&a)?, &disk, &pairs).await,
        Command::Components { api: a, json } => commands::components(&api(&a)?, json).await,
        Command::Export {
            disk,
            api: a,
            point,
            out,
            force,
        } => console::export(&api(&a)?, &disk, &point, &out, force).await,
    }
}

fn main() {
    let cli = Cli::parse();
    // `haven status | head` ends quietly when the reader goes away, as other tools do, instead
    // of panicking on a broken pipe. An export is the exception: its output is progress for
    // the operator, and a reader going away must not kill it halfway (Rust's own default,
    // SIGPIPE ignored, stays: the export ignores the failed writes).
    if !matches!(cli.command, Command::Export { .. }) {
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    haven_runtime::alloc::tune_allocator();
    if let Err(e) = init_tracing() {
        eprintln!("haven: {e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("haven: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    /// Every subcommand, at any depth, and every option and argument has a help line.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = vec![];
        walk(&cmd, "haven", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:?}");
        assert!(cmd.get_subcommands().count() >= 12);
    }

    /// Each role's systemd unit in docs/examples starts a command this binary takes, with the
    /// example TOML's data_dir as its state directory.
    #[test]
    fn systemd_units_run_the_roles() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
        for role in ["agent", "process-server", "master-target", "config-server"] {
            let unit = std::fs::read_to_string(examples.join(format!("haven-{role}.service")))
                .unwrap_or_else(|e| panic!("haven-{role}.service: {e}"));
            let key = |k: &str| {
                unit.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("haven-{role}.service has no {k}="))
                    .to_string()
            };
            let exec = key("ExecStart");
            let want = format!("/usr/local/bin/haven {role} --config /etc/haven/{role}.toml");
            assert_eq!(exec, want);
            let argv = exec.split(' ').map(|a| a.replace("/usr/local/bin/", ""));
            assert!(Cli::try_parse_from(argv).is_ok(), "{exec}");
            assert_eq!(key("Restart"), "on-failure");
            assert_eq!(key("KillSignal"), "SIGTERM");
            assert!(key("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
            let toml = std::fs::read_to_string(examples.join(format!("{role}.toml"))).unwrap();
            let data_dir = format!("data_dir = \"/var/lib/{}\"", key("StateDirectory"));
            assert!(toml.contains(&data_dir), "{role}.toml lacks {data_dir}");
        }
    }
}
