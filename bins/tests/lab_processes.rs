//! `haven lab --processes` with real faults: while a qemu-io loop writes, each of the four
//! children is killed (SIGKILL) in turn through the pid lab.env names; the lab restarts it and
//! rewrites lab.env; at the end the latest recovery point equals the agent's disk, and stopping
//! the lab (SIGTERM) leaves no child behind. Needs qemu-io (see e2e.rs).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// lab.env's pid variables, in the order the test kills them.
const VICTIMS: [&str; 4] = [
    "HAVEN_PID_PROCESS_SERVER",
    "HAVEN_PID_MASTER_TARGET",
    "HAVEN_PID_CONFIG_SERVER",
    "HAVEN_PID_AGENT",
];

/// `haven lab --processes`; dropping it stops the lab (and prints its output and the children's
/// logs if the test failed).
struct Lab {
    child: Option<Child>,
    dir: PathBuf,
    out: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn start() -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix("haven-lab-processes-")
            .tempdir()
            .expect("temp dir");
        let (dir, out) = (tmp.path().join("lab"), tmp.path().join("lab.out"));
        let log = std::fs::File::create(&out).expect("lab output file");
        let child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args([
                "lab",
                "--processes",
                "--disk-size",
                "64M",
                "--status-interval",
                "1",
            ])
            .arg("--dir")
            .arg(&dir)
            .env("HAVEN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn haven lab");
        Lab {
            child: Some(child),
            dir,
            out,
            _tmp: tmp,
        }
    }

    /// lab.env as KEY -> value.
    fn env(&self) -> Result<BTreeMap<String, String>, String> {
        let text = std::fs::read_to_string(self.dir.join("lab.env")).map_err(|e| e.to_string())?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The pid lab.env names for `var` (empty while that child is down).
    fn pid(&self, var: &str) -> Result<u32, String> {
        let env = self.env()?;
        let v = env.get(var).ok_or_else(|| format!("no {var} in {env:?}"))?;
        v.parse().map_err(|_| format!("{var}={v:?}"))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// SIGTERM, as a service manager or Ctrl-C would; the lab's exit status.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("lab running");
        signal(child.id(), libc::SIGTERM);
        poll(
            "the lab to exit after SIGTERM",
            Duration::from_secs(20),
            || {
                child
                    .try_wait()
                    .map_err(|e| e.to_string())?
                    .ok_or("running".into())
            },
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- haven lab output ----\n{}", self.output());
            for role in ["config-server", "process-server", "master-target", "agent"] {
                let log = std::fs::read_to_string(self.dir.join(format!("logs/{role}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("---- {role} log (last lines) ----");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes no pointers.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// What the writer and the test share.
#[derive(Default)]
struct Progress {
    ok_rounds: AtomicUsize,
    failed_rounds: AtomicUsize,
    stop: AtomicBool,
}

impl Progress {
    /// Waits until the writer has completed a round it started after this call.
    fn wait_a_new_round(&self) {
        let after = self.ok_rounds.load(SeqCst) + 1;
        poll("the writer to complete a round", DEADLINE, || {
            let n = self.ok_rounds.load(SeqCst);
            (n > after)
                .then_some(())
                .ok_or_else(|| format!("{n} rounds done"))
        });
    }
}

/// Rounds of writes through qemu-io (a new process each round) until told to stop. A round
/// cut by the agent's death fails; the next one connects again.
fn writer(api: &Api, p: &Progress, seed: u64) {
    let mut rng = Rng(seed);
    let mut round = 0;
    while !p.stop.load(SeqCst) {
        let cmds: Vec<String> = gen_round(&mut rng, round).iter().map(Op::command).collect();
        round += 1;
        if api.qemu_io(&cmds).0 {
            p.ok_rounds.fetch_add(1, SeqCst);
        } else {
            p.failed_rounds.fetch_add(1, SeqCst);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until everything the agent wrote is cached and applied to the replica.
fn wait_caught_up(api: &Api) -> DiskState {
    let since = wall_ms();
    poll("applied == written", DEADLINE, || {
        let d = api.disk()?;
        // The lab's heartbeat is 1 s: a status at least that fresh reflects the last writes.
        let done = d.agent_seen_ms >= since + 1000
            && d.connected
            && d.cached == d.written
            && d.applied == d.written
            && d.replica_applied == d.written;
        done.then_some(d.clone()).ok_or_else(|| format!("{d:?}"))
    })
}

fn wait_protected(api: &Api) {
    poll("disk0 protected, copied and consistent", DEADLINE, || {
        let v = api.status()?;
        let d = v["disks"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["disk"] == DISK))
            .ok_or("disk0 not protected yet")?;
        let ok = d["state"] == "protected"
            && d["source"]["mode"] == "data"
            && d["source"]["connected"] == true
            && d["replica"].is_object()
            && d["replica"]["inconsistent"].is_null();
        ok.then_some(()).ok_or_else(|| d.to_string())
    })
}

/// Kills each child named by `victims` (SIGKILL) while the writer runs, checks that the lab
/// restarts it and says so, and stops the writer once a round has gone through them all;
/// returns (rounds written, rounds cut by a kill).
fn kill_in_turn(lab: &Lab, api: &Api, victims: &[&str], seed: u64) -> (usize, usize) {
    let p = Progress::default();
    std::thread::scope(|s| {
        let w = s.spawn(|| writer(api, &p, seed));
        for var in victims {
            p.wait_a_new_round();
            let old = lab.pid(var).expect("pid in lab.env");
            assert!(signal(old, libc::SIGKILL), "kill -9 {old} ({var})");
            let new = poll(
                &format!("lab.env to name a new {var}"),
                DEADLINE,
                || match lab.pid(var) {
                    Ok(pid) if pid != old => Ok(pid),
                    other => Err(format!("{other:?}")),
                },
            );
            let said = format!("(pid {old}) exited (signal 9); restarting in 1 s");
            assert!(lab.output().contains(&said), "the lab did not say {said:?}");
            eprintln!("{var}: {old} killed, {new} started");
        }
        // Writes go on through every restarted child.
        p.wait_a_new_round();
        p.stop.store(true, SeqCst);
        w.join().expect("writer panicked");
    });
    (p.ok_rounds.load(SeqCst), p.failed_rounds.load(SeqCst))
}

/// Waits for replication to catch up and exports the latest point: (status, whether the export
/// equals the agent's disk0.img, the export).
fn export_latest(api: &Api) -> (DiskState, Vec<u8>) {
    let d = wait_caught_up(api);
    let (seq, img) = api.export("latest");
    assert_eq!(seq, d.written, "the latest point is not the last write");
    (d, img)
}

/// `haven unprotect` then `haven protect`: a new protection copies the disk anew, which is what
/// an operator does for a replica marked inconsistent.
fn protect_again(api: &Api) {
    api.haven(&["unprotect", DISK]).expect("unprotect");
    poll("the replica to be removed", DEADLINE, || {
        let v = api.status()?;
        let gone = v["disks"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["disk"] == DISK))
            .is_some_and(|d| d["state"] == "unprotected" && d["master_target"].is_null());
        gone.then_some(()).ok_or_else(|| v["disks"].to_string())
    });
    api.haven(&["protect", &format!("lab-agent/{DISK}")])
        .expect("protect");
    wait_protected(api);
}

#[test]
fn lab_processes_restarts_each_killed_child_and_the_latest_export_equals_the_source() {
    if !have_qemu_io() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::start();
    let env = poll("lab.env with the four pids", DEADLINE, || {
        VICTIMS.iter().try_for_each(|v| lab.pid(v).map(|_| ()))?;
        lab.env()
    });
    let api = Api::new(&env["HAVEN_API"], &env["HAVEN_NBD_URI"], &lab.dir);
    wait_protected(&api);

    // The three servers: nothing acknowledged is lost, and the replica stays consistent.
    let (ok1, cut1) = kill_in_turn(&lab, &api, &VICTIMS[..3], 0x5eed_1ab5);
    let (d, img) = export_latest(&api);
    assert!(
        d.inconsistent.is_null(),
        "replica marked inconsistent: {}",
        d.inconsistent
    );
    assert_same(
        "latest export vs the agent's disk0.img",
        &img,
        &api.source(),
    );

    // The agent. Its restart skips the rest of its seq reservation, which the master target
    // reports as lost writes; and a SIGKILL does lose the writes it had completed but not yet
    // handed to the process server (they are on disk0.img, in no batch). Haven must say so, and
    // the operator's remedy, a new protection, must bring the replica back to the source.
    let (ok2, cut2) = kill_in_turn(&lab, &api, &VICTIMS[3..], 0x5eed_1ab6);
    let (d, img) = export_latest(&api);
    assert!(
        !d.inconsistent.is_null(),
        "the agent's restart skipped seqs but the replica is not marked inconsistent"
    );
    let source = api.source();
    if img != source {
        let n = img.iter().zip(&source).filter(|(a, b)| a != b).count();
        eprintln!(
            "KNOWN LIMITATION: after the agent's SIGKILL the latest export differs from \
             disk0.img in {n} bytes (replica: {}); protecting the disk again",
            d.inconsistent
        );
        protect_again(&api);
        let (d, img) = export_latest(&api);
        assert!(
            d.inconsistent.is_null(),
            "after a new protection: {}",
            d.inconsistent
        );
        assert_same(
            "latest export after a new protection vs disk0.img",
            &img,
            &api.source(),
        );
    }

    let pids: Vec<u32> = VICTIMS.iter().map(|v| lab.pid(v).expect("pid")).collect();
    let status = lab.stop();
    assert!(status.success(), "haven lab exited with {status}");
    let left: Vec<u32> = pids.into_iter().filter(|&pid| signal(pid, 0)).collect();
    assert!(
        left.is_empty(),
        "children still running after the lab stopped: {left:?}"
    );
    assert!(
        !lab.env()
            .expect("lab.env")
            .keys()
            .any(|k| k.starts_with("HAVEN_PID_")),
        "lab.env still names pids after the lab stopped"
    );
    eprintln!(
        "lab_processes: {} rounds written, {} cut by a kill, {:?}",
        ok1 + ok2,
        cut1 + cut2,
        started.elapsed()
    );
}
