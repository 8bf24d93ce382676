//! Helpers for the end-to-end tests: four `haven` daemons as child processes, a model of the
//! protected disk, qemu-io as the workload, and raw sockets for hostile input.
#![allow(dead_code)]

use serde_json::Value;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DISK: &str = "disk0";
pub const DISK_BYTES: u64 = 64 << 20;
/// Generous bound for anything the cluster must reach (assignment, replication, restarts).
pub const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// Heartbeat interval of every daemon; a status seen this long after an event reflects it.
const HEARTBEAT_MS: u64 = 100;

/// Startup picks ports and binds them in the daemons; one cluster at a time keeps the window in
/// which a released port could be taken by another test's cluster closed.
static STARTUP: Mutex<()> = Mutex::new(());

/// True when qemu-io runs; without it the test fails (never a silent pass) naming the package.
pub fn have_qemu_io() -> bool {
    let ok = Command::new("qemu-io")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "qemu-io is required by the end-to-end tests but does not run: apt-get install qemu-utils \
         (.ci/run installs what the tests need)"
    );
    ok
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Polls `f` every 100 ms until it returns Ok; panics with the last Err after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    poll_every(POLL, what, timeout, f)
}

pub fn poll_every<T>(
    step: Duration,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {e}")
            }
            Err(_) => std::thread::sleep(step),
        }
    }
}

/// Compares two disk images without printing 64 MiB on a mismatch.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: image sizes differ");
    // memcmp first: a byte loop over 64 MiB is slow in a debug build.
    if got == want {
        return;
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
        panic!(
            "{what}: first difference at byte {i} (got {:#04x}, want {:#04x}); {n} bytes differ",
            got[i], want[i]
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    ConfigServer,
    ProcessServer,
    MasterTarget,
    Agent,
}

const DAEMONS: [Daemon; 4] = [
    Daemon::ConfigServer,
    Daemon::ProcessServer,
    Daemon::MasterTarget,
    Daemon::Agent,
];

impl Daemon {
    fn command(self) -> &'static str {
        match self {
            Daemon::ConfigServer => "config-server",
            Daemon::ProcessServer => "process-server",
            Daemon::MasterTarget => "master-target",
            Daemon::Agent => "agent",
        }
    }
}

/// Every listening port of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub cs: u16,
    pub cs_api: u16,
    pub ps: u16,
    pub mt: u16,
    pub mt_api: u16,
    pub nbd: u16,
    pub ps_api: u16,
    pub agent_api: u16,
}

fn free_ports() -> Ports {
    let ls = [(); 8].map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
    let [cs, cs_api, ps, mt, mt_api, nbd, ps_api, agent_api] =
        ls.map(|l| l.local_addr().expect("local addr").port());
    Ports {
        cs,
        cs_api,
        ps,
        mt,
        mt_api,
        nbd,
        ps_api,
        agent_api,
    }
}

/// Four daemons; dropping it kills them (and prints their logs if the test failed).
pub struct Cluster {
    pub api: Api,
    pub ports: Ports,
    children: [Option<Child>; 4],
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub fn start(tmp: tempfile::TempDir) -> Cluster {
        let c = Cluster::start_with(tmp, None, "", &DAEMONS);
        c.wait_assigned();
        c
    }

    /// The daemons `roles` only (the others with `spawn`), disk0 first written as `image` if
    /// given, `agent_extra` added to the agent's configuration; nothing waited for.
    pub fn start_with(
        tmp: tempfile::TempDir,
        image: Option<&[u8]>,
        agent_extra: &str,
        roles: &[Daemon],
    ) -> Cluster {
        let _one_at_a_time = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tmp.path().to_path_buf();
        let ports = free_ports();
        write_configs(&dir, &ports, agent_extra);
        if let Some(image) = image {
            std::fs::write(dir.join("disk0.img"), image).expect("write disk0.img");
        }
        let api = Api {
            api: format!("http://127.0.0.1:{}", ports.cs_api),
            nbd: format!("nbd://127.0.0.1:{}/{DISK}", ports.nbd),
            dir: dir.clone(),
            qemu_running: Arc::default(),
        };
        let mut c = Cluster {
            api,
            ports,
            children: [None, None, None, None],
            dir,
            _tmp: tmp,
        };
        for role in roles {
            c.spawn(*role);
        }
        c
    }

