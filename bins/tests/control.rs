//! The control plane with real processes: commands from the console, and the configuration
//! server killed (SIGKILL) in the middle of one. Needs qemu-io (see e2e.rs).

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn disk0(api: &Api) -> Result<Value, String> {
    let v = api.status()?;
    v["disks"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["disk"] == "disk0").cloned())
        .ok_or_else(|| format!("no disk0 in {v}"))
}

/// The console's answer to a command: Ok(stdout) or Err(stderr).
fn console(api: &Api, args: &[&str]) -> Result<String, String> {
    api.haven(args)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn config_server_killed_mid_protect_keeps_a_whole_state_and_replication_goes_on() {
    if !have_qemu_io() {
        return;
    }
    let mut c = Cluster::start(
        tempfile::Builder::new()
            .prefix("haven-control-")
            .tempdir()
            .expect("temp dir"),
    );
    let (mut model, mut rng) = (Model::new(), Rng(0x5eed_00c5));
    c.api.run_round(&mut model, &gen_round(&mut rng, 0));
    c.api.wait_applied();

    // Refusals say why and change nothing.
    let e = console(&c.api, &["protect", "disk0"]).unwrap_err();
    assert!(e.contains("AGENT/DISK"), "{e}");
    let e = console(&c.api, &["protect", "agent9/disk0"]).unwrap_err();
    assert!(e.contains("HTTP 404") && e.contains("agent9"), "{e}");
    let e = console(&c.api, &["settings", "disk0", "batch_delay=0"]).unwrap_err();
    assert!(e.contains("HTTP 400") && e.contains("out of range"), "{e}");
    let e = console(&c.api, &["unprotect", "disk9"]).unwrap_err();
    assert!(e.contains("HTTP 404"), "{e}");

    // A setting that was answered is durable.
    let out = console(&c.api, &["settings", "disk0", "rpo_threshold=5m"]).expect("settings");
    assert!(out.contains("300000"), "{out}");
    let out = console(&c.api, &["unprotect", "disk0"]).expect("unprotect");
    assert!(out.contains("unprotected"), "{out}");
    poll("the replica to be removed", DEADLINE, || {
        let d = disk0(&c.api)?;
        (d["state"] == "unprotected" && d["master_target"].is_null())
            .then_some(())
            .ok_or_else(|| d.to_string())
    });
    // The disk keeps serving its workload while unprotected (and assigns no seqs).
    let ops = gen_round(&mut rng, 1);
    let cmds: Vec<String> = ops.iter().map(Op::command).collect();
    let (ok, text) = c.api.qemu_io(&cmds);
    assert!(ok, "qemu-io on an unprotected disk failed: {text}");
    model.apply(&ops);
    let d = disk0(&c.api).expect("disk0");
    assert_eq!(d["source"]["mode"], "unprotected", "{d}");

    // `protect` in flight when the configuration server dies.
    let agent = disk0(&c.api).expect("disk0")["agent"]
        .as_str()
        .expect("agent id")
        .to_string();
    let target = format!("{agent}/disk0");
    let api = c.api.clone();
    let cmd = std::thread::spawn(move || console(&api, &["protect", &target]));
    std::thread::sleep(Duration::from_millis(wall_ms() % 25));
    c.kill(Daemon::ConfigServer);
    let answer = cmd.join().expect("console thread");
    c.restart(Daemon::ConfigServer);
    let d = poll("the configuration server back", DEADLINE, || disk0(&c.api));
    assert_eq!(
        d["policy"]["rpo_threshold_ms"], 300_000,
        "answered setting lost: {d}"
    );
    eprintln!(
        "after the kill disk0 is {} (console said {answer:?})",
        d["state"]
    );
    match d["state"].as_str() {
        Some("protected") => {
            assert_eq!(d["epoch"], 2, "a new protection has a new epoch: {d}");
            assert!(
                d["process_server"].is_string() && d["master_target"].is_string(),
                "{d}"
            );
        }
        Some("unprotected") => {
            assert!(
                answer.is_err(),
                "protect was answered but is not durable: {answer:?}"
            );
            assert_eq!(d["epoch"], 1, "half a protection: {d}");
            assert!(
                d["process_server"].is_null() && d["master_target"].is_null(),
                "{d}"
            );
            let out = console(&c.api, &["protect", &format!("{agent}/disk0")]).expect("protect");
            assert!(out.contains("protected"), "{out}");
        }
        other => panic!("disk0 is {other:?}: {d}"),
    }
    // Replication goes on: the disk is copied anew and every later write replicated.
    c.wait_assigned();
    c.api.wait_applied();
    c.api.run_round(&mut model, &gen_round(&mut rng, 2));
    let written = c.api.wait_applied();
    let (seq, img) = c.api.export("latest");
    assert_eq!(seq, written);
    assert_same("latest export vs model", &img, &model.bytes);
    assert_same("latest export vs source", &img, &c.api.source());
    // The new replica saw a gap before its first seq (the stream's seqs go on); the copy that
    // followed it makes it consistent, and the status says so.
    poll("the new replica to be consistent", DEADLINE, || {
        let d = disk0(&c.api)?;
        (d["replica"].is_object() && d["replica"]["inconsistent"].is_null())
            .then_some(())
            .ok_or_else(|| d.to_string())
    });
    c.assert_alive();
}

/// `haven export ... 2>&1 | head -1`: the reader of the progress goes away at once. The export
/// must still write the whole image (it once died at its first progress report after 64 MiB
/// and left a full-size file of zeros from there on at `--out`).
#[test]
fn an_export_whose_progress_reader_goes_away_still_writes_the_whole_image() {
    if !have_qemu_io() {
        return;
    }
    let c = Cluster::start(
        tempfile::Builder::new()
            .prefix("haven-export-")
            .tempdir()
            .expect("temp dir"),
    );
    let (mut model, mut rng) = (Model::new(), Rng(0x5eed_e1f0));
    c.api.run_round(&mut model, &gen_round(&mut rng, 0));
    c.api.wait_applied();
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = out_dir.path().join("r.img");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["export", "disk0", "--point", "latest", "--api", &c.api.api])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn haven export");
    drop(child.stderr.take());
    let status = child.wait().expect("wait for haven export");
    assert!(status.success(), "haven export: {status}");
    let img = std::fs::read(&out).expect("the export's image");
    assert_same("export vs model", &img, &model.bytes);
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("r.img")],
        "no partial file left"
    );
}
