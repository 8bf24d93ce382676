//! `haven lab --processes`: the four roles as child processes of the lab (this same binary, each
//! started as `haven <role> --config DIR/<role>.toml`), supervised. A child that exits, however
//! it exits, is started again after [`RESTART_DELAY`], and the lab says so. DIR/lab.env carries
//! each child's pid (`HAVEN_PID_<ROLE>`) and is rewritten, atomically, whenever one changes, so
//! that a person or a script can try a fault (`kill -9 "$HAVEN_PID_PROCESS_SERVER"`,
//! `kill -STOP ...`) and watch Haven handle it.
//!
//! The run loop: pick every listening address up front (each role must know its peers' before any
//! starts, and an address must not change when its role restarts), write the four TOML files, start
//! one supervisor task per role, then handle their events, print a status line every interval
//! (over the configuration server's REST API, which may be down or stopped), and on SIGINT or
//! SIGTERM stop the children: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].

use crate::config::*;
use crate::lab::{self, LabOptions};
use crate::size::format_time;
use haven_core::config_server::StatusView;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// How long a child that exited stays down before the lab starts it again.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How long a child may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the lab asks whether the roles are up, until they are.
const READY_POLL: Duration = Duration::from_millis(200);
/// Longest wait for one status answer: a stopped (SIGSTOP) configuration server accepts the
/// connection but never answers.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Events in flight from the supervisors to the lab's loop.
const EVENTS_MAX: usize = 16;
/// Bytes at the end of a child's log read to quote its last line.
const LOG_TAIL_BYTES: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    ConfigServer,
    ProcessServer,
    MasterTarget,
    Agent,
}

/// In start order: the configuration server first, so that the others find it at once.
const ROLES: [Role; 4] = [
    Role::ConfigServer,
    Role::ProcessServer,
    Role::MasterTarget,
    Role::Agent,
];

impl Role {
    /// The subcommand, and the name of its TOML file and its log.
    fn command(self) -> &'static str {
        match self {
            Role::ConfigServer => "config-server",
            Role::ProcessServer => "process-server",
            Role::MasterTarget => "master-target",
            Role::Agent => "agent",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::ConfigServer => "configuration server",
            Role::ProcessServer => "process server",
            Role::MasterTarget => "master target",
            Role::Agent => "agent",
        }
    }

    fn pid_var(self) -> &'static str {
        match self {
            Role::ConfigServer => "HAVEN_PID_CONFIG_SERVER",
            Role::ProcessServer => "HAVEN_PID_PROCESS_SERVER",
            Role::MasterTarget => "HAVEN_PID_MASTER_TARGET",
            Role::Agent => "HAVEN_PID_AGENT",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Every address the roles listen on (host:port), fixed for the lab's lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Addrs {
    cs: String,
    cs_api: String,
    ps: String,
    mt: String,
    mt_api: String,
    nbd: String,
    ps_api: String,
    agent_api: String,
}

