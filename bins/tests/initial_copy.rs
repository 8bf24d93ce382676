//! The initial copy of a disk that holds data, with the workload writing all over it while the
//! copy runs: the replica must end equal to the source, every write kept.
//!
//! Found a bug (fixed with the initial copy moved into the agent's core): the driver held the
//! last chunk it had read until it found the next one with data, and fed it later under a later
//! seq, so a write made meanwhile to that chunk was overwritten on the replica by the chunk's
//! old data. Checked 2026-12-03 against the old driver (commit d514f2c): this test failed 2 runs
//! of 3 ("the latest export vs the model: first difference at byte 24117248 (got 0x00, want
//! 0x10); 8192 bytes differ": the replica held the prefill where a write had been), while the
//! source disk equalled the model.

mod common;

use common::*;
use std::thread;

/// A whole disk of data: every 4 KiB block carries its own number.
fn prefill() -> Vec<u8> {
    let mut img = vec![0u8; DISK_BYTES as usize];
    for (i, block) in img.chunks_mut(4096).enumerate() {
        block.fill((i % 251) as u8 + 1);
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    img
}

#[test]
fn a_disk_written_during_its_initial_copy_is_replicated_exactly() {
    if !have_qemu_io() {
        return;
    }
    let image = prefill();
    // A small buffer keeps the copy going for as long as the workload writes: it reads four
    // chunks ahead of what the process server has cached. The process server and master target
    // start later, so that the writes and the copy run together from the start.
    let extra = "batch_bytes_max = \"1M\"\nbuffer_bytes_max = \"4M\"";
    let tmp = tempfile::Builder::new()
        .prefix("haven-copy-")
        .tempdir()
        .unwrap();
    let mut c = Cluster::start_with(
        tmp,
        Some(&image),
        extra,
        &[Daemon::ConfigServer, Daemon::Agent],
    );
    let mut rng = Rng(0xc0_91e5);
    let writes: Vec<Op> = (0..1500)
        .map(|i| {
            let off = rng.below(DISK_BYTES / 4096 - 4) * 4096;
            Op::Write(off, 4096 * (1 + rng.below(4)), (i % 250) as u8 + 3)
        })
        .collect();
    let api = c.api.clone();
    let cmds: Vec<String> = writes.iter().map(Op::command).collect();
    poll("the agent's NBD export", DEADLINE, || {
        let (ok, text) = api.qemu_io(&["read 0 512".into()]);
        ok.then_some(()).ok_or(text)
    });
    let workload = thread::spawn(move || {
        for part in cmds.chunks(300) {
            let (ok, text) = api.qemu_io(part);
            if !ok {
                return (ok, text);
            }
        }
        (true, String::new())
    });
    thread::sleep(std::time::Duration::from_millis(200));
    c.spawn(Daemon::ProcessServer);
    c.spawn(Daemon::MasterTarget);
    let (ok, text) = workload.join().expect("workload thread");
    assert!(ok, "qemu-io failed: {text}");
    let mut model = image;
    for op in &writes {
        op.apply(&mut model);
    }
    c.wait_assigned();
    let seq = c.api.wait_applied();
    assert_same("the source disk vs the model", &c.api.source(), &model);
    let (got_seq, img) = c.api.export("latest");
    assert_eq!(got_seq, seq);
    assert_same("the latest export vs the model", &img, &model);
}