    pub fn spawn(&mut self, role: Daemon) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", role.command())))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args([role.command(), "--config"])
            .arg(self.dir.join(format!("{}.toml", role.command())))
            .env("HAVEN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn haven");
        self.children[role as usize] = Some(child);
    }

    /// SIGKILL: the daemon gets no chance to flush or say goodbye.
    pub fn kill(&mut self, role: Daemon) {
        let mut child = self.children[role as usize].take().expect("role running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM: a clean stop, waited for (the agent first hands what it holds to the process
    /// server).
    pub fn stop(&mut self, role: Daemon) {
        let mut child = self.children[role as usize].take().expect("role running");
        // SAFETY: kill(2) takes no pointers; the pid is our own child, not yet reaped.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to {role:?}");
        let exit = child.wait().expect("reap");
        assert!(exit.success(), "{role:?} stopped with {exit}");
    }

    /// Starts a killed daemon again with the same configuration and data directory.
    pub fn restart(&mut self, role: Daemon) {
        assert!(
            self.children[role as usize].is_none(),
            "{role:?} is still running"
        );
        self.spawn(role);
    }

    /// Waits until disk0 is placed on the process server and master target and streaming.
    pub fn wait_assigned(&self) {
        poll("disk0 to be assigned and streaming", DEADLINE, || {
            let v = self.api.status()?;
            let d = disk_view(&v).ok_or("disk0 not protected yet")?;
            let placed = d["process_server"].is_string() && d["master_target"].is_string();
            let streaming = d["source"]["mode"] == "data" && d["source"]["connected"] == true;
            (placed && streaming)
                .then_some(())
                .ok_or_else(|| d.to_string())
        })
    }

    pub fn assert_alive(&mut self) {
        for (role, child) in DAEMONS.iter().zip(self.children.iter_mut()) {
            let child = child
                .as_mut()
                .unwrap_or_else(|| panic!("{role:?} was not restarted"));
            let state = child.try_wait().expect("try_wait");
            assert!(state.is_none(), "{role:?} exited: {state:?}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for role in DAEMONS {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", role.command())))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {} log (last lines) ----", role.command());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

fn write_configs(dir: &Path, p: &Ports, agent_extra: &str) {
    let (d, cs, hb) = (dir.display(), format!("127.0.0.1:{}", p.cs), HEARTBEAT_MS);
    let common =
        format!("config_server = \"{cs}\"\nheartbeat_interval_ms = {hb}\nreconnect_delay_ms = 100");
    let files = [
        ("config-server", format!("data_dir = \"{d}/cs\"\nlisten = \"{cs}\"\napi_listen = \"127.0.0.1:{}\"\n", p.cs_api)),
        ("process-server", format!("id = \"ps1\"\n{common}\ndata_dir = \"{d}/ps\"\nlisten = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\n", p.ps, p.ps_api)),
        ("master-target", format!("id = \"mt1\"\n{common}\ndata_dir = \"{d}/mt\"\nlisten = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\n", p.mt, p.mt_api)),
        (
            "agent",
            format!(
                r#"id = "agent1"
{common}
data_dir = "{d}/agent"
nbd_listen = "127.0.0.1:{}"
api_listen = "127.0.0.1:{}"
{agent_extra}

[[disk]]
id = "{DISK}"
path = "{d}/disk0.img"
create_size = "64M"
"#,
                p.nbd, p.agent_api
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("write config");
    }
}

fn disk_view(status: &Value) -> Option<&Value> {
    status["disks"]
        .as_array()?
        .iter()
        .find(|d| d["disk"] == DISK)
}

/// disk0 as `haven status --json` shows it.
#[derive(Clone, Debug)]
pub struct DiskState {
    pub written: u64,
    pub cached: u64,
    pub applied: u64,
    pub replica_applied: u64,
    pub connected: bool,
    pub inconsistent: Value,
    /// Configuration-server time (ms since the epoch) of the agent's latest heartbeat.
    pub agent_seen_ms: u64,
}

fn disk_state(v: &Value) -> Option<DiskState> {
    let d = disk_view(v)?;
    let (s, r) = (&d["source"], &d["replica"]);
    let agent = v["components"]
        .as_array()?
        .iter()
        .find(|c| c["role"] == "agent")?;
    Some(DiskState {
        written: s["seq_written"].as_u64()?,
        cached: s["seq_cached"].as_u64()?,
        applied: s["seq_applied"].as_u64()?,
        replica_applied: r["applied_seq"].as_u64().unwrap_or(0),
        connected: s["connected"].as_bool()?,
        inconsistent: r["inconsistent"].clone(),
        agent_seen_ms: v["time_ms"].as_u64()? - agent["last_seen_ms"].as_u64()?,
    })
}

/// The console and the workload, usable from any thread (no daemon handles).
#[derive(Clone, Debug)]
pub struct Api {
    pub api: String,
    pub nbd: String,
    dir: PathBuf,
    /// True while a qemu-io started through this `Api` (or a clone) runs.
    pub qemu_running: Arc<AtomicBool>,
}

impl Api {
    /// The console of a cluster this file did not start (`haven lab`): its API URL, the NBD URI
    /// of disk0, and the directory holding disk0.img.
    pub fn new(api: &str, nbd: &str, dir: &Path) -> Api {
        Api {
            api: api.to_string(),
            nbd: nbd.to_string(),
            dir: dir.to_path_buf(),
            qemu_running: Arc::default(),
        }
    }

    pub fn haven(&self, args: &[&str]) -> Result<Output, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(args)
            .args(["--api", &self.api])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "haven {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    }

    /// `haven status --json`; its exit codes 3-5 (offline, inconsistent, RPO over) still
    /// print the status.
    pub fn status(&self) -> Result<Value, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["status", "--json", "--api", &self.api])
            .output()
            .map_err(|e| e.to_string())?;
        if !matches!(out.status.code(), Some(0 | 3..=5)) {
            return Err(format!(
                "haven status: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status JSON: {e}"))
    }

    pub fn disk(&self) -> Result<DiskState, String> {
        let v = self.status()?;
        disk_state(&v).ok_or_else(|| format!("no complete disk0 view in {v}"))
    }

    /// A status that reflects everything the agent did before `since_ms` (a heartbeat taken
    /// after it) and shows at least `min_written` writes.
    pub fn fresh_disk(&self, since_ms: u64, min_written: u64) -> DiskState {
        poll("a fresh agent heartbeat", DEADLINE, || {
            let d = self.disk()?;
            let ok = d.agent_seen_ms >= since_ms + HEARTBEAT_MS && d.written >= min_written;
            ok.then_some(d.clone()).ok_or_else(|| {
                format!(
                    "{d:?}, want seen >= {} and written >= {min_written}",
                    since_ms + HEARTBEAT_MS
                )
            })
        })
    }

    /// Waits until everything written is cached and applied; returns seq_written.
    pub fn wait_applied(&self) -> u64 {
        let since = wall_ms();
        let d = poll("applied == written", DEADLINE, || {
            let d = self.disk()?;
            let done = d.agent_seen_ms >= since + HEARTBEAT_MS
                && d.connected
                && d.cached == d.written
                && d.applied == d.written
                && d.replica_applied == d.written;
            done.then_some(d.clone()).ok_or_else(|| format!("{d:?}"))
        });
        assert!(
            d.inconsistent.is_null(),
            "replica marked inconsistent: {}",
            d.inconsistent
        );
        d.written
    }

    pub fn points(&self) -> Result<Vec<u64>, String> {
        let out = self.haven(&["points", DISK, "--json"])?;
        let v: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("points JSON: {e}"))?;
        let list = v.as_array().ok_or("points is not a list")?;
        list.iter()
            .map(|p| p["seq"].as_u64().ok_or_else(|| format!("bad point {p}")))
            .collect()
    }

    /// `haven export --point POINT`: the seq it chose and the image.
    pub fn export(&self, point: &str) -> (u64, Vec<u8>) {
        let file = self.dir.join("export.img");
        let out_arg = file.to_str().expect("utf-8 path");
        let out = self
            .haven(&["export", DISK, "--point", point, "--out", out_arg])
            .expect("export");
        let seq = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("export prints the seq");
        let bytes = std::fs::read(&file).expect("read export");
        std::fs::remove_file(&file).expect("remove export");
        (seq, bytes)
    }

    /// The agent's backing file (the protected disk itself).
    pub fn source(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("disk0.img")).expect("read source disk")
    }

    /// Runs qemu-io with `cmds` against the NBD export; (success, combined output). Its output
    /// is read once it exits, so keep to a few hundred commands per call (a pipe holds 64 KiB:
    /// about 600 writes' worth of qemu-io's messages, past which it blocks).
    pub fn qemu_io(&self, cmds: &[String]) -> (bool, String) {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for c in cmds {
            cmd.args(["-c", c]);
        }
        let mut child = cmd
            .arg(&self.nbd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        self.qemu_running.store(true, SeqCst);
        let step = Duration::from_millis(5);
        poll_every(step, "qemu-io to finish", DEADLINE, || {
            child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or("running".into())
        });
        self.qemu_running.store(false, SeqCst);
        let out = child.wait_with_output().expect("qemu-io output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success() && !text.contains("failed"), text)
    }

    /// Runs one round of ops, updates the model and closes the round at the seq the agent
    /// reports for it; returns that seq.
    pub fn run_round(&self, model: &mut Model, ops: &[Op]) -> u64 {
        let cmds: Vec<String> = ops.iter().map(Op::command).collect();
        let (ok, text) = self.qemu_io(&cmds);
        assert!(ok, "qemu-io {cmds:?} failed:\n{text}");
        let exited = wall_ms();
        model.apply(ops);
        let prev = model.rounds.last().map_or(0, |r| r.seq);
        // Every command that writes the disk takes at least one seq.
        let writes = ops.iter().filter(|op| op.takes_seq()).count() as u64;
        let seq = self.fresh_disk(exited, prev + writes).written;
        model.end_round(seq);
        seq
    }
}

/// One workload command, as qemu-io runs it and as the model applies it: (offset, length,
/// pattern); `Sleep` pauses qemu-io with its connection open and its writes not yet flushed.
/// `AioWrite`s are submitted without waiting, so several are in flight on the NBD connection
/// at once; `AioFlush` waits for them all; `Flush` sends an NBD flush.
#[derive(Clone, Debug)]
pub enum Op {
    Write(u64, u64, u8),
    AioWrite(u64, u64, u8),
    Zero(u64, u64),
    Discard(u64, u64),
    AioFlush,
    Flush,
    Sleep(u64),
}

impl Op {
    pub fn command(&self) -> String {
        match *self {
            Op::Write(off, len, pat) => format!("write -P {pat:#04x} {off} {len}"),
            Op::AioWrite(off, len, pat) => format!("aio_write -P {pat:#04x} {off} {len}"),
            Op::Zero(off, len) => format!("write -z {off} {len}"),
            Op::Discard(off, len) => format!("discard {off} {len}"),
            Op::AioFlush => "aio_flush".into(),
            Op::Flush => "flush".into(),
            Op::Sleep(ms) => format!("sleep {ms}"),
        }
    }

    /// True for a command that writes the disk: the agent gives it one seq, in the order the
    /// commands reach it (qemu sends in-flight requests in submission order).
    pub fn takes_seq(&self) -> bool {
        !matches!(self, Op::Sleep(_) | Op::AioFlush | Op::Flush)
    }

    pub fn apply(&self, disk: &mut [u8]) {
        let (off, len, fill) = match *self {
            Op::Write(off, len, pat) | Op::AioWrite(off, len, pat) => (off, len, pat),
            // The agent punches holes for discards: they read back as zeros.
            Op::Zero(off, len) | Op::Discard(off, len) => (off, len, 0),
            Op::Sleep(_) | Op::AioFlush | Op::Flush => return,
        };
        disk[off as usize..(off + len) as usize].fill(fill);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// seq_written after the round's qemu-io exited.
    pub seq: u64,
    ops: usize,
}

/// The disk as the workload wrote it, with the history of rounds.
pub struct Model {
    pub bytes: Vec<u8>,
    ops: Vec<Op>,
    pub rounds: Vec<Round>,
}

impl Model {
    pub fn new() -> Model {
        Model {
            bytes: vec![0; DISK_BYTES as usize],
            ops: vec![],
            rounds: vec![],
        }
    }

    pub fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            op.apply(&mut self.bytes);
            self.ops.push(op.clone());
        }
    }

    pub fn end_round(&mut self, seq: u64) {
        self.rounds.push(Round {
            seq,
            ops: self.ops.len(),
        });
    }

    /// The disk as it was right after write `seq` (at `start_seq`: before the first round), when
    /// the seqs of that write's round can be told apart: each qemu-io command is one NBD request and takes one seq, in order, so a
    /// round whose seq span equals its number of commands maps seq to command exactly. None for
    /// a seq outside the rounds or in a round whose span differs (then the mapping is unknown).
    pub fn at_seq(&self, seq: u64, start_seq: u64) -> Option<Vec<u8>> {
        let r = self.rounds.iter().position(|r| r.seq >= seq)?;
        if r == 0 && seq == start_seq && seq > 0 {
            // The point the initial copy ended at (`Cluster::start` waits for it): the disk
            // before the first round, all zeros.
            return Some(vec![0; DISK_BYTES as usize]);
        }
        let (prev_seq, prev_ops) = match r {
            0 => (start_seq, 0),
            _ => (self.rounds[r - 1].seq, self.rounds[r - 1].ops),
        };
        if seq <= prev_seq {
            return None;
        }
        let round_ops = &self.ops[prev_ops..self.rounds[r].ops];
        let io: Vec<usize> = (0..round_ops.len())
            .filter(|i| round_ops[*i].takes_seq())
            .collect();
        if io.len() as u64 != self.rounds[r].seq - prev_seq {
            return None;
        }
        let upto = prev_ops + io[(seq - prev_seq - 1) as usize] + 1;
        let mut disk = vec![0; DISK_BYTES as usize];
        self.ops[..upto].iter().for_each(|op| op.apply(&mut disk));
        Some(disk)
    }

    /// The disk as it was at the end of round `i` (replayed, so no snapshot is stored).
    pub fn at_round(&self, i: usize) -> Vec<u8> {
        let mut disk = vec![0; DISK_BYTES as usize];
        self.ops[..self.rounds[i].ops]
            .iter()
            .for_each(|op| op.apply(&mut disk));
        disk
    }
}

/// xorshift64*: a deterministic workload without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One round of writes spread over the disk: patterned writes, an unaligned overwrite, an
/// unaligned small write, aligned and unaligned discards over written data, zeroing, two
/// consecutive overlapping writes, two overlapping writes in flight together, and flushes.
pub fn gen_round(rng: &mut Rng, round: usize) -> Vec<Op> {
    const B: u64 = 4096;
    let pat = |i: usize| (1 + (round * 13 + i) % 254) as u8;
    let mut spot = || {
        (
            rng.below(DISK_BYTES / B - 300) * B,
            (1 + rng.below(256)) * B,
        )
    };
    let w = [spot(), spot(), spot()];
    let (o, l) = spot();
    let mut ops: Vec<Op> = (0..3).map(|i| Op::Write(w[i].0, w[i].1, pat(i))).collect();
    ops.push(Op::Write(
        w[0].0 + w[0].1 / 2 + 7,
        w[0].1 / 2 + 1000,
        pat(3),
    ));
    let small = rng.below(DISK_BYTES / B - 2) * B + 4097;
    ops.push(Op::Write(
        if round == 0 { 4097 } else { small },
        3000,
        pat(4),
    ));
    ops.push(Op::Discard(w[1].0 + B, (w[1].1 / 2 / B).max(1) * B));
    ops.push(Op::Discard(w[2].0 + 100, 5000));
    ops.push(Op::Zero(w[2].0 + 2 * B, (1 + rng.below(32)) * B));
    if round == 1 {
        // The last bytes of the disk, unaligned start.
        ops.push(Op::Write(DISK_BYTES - B - 333, B + 333, pat(5)));
    }
    // Order matters from here: each write lands on part of the one before it, so a swap
    // anywhere on the path shows as a byte difference.
    ops.push(Op::Write(o, l, pat(6)));
    ops.push(Op::Write(o + l / 3 + 5, l / 2, pat(7)));
    ops.push(Op::Flush);
    ops.push(Op::AioWrite(o + 1000, 6000, pat(8)));
    ops.push(Op::AioWrite(o + 3000, 9000, pat(9)));
    ops.push(Op::AioWrite(o, 4096, pat(10)));
    ops.push(Op::AioFlush);
    ops.push(Op::Flush);
    ops
}

/// Sends `bytes` (then half-closes if `eof`) and reads until the peer closes; panics if the
/// connection is still open after `within`. Returns what the peer sent.
pub fn send_expect_close(addr: &str, bytes: &[u8], eof: bool, within: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(within)).expect("read timeout");
    let _ = s.write_all(bytes); // the peer may already have closed: that is fine
    if eof {
        let _ = s.shutdown(Shutdown::Write);
    }
    let (end, mut got) = (Instant::now() + within, vec![]);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "{addr}: connection still open after {within:?} ({e}); received {} bytes",
                got.len()
            ),
        }
        assert!(
            Instant::now() < end,
            "{addr}: connection still open after {within:?}"
        );
    }
}