/// Binds every address at once (a port 0 becomes a free port of that host), then releases them
/// for the children: an address in use is an error here rather than a child that cannot start.
fn pick_addrs(o: &LabOptions) -> Result<Addrs, String> {
    let specs = [
        "127.0.0.1:0",
        &o.api_listen,
        "127.0.0.1:0",
        "127.0.0.1:0",
        "127.0.0.1:0",
        &o.nbd_listen,
        "127.0.0.1:0",
        "127.0.0.1:0",
    ];
    let held = specs
        .iter()
        .map(|spec| {
            std::net::TcpListener::bind(spec).map_err(|e| format!("cannot listen on {spec}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = held
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.to_string())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let [cs, cs_api, ps, mt, mt_api, nbd, ps_api, agent_api] =
        <[String; 8]>::try_from(addrs).expect("one address per spec");
    Ok(Addrs {
        cs,
        cs_api,
        ps,
        mt,
        mt_api,
        nbd,
        ps_api,
        agent_api,
    })
}

fn table<const N: usize>(pairs: [(&str, toml::Value); N]) -> toml::Table {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The TOML file of `role`, with the keys of docs/examples/ and the settings of the in-process lab.
fn config_toml(role: Role, dir: &Path, a: &Addrs, o: &LabOptions) -> String {
    use toml::Value as V;
    let s = |v: &str| V::String(v.to_string());
    let path = |name: &str| V::String(dir.join(name).display().to_string());
    let int = |v: u64| V::Integer(i64::try_from(v).expect("setting fits in i64"));
    let heartbeat = int(DEFAULT_HEARTBEAT_INTERVAL_MS);
    let reconnect = int(DEFAULT_RECONNECT_DELAY_MS);
    let t = match role {
        Role::ConfigServer => table([
            ("id", s(lab::CONFIG_SERVER_ID)),
            ("listen", s(&a.cs)),
            ("api_listen", s(&a.cs_api)),
            ("data_dir", path("config-server")),
            (
                "heartbeat_timeout_ms",
                int(DEFAULT_HEARTBEAT_INTERVAL_MS * 5),
            ),
            ("auto_protect", V::Boolean(true)),
        ]),
        Role::ProcessServer => table([
            ("id", s(lab::PROCESS_SERVER_ID)),
            ("config_server", s(&a.cs)),
            ("data_dir", path("process-server")),
            ("listen", s(&a.ps)),
            ("api_listen", s(&a.ps_api)),
            ("cache_bytes_max", int(lab::CACHE_BYTES_MAX)),
            ("window_batches_max", int(DEFAULT_WINDOW_BATCHES_MAX as u64)),
            ("heartbeat_interval_ms", heartbeat),
            ("reconnect_delay_ms", reconnect),
            ("busy_retry_ms", int(DEFAULT_BUSY_RETRY_MS)),
            (
                "compression_level",
                V::Integer(haven_core::batch::ZSTD_LEVEL_DEFAULT.into()),
            ),
            (
                "compression",
                V::try_from(o.compression).expect("a policy is a string"),
            ),
        ]),
        Role::MasterTarget => table([
            ("id", s(lab::MASTER_TARGET_ID)),
            ("config_server", s(&a.cs)),
            ("data_dir", path("master-target")),
            ("listen", s(&a.mt)),
            ("api_listen", s(&a.mt_api)),
            ("heartbeat_interval_ms", heartbeat),
            ("reconnect_delay_ms", reconnect),
        ]),
        Role::Agent => {
            let disks = (0..o.disks)
                .map(|i| {
                    V::Table(table([
                        ("id", s(&format!("disk{i}"))),
                        ("path", path(&format!("disk{i}.img"))),
                        ("create_size", int(o.disk_size)),
                    ]))
                })
                .collect();
            table([
                ("id", s(lab::AGENT_ID)),
                ("config_server", s(&a.cs)),
                ("data_dir", path("agent")),
                ("nbd_listen", s(&a.nbd)),
                ("api_listen", s(&a.agent_api)),
                ("batch_bytes_max", int(DEFAULT_BATCH_BYTES_MAX)),
                ("batch_delay_ms", int(DEFAULT_BATCH_DELAY_MS)),
                ("buffer_bytes_max", int(DEFAULT_BUFFER_BYTES_MAX)),
                ("window_batches_max", int(DEFAULT_WINDOW_BATCHES_MAX as u64)),
                ("heartbeat_interval_ms", heartbeat),
                ("reconnect_delay_ms", reconnect),
                ("disk", V::Array(disks)),
            ])
        }
    };
    format!(
        "# Written by `haven lab --processes` at each start (edits are overwritten).\n\
         # The lab runs: haven {} --config {}\n{}",
        role.command(),
        config_path(dir, role).display(),
        toml::to_string(&t).expect("a table serializes")
    )
}

fn config_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{}.toml", role.command()))
}

fn log_path(dir: &Path, role: Role) -> PathBuf {
    dir.join("logs").join(format!("{}.log", role.command()))
}

/// What a supervisor tells the lab's loop.
enum Event {
    Started { role: Role, pid: u32 },
    Exited { role: Role, pid: u32, how: String },
    SpawnFailed { role: Role, error: String },
}

/// Starts `role`; its stdout and stderr go to the end of DIR/logs/<role>.log. The child has a
/// process group of its own, so that a Ctrl-C reaches only the lab, which stops the children
/// itself; on Linux it also gets SIGTERM if the lab dies without stopping it.
fn spawn(exe: &Path, dir: &Path, role: Role) -> std::io::Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, role))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    writeln!(
        log,
        "---- haven lab: starting the {} at {} ----",
        role.name(),
        format_time(now.as_micros() as u64)
    )?;
    // On Linux the child runs the lab's own binary even if a rebuild has replaced the file
    // since (the file name stays in argv[0], for ps and pgrep).
    let mut cmd = if cfg!(target_os = "linux") {
        Command::new("/proc/self/exe")
    } else {
        Command::new(exe)
    };
    cmd.arg0(exe)
        .arg(role.command())
        .arg("--config")
        .arg(config_path(dir, role))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) is async-signal-safe and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.spawn()
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes no pointers. The pid is a child not yet reaped (`Child::id` is
    // `None` once it is), so it cannot name another process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM, and SIGCONT so that a stopped child (kill -STOP) runs to handle it; SIGKILL if it is
/// still there after [`STOP_TIMEOUT`].
async fn stop(role: Role, child: &mut Child) {
    if let Some(pid) = child.id() {
        signal(pid, libc::SIGTERM);
        signal(pid, libc::SIGCONT);
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        println!(
            "[lab] the {} did not stop within {} s; killing it",
            role.name(),
            STOP_TIMEOUT.as_secs()
        );
        let _ = child.kill().await;
    }
}

/// Runs `role` until told to stop, starting it again [`RESTART_DELAY`] after each exit.
async fn supervise(
    role: Role,
    exe: Arc<PathBuf>,
    dir: Arc<PathBuf>,
    events: mpsc::Sender<Event>,
    mut quit: watch::Receiver<bool>,
) {
    loop {
        match spawn(&exe, &dir, role) {
            Ok(mut child) => {
                let pid = child.id().expect("a child just spawned has a pid");
                let _ = events.send(Event::Started { role, pid }).await;
                tokio::select! {
                    biased;
                    _ = quit.changed() => return stop(role, &mut child).await,
                    status = child.wait() => {
                        let how = describe(status);
                        let _ = events.send(Event::Exited { role, pid, how }).await;
                    }
                }
            }
            Err(e) => {
                let error = e.to_string();
                let _ = events.send(Event::SpawnFailed { role, error }).await;
            }
        }
        tokio::select! {
            biased;
            _ = quit.changed() => return,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
}

/// The last line of a child's log, to say why it exited.
fn last_log_line(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string)
}

/// The status over the REST API. The one place that names the client call.
async fn fetch_status(api: &str) -> Result<StatusView, String> {
    match tokio::time::timeout(STATUS_TIMEOUT, crate::console::fetch_status(api)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", STATUS_TIMEOUT.as_secs())),
    }
}

/// The roles are up once the other three are online at the configuration server (each
/// registers after binding its listeners).
fn all_online(s: &StatusView) -> bool {
    [lab::AGENT_ID, lab::PROCESS_SERVER_ID, lab::MASTER_TARGET_ID]
        .iter()
        .all(|id| {
            s.components
                .iter()
                .any(|c| c.id.as_str() == *id && c.online)
        })
}

fn print_status(s: &StatusView) {
    lab::print_disks(s);
    for c in s.components.iter().filter(|c| !c.online) {
        println!(
            "[status] {} {} is offline (last seen {} ago)",
            c.role,
            c.id,
            crate::console::human_ms(c.last_seen_ms)
        );
    }
}

/// The lab's view of its children.
struct Lab {
    dir: PathBuf,
    env: String,
    pids: [Option<u32>; 4],
    /// lab.env is written once the roles are up, then whenever a pid changes.
    ready: bool,
}

impl Lab {
    fn env_with_pids(&self) -> String {
        let mut text = self.env.clone();
        for role in ROLES {
            let pid = self.pids[role.index()].map_or(String::new(), |p| p.to_string());
            text.push_str(&format!("{}={pid}\n", role.pid_var()));
        }
        text
    }

    /// The in-process lab's banner, with the pids.
    fn announce(&self, api: &str, nbd: &str, o: &LabOptions) {
        lab::print_banner("four roles as child processes", api, nbd, &self.dir, o);
        for role in ROLES {
            let pid = self.pids[role.index()].map_or("-".into(), |p| p.to_string());
            println!("  {}: pid {pid} (${})", role.name(), role.pid_var());
        }
        println!(
            "  try a fault: kill -9 \"$HAVEN_PID_PROCESS_SERVER\" (the lab restarts it), \
             kill -STOP / kill -CONT"
        );
    }

    fn handle(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Started { role, pid } => {
                let again = self.pids[role.index()].is_none() && self.ready;
                self.pids[role.index()] = Some(pid);
                if again {
                    println!("[lab] {} restarted (pid {pid})", role.name());
                }
            }
            Event::Exited { role, pid, how } => {
                self.pids[role.index()] = None;
                let log = log_path(&self.dir, role);
                let why = match last_log_line(&log).filter(|_| !how.starts_with("signal")) {
                    Some(line) => format!("; last line of {}: {line}", log.display()),
                    None => String::new(),
                };
                println!(
                    "[lab] {} (pid {pid}) exited ({how}); restarting in {} s{why}",
                    role.name(),
                    RESTART_DELAY.as_secs()
                );
            }
            Event::SpawnFailed { role, error } => println!(
                "[lab] cannot start the {}: {error}; trying again in {} s",
                role.name(),
                RESTART_DELAY.as_secs()
            ),
        }
        if self.ready {
            lab::write_env(&self.dir, &self.env_with_pids())?;
        }
        Ok(())
    }
}

pub async fn run(o: LabOptions, dir: PathBuf) -> Result<(), String> {
    if dir.to_str().is_none() {
        return Err(format!(
            "{} is not UTF-8; choose another --dir",
            dir.display()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the haven binary: {e}"))?;
    let addrs = pick_addrs(&o)?;
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| format!("cannot create {}/logs: {e}", dir.display()))?;
    for role in ROLES {
        let path = config_path(&dir, role);
        std::fs::write(&path, config_toml(role, &dir, &addrs, &o))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    // A lab.env left by an earlier run names its pids: nobody should read it as this lab's.
    let _ = std::fs::remove_file(dir.join("lab.env"));
    let api = format!("http://{}", addrs.cs_api);
    let mut lab = Lab {
        env: lab::env_text(&api, &addrs.nbd, &dir, o.disks),
        dir: dir.clone(),
        pids: [None; 4],
        ready: false,
    };
    println!(
        "starting the four roles as child processes of this lab (pid {}); their logs: {}/logs/",
        std::process::id(),
        dir.display()
    );
    let (events_tx, mut events) = mpsc::channel(EVENTS_MAX);
    // The agent is stopped first, so that it can hand what it holds to the process server and
    // stop cleanly (its streams resume where they were at the next start).
    let (quit_tx, quit) = watch::channel(false);
    let (quit_agent_tx, quit_agent) = watch::channel(false);
    let (exe, shared_dir) = (Arc::new(exe), Arc::new(dir.clone()));
    let tasks: Vec<_> = ROLES
        .into_iter()
        .map(|role| {
            let q = if role == Role::Agent {
                &quit_agent
            } else {
                &quit
            };
            let (exe, d, tx, q) = (
                exe.clone(),
                shared_dir.clone(),
                events_tx.clone(),
                q.clone(),
            );
            (role, tokio::spawn(supervise(role, exe, d, tx, q)))
        })
        .collect();
    drop(events_tx);

    let result = async {
        let mut ready_tick = tokio::time::interval(READY_POLL);
        ready_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = Duration::from_secs(o.status_interval_s.max(1));
        let mut status_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = crate::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                Some(ev) = events.recv() => lab.handle(ev)?,
                _ = ready_tick.tick(), if !lab.ready => {
                    if fetch_status(&addrs.cs_api).await.is_ok_and(|s| all_online(&s)) {
                        lab.ready = true;
                        lab::write_env(&dir, &lab.env_with_pids())?;
                        lab.announce(&api, &addrs.nbd, &o);
                    }
                }
                _ = status_tick.tick() => match fetch_status(&addrs.cs_api).await {
                    Ok(s) if lab.ready => print_status(&s),
                    Ok(_) => println!("[status] waiting for the roles to register (logs in {}/logs/)", dir.display()),
                    Err(e) => println!("[status] configuration server not answering ({e})"),
                },
            }
        }
    }
    .await;
    println!("stopping the lab");
    // Supervisors must not wait for room in a channel nobody reads any more.
    drop(events);
    let (agent, rest): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|(r, _)| *r == Role::Agent);
    let _ = quit_agent_tx.send(true);
    for (_, t) in agent {
        let _ = t.await;
    }
    let _ = quit_tx.send(true);
    for (_, t) in rest {
        let _ = t.await;
    }
    if lab.ready {
        // The pids are gone (and may be reused): only the addresses stay.
        lab::write_env(&dir, &lab.env)?;
    }
    result
}

#[cfg(test)]
mod tests;
