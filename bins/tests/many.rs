//! Many of everything, as separate processes: one configuration server, two process servers,
//! two master targets and two agents with two disks each. Placement must spread the four disks
//! (two per process server, two per master target), and every replica must end byte-equal to
//! its source after writes to all four disks at once.
//!
//! Needs qemu-io (Debian's qemu-utils); without it the test fails saying so.

mod common;

use common::{assert_same, have_qemu_io, poll, Api, Rng, DEADLINE};
use serde_json::Value;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const DISK_SIZE: &str = "16M";
const DISK_BYTES: u64 = 16 << 20;
const AGENTS: [&str; 2] = ["agent1", "agent2"];

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The daemons of the test; dropping it kills them (and prints their logs on failure).
struct Site {
    dir: PathBuf,
    api: String,
    children: Vec<(String, Child)>,
    nbd: Vec<(String, u16)>,
    _tmp: tempfile::TempDir,
}

impl Site {
    fn spawn(&mut self, name: &str, role: &str, toml: String) {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml).expect("write config");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args([role, "--config"])
            .arg(&path)
            .env("HAVEN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn haven");
        self.children.push((name.to_string(), child));
    }

    /// The console of this site (`common::Api`: its status tolerates the unhealthy exit codes).
    fn console(&self) -> Api {
        Api::new(&self.api, "", &self.dir)
    }

    fn status(&self) -> Result<Value, String> {
        self.console().status()
    }

    fn wait_online(&self, n: usize) {
        poll(&format!("{n} components online"), DEADLINE, || {
            let s = self.status()?;
            let online = s["components"]
                .as_array()
                .map_or(0, |c| c.iter().filter(|c| c["online"] == true).count());
            (online == n)
                .then_some(())
                .ok_or(format!("{online} online"))
        })
    }

    fn source(&self, agent: &str, disk: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(agent).join(format!("{disk}.img"))).expect("source")
    }

    fn export_latest(&self, disk: &str) -> Vec<u8> {
        let out = self.dir.join(format!("{disk}.export"));
        let _ = std::fs::remove_file(&out);
        let path = out.to_str().expect("utf-8");
        self.console()
            .haven(&["export", disk, "--point", "latest", "--out", path])
            .expect("export");
        std::fs::read(&out).expect("read export")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for (name, _) in &self.children {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("---- {name} log (last lines) ----");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

fn disk_ids(agent: &str) -> [String; 2] {
    [format!("{agent}-d0"), format!("{agent}-d1")]
}

/// Starts the configuration server, the process servers and master targets (and waits for
/// them, so that placement has both of each to choose from), then the agents.
fn start() -> Site {
    let tmp = tempfile::Builder::new()
        .prefix("haven-many-")
        .tempdir()
        .expect("tmp");
    let dir = tmp.path().to_path_buf();
    let (cs, cs_api) = (port(), port());
    let mut site = Site {
        dir: dir.clone(),
        api: format!("http://127.0.0.1:{cs_api}"),
        children: vec![],
        nbd: vec![],
        _tmp: tmp,
    };
    let d = dir.display();
    let common = format!(
        "config_server = \"127.0.0.1:{cs}\"\nheartbeat_interval_ms = 100\nreconnect_delay_ms = 100"
    );
    site.spawn(
        "cs",
        "config-server",
        format!("data_dir = \"{d}/cs\"\nlisten = \"127.0.0.1:{cs}\"\napi_listen = \"127.0.0.1:{cs_api}\"\n"),
    );
    for ps in ["ps1", "ps2"] {
        let toml = format!(
            "id = \"{ps}\"\n{common}\ndata_dir = \"{d}/{ps}\"\nlisten = \"127.0.0.1:{}\"\ncache_bytes_max = \"256M\"\n",
            port()
        );
        site.spawn(ps, "process-server", toml);
    }
    for mt in ["mt1", "mt2"] {
        let toml = format!(
            "id = \"{mt}\"\n{common}\ndata_dir = \"{d}/{mt}\"\nlisten = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\n",
            port(),
            port()
        );
        site.spawn(mt, "master-target", toml);
    }
    site.wait_online(4);
    for agent in AGENTS {
        let nbd = port();
        let mut toml = format!(
            "id = \"{agent}\"\n{common}\ndata_dir = \"{d}/{agent}/state\"\nnbd_listen = \"127.0.0.1:{nbd}\"\n"
        );
        for disk in disk_ids(agent) {
            toml.push_str(&format!(
                "\n[[disk]]\nid = \"{disk}\"\npath = \"{d}/{agent}/{disk}.img\"\ncreate_size = \"{DISK_SIZE}\"\n"
            ));
            site.nbd.push((disk, nbd));
        }
        site.spawn(agent, "agent", toml);
    }
    site
}

/// qemu-io commands of one round for one disk: writes of a pattern at random places,
/// some overlapping, some unaligned, and a zeroed range over written data.
fn round_cmds(rng: &mut Rng, pattern: u8) -> Vec<String> {
    let mut cmds = vec![];
    for _ in 0..12 {
        let len = 512 * (1 + rng.below(256));
        let off = rng.below(DISK_BYTES - len);
        cmds.push(format!("write -P {pattern} {off} {len}"));
    }
    let off = rng.below(DISK_BYTES / 2) / 512 * 512;
    cmds.push(format!("write -z {off} 65536"));
    cmds
}

fn qemu_io(nbd: &str, cmds: &[String]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(nbd).output().expect("run qemu-io");
    assert!(
        out.status.success(),
        "qemu-io on {nbd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every disk replicated, caught up and consistent.
fn wait_caught_up(site: &Site) {
    poll("all four replicas caught up", DEADLINE, || {
        let s = site.status()?;
        let disks = s["disks"].as_array().ok_or("no disks")?;
        if disks.len() != 4 {
            return Err(format!("{} disks", disks.len()));
        }
        for d in disks {
            let (src, rep) = (&d["source"], &d["replica"]);
            let written = src["seq_written"].as_u64().ok_or("no source")?;
            let done = src["connected"] == true
                && src["mode"] == "data"
                && written > 0
                && rep["applied_seq"].as_u64() == Some(written)
                && rep["inconsistent"].is_null();
            if !done {
                return Err(format!("{}: {src} / {rep}", d["disk"]));
            }
        }
        Ok(())
    })
}

#[test]
fn two_agents_two_disks_each_two_process_servers_two_master_targets() {
    have_qemu_io();
    let site = start();
    site.wait_online(6);
    // Placement: two disks on each process server and each master target.
    let placed = poll("all four disks placed", DEADLINE, || {
        let s = site.status()?;
        let disks = s["disks"].as_array().cloned().unwrap_or_default();
        let all = disks.len() == 4
            && disks
                .iter()
                .all(|d| d["process_server"].is_string() && d["master_target"].is_string());
        let n = disks.len();
        all.then_some(disks).ok_or(format!("{n} disks"))
    });
    for (key, ids) in [
        ("process_server", ["ps1", "ps2"]),
        ("master_target", ["mt1", "mt2"]),
    ] {
        for id in ids {
            let n = placed.iter().filter(|d| d[key] == id).count();
            assert_eq!(n, 2, "{id} serves {n} of 4 disks: {placed:?}");
        }
    }
    // Writes to all four disks at once, three rounds.
    let mut rng = Rng(0x5eed_0f4a_1100);
    for round in 0..3u8 {
        let jobs: Vec<_> = site
            .nbd
            .iter()
            .enumerate()
            .map(|(i, (disk, port))| {
                let cmds = round_cmds(&mut rng, 0x10 + round * 16 + i as u8);
                let uri = format!("nbd://127.0.0.1:{port}/{disk}");
                std::thread::spawn(move || qemu_io(&uri, &cmds))
            })
            .collect();
        for j in jobs {
            j.join().expect("writer");
        }
    }
    wait_caught_up(&site);
    for agent in AGENTS {
        for disk in disk_ids(agent) {
            let src = site.source(agent, &disk);
            assert!(src.iter().any(|b| *b != 0), "{disk} was written");
            assert_same(
                &format!("{disk}: latest export vs source"),
                &site.export_latest(&disk),
                &src,
            );
        }
    }
    // The disks differ from each other, so a replica mixed up with another would show.
    let a = site.source("agent1", "agent1-d0");
    let b = site.source("agent2", "agent2-d1");
    assert_ne!(a, b);
}
