//! End-to-end tests: the four `haven` daemons as separate processes on loopback, qemu-io as the
//! workload on the agent's NBD export, and every check a byte-for-byte comparison of exported
//! recovery points with a model of the disk and with the agent's backing file.
//!
//! They need qemu-io (Debian's qemu-utils); without it they fail with a message saying so.

mod common;
#[path = "common/http_checks.rs"]
mod http_checks;

use http_checks::{check_every_point, check_image_ranges, check_metrics};

use common::*;
use haven_core::ids::{ComponentId, Epoch};
use haven_core::protocol::{
    decode, decode_body, encode, parse_header, Hello, Message, Role, FRAME_HEADER_BYTES,
    PROTOCOL_VERSION,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// How long a daemon may take to close a connection it must refuse (well under the 10 s
/// handshake timeout, so a close is a refusal, not a timeout).
const REFUSE_WITHIN: Duration = Duration::from_secs(5);

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("haven-e2e-")
        .tempdir()
        .expect("temp dir")
}

/// Waits for replication, then checks `latest` against the model and the source disk.
fn check_latest(api: &Api, model: &Model) {
    let written = api.wait_applied();
    assert_eq!(
        written,
        model.rounds.last().expect("a round").seq,
        "seq_written moved after the last round"
    );
    let (seq, img) = api.export("latest");
    assert_eq!(seq, written, "latest point is not the last write");
    assert_same("latest export vs model", &img, &model.bytes);
    assert_same("latest export vs agent's source file", &img, &api.source());
}

/// Exports the point that closed round `i` and compares it with the model at that round.
fn check_round(api: &Api, model: &Model, i: usize) {
    let seq = model.rounds[i].seq;
    let points = api.points().expect("points");
    assert!(
        points.contains(&seq),
        "round {i} ended at seq {seq}, which is not a recovery point: {points:?}"
    );
    let want = model.at_round(i);
    assert!(
        want != model.bytes,
        "round {i} looks like the final disk: the check would prove nothing"
    );
    let (got_seq, img) = api.export(&seq.to_string());
    assert_eq!(got_seq, seq, "export chose another point");
    assert_same(
        &format!("export of seq {seq} (round {i}) vs model"),
        &img,
        &want,
    );
}

#[test]
fn four_daemons_end_to_end() {
    if !have_qemu_io() {
        return;
    }
    let started = std::time::Instant::now();
    let c = Cluster::start(tmp());
    let start_seq = c.api.disk().expect("disk").written;
    let (mut model, mut rng) = (Model::new(), Rng(0x5eed_0001));
    for round in 0..5 {
        let seq = c.api.run_round(&mut model, &gen_round(&mut rng, round));
        assert_eq!(
            c.api.wait_applied(),
            seq,
            "writes appeared after round {round} ended"
        );
        let points = c.api.points().expect("points");
        assert_eq!(
            points.last(),
            Some(&seq),
            "round {round}: the newest point is not the round's end"
        );
        assert!(
            points.windows(2).all(|w| w[0] < w[1]),
            "points out of order: {points:?}"
        );
    }
    check_latest(&c.api, &model);
    check_round(&c.api, &model, 1);
    check_round(&c.api, &model, 3);
    check_image_ranges(&c, &model);
    check_metrics(&c, &model);
    let (compared, listed) = check_every_point(&c, &model, start_seq);
    assert_eq!(
        compared, listed,
        "every listed point was compared with the model"
    );
    eprintln!("four_daemons_end_to_end: {:?}", started.elapsed());
}

/// What the background writer and the test share.
#[derive(Default)]
struct Progress {
    rounds: AtomicUsize,
    stop: AtomicBool,
    done: AtomicBool,
}

impl Progress {
    fn wait_rounds(&self, n: usize) -> usize {
        poll(
            &format!("the writer to finish {n} rounds"),
            DEADLINE,
            || {
                let r = self.rounds.load(SeqCst);
                assert!(
                    r >= n || !self.done.load(SeqCst),
                    "the writer stopped after {r} rounds"
                );
                if r >= n {
                    Ok(r)
                } else {
                    Err(format!("{r} rounds done"))
                }
            },
        )
    }
}

/// Sets a flag when dropped, so that a panic on either side stops the other.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Runs rounds of qemu-io until told to stop; returns the model with its rounds.
fn writer(api: &Api, seed: u64, p: &Progress) -> Model {
    let _done = SetOnDrop(&p.done);
    let (mut model, mut rng) = (Model::new(), Rng(seed));
    while !p.stop.load(SeqCst) {
        let round = model.rounds.len();
        let mut ops = gen_round(&mut rng, round);
        ops.insert(4, Op::Sleep(500));
        api.run_round(&mut model, &ops);
        p.rounds.store(round + 1, SeqCst);
    }
    model
}

/// Kills `victim` with SIGKILL while the writer runs, lets writes go on without it, restarts
/// it, and returns (round in progress at the kill, model).
fn kill_during_writes(c: &mut Cluster, victim: Daemon, seed: u64) -> (usize, Model) {
    let p = Progress::default();
    let api = c.api.clone();
    std::thread::scope(|s| {
        let w = s.spawn(|| writer(&api, seed, &p));
        let _stop = SetOnDrop(&p.stop);
        // Kill while qemu-io sleeps mid-round: its first writes are done but not yet flushed.
        p.wait_rounds(2);
        for running in [false, true] {
            poll_every(
                Duration::from_millis(2),
                "the next qemu-io",
                DEADLINE,
                || {
                    (api.qemu_running.load(SeqCst) == running)
                        .then_some(())
                        .ok_or(String::new())
                },
            );
        }
        let killed_in = p.rounds.load(SeqCst);
        // A moment drawn from the seed, anywhere in the first 450 ms of the round (its qemu-io
        // pauses 500 ms after its first writes): before, during or after their batch's flight.
        let delay = Rng(seed ^ 0x6b69_6c6c).below(450);
        eprintln!("killing {victim:?} {delay} ms into round {killed_in}");
        std::thread::sleep(Duration::from_millis(delay));
        assert!(
            api.qemu_running.load(SeqCst),
            "qemu-io finished before its pause; the kill would not be mid-round"
        );
        c.kill(victim);
        // Writes complete while the daemon is down: the agent (or process server) buffers.
        p.wait_rounds(killed_in + 2);
        // The outage was real: what was written since the kill is not all cached / applied.
        let d = c.api.fresh_disk(wall_ms(), 0);
        let behind = if victim == Daemon::ProcessServer {
            d.cached < d.written
        } else {
            d.applied < d.written
        };
        assert!(behind, "{victim:?} down, yet the stream kept up: {d:?}");
        c.restart(victim);
        let restarted = p.rounds.load(SeqCst);
        p.wait_rounds(restarted + 2);
        p.stop.store(true, SeqCst);
        (killed_in, w.join().expect("writer panicked"))
    })
}

fn killed_mid_stream(victim: Daemon, seed: u64) {
    if !have_qemu_io() {
        return;
    }
    let started = std::time::Instant::now();
    let mut c = Cluster::start(tmp());
    let start_seq = c.api.disk().expect("disk").written;
    let (killed_in, model) = kill_during_writes(&mut c, victim, seed);
    check_latest(&c.api, &model);
    c.assert_alive();
    // Every listed point, those inside rounds (the writer pauses mid-round) included.
    let (compared, listed) = check_every_point(&c, &model, start_seq);
    assert!(
        compared > model.rounds.len() && compared * 2 >= listed,
        "{compared} of {listed} points compared over {} rounds",
        model.rounds.len()
    );
    // Points from before the kill, from the round it cut in two, and from a round written
    // entirely while the daemon was down.
    for round in [killed_in - 1, killed_in, killed_in + 1] {
        check_round(&c.api, &model, round);
    }
    eprintln!(
        "{victim:?} killed mid-stream: {} rounds, {:?}",
        model.rounds.len(),
        started.elapsed()
    );
}

#[test]
fn process_server_killed_mid_stream() {
    killed_mid_stream(Daemon::ProcessServer, 0x5eed_0002);
}

#[test]
fn master_target_killed_mid_stream() {
    killed_mid_stream(Daemon::MasterTarget, 0x5eed_0003);
}

/// A clean stop of the agent (SIGTERM) hands everything it holds to the process server and
/// records where its stream stands: started again, it resumes there, so the replica stays
/// consistent (no gap, no resync; `wait_applied` checks it) and every write reaches it.
#[test]
fn a_clean_agent_restart_leaves_the_replica_consistent() {
    if !have_qemu_io() {
        return;
    }
    let mut c = Cluster::start(tmp());
    let (mut model, mut rng) = (Model::new(), Rng(0x5eed_0007));
    let seq = c.api.run_round(&mut model, &gen_round(&mut rng, 0));
    assert_eq!(c.api.wait_applied(), seq);
    c.stop(Daemon::Agent);
    let log = std::fs::read_to_string(c.dir.join("agent.log")).expect("agent log");
    assert!(log.contains("agent stopped cleanly"), "{log}");
    c.restart(Daemon::Agent);
    c.wait_assigned();
    let seq2 = c.api.run_round(&mut model, &gen_round(&mut rng, 1));
    assert!(seq2 > seq, "{seq2} after {seq}");
    assert_eq!(c.api.wait_applied(), seq2);
    check_latest(&c.api, &model);
}

fn hello(version: u32, role: Role) -> Vec<u8> {
    let component = ComponentId::new("intruder").expect("valid id");
    encode(
        &Message::Hello(Hello {
            version,
            role,
            component,
            epoch: Epoch(0),
        }),
        &[],
    )
    .expect("encode")
}

/// The daemon must not have accepted the peer: no Hello came back (a Reject may).
fn assert_not_accepted(what: &str, reply: &[u8]) {
    if let Ok(Some((Message::Hello(h), _, _))) = decode(reply) {
        panic!("{what}: the daemon answered with a Hello: {h:?}");
    }
}

/// (a) Garbage to every listening port: Haven and NBD ports close, HTTP ports answer 400.
fn garbage_to_every_port(p: &Ports) {
    let garbage =
        b"\x16\x03\x01\x00\xff\xfeGARBAGE\x00\x01 this is no protocol at all \x80\x81\r\n\r\n";
    let ports = [
        ("config server", p.cs),
        ("process server", p.ps),
        ("master target", p.mt),
        ("agent NBD", p.nbd),
    ];
    for (name, port) in ports {
        let reply = send_expect_close(&format!("127.0.0.1:{port}"), garbage, false, REFUSE_WITHIN);
        if port == p.nbd {
            // Only the server's 18-byte greeting, sent before it read anything.
            assert!(
                reply.len() == 18 && reply.starts_with(b"NBDMAGIC"),
                "{name}: unexpected reply {reply:02x?}"
            );
        } else {
            assert_not_accepted(name, &reply);
        }
    }
    for (name, port) in [
        ("config server API", p.cs_api),
        ("master target API", p.mt_api),
    ] {
        let reply = send_expect_close(&format!("127.0.0.1:{port}"), garbage, false, REFUSE_WITHIN);
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{name}: expected 400, got {text:?}"
        );
    }
}

/// (b) Reads and writes past the end fail, through qemu-io and as raw NBD requests; the raw
/// connection stays usable afterwards.
fn out_of_range_is_refused(api: &Api, nbd_port: u16, model: &Model) {
    let end = DISK_BYTES;
    for cmd in [
        format!("read {end} 4096"),
        format!("write -P 0x66 {} 8192", end - 4096),
        format!("write -z {} 4096", end - 2048),
    ] {
        let (ok, text) = api.qemu_io(std::slice::from_ref(&cmd));
        assert!(
            !ok && text.contains("failed"),
            "qemu-io {cmd:?} past the end did not fail: {text}"
        );
    }
    let mut raw = RawNbd::connect(nbd_port);
    assert_eq!(raw.size, DISK_BYTES, "NBD export size");
    assert_eq!(
        raw.request(0, end - 512, 1024, &[]).0,
        22,
        "read past the end: EINVAL expected"
    );
    assert_eq!(
        raw.request(0, u64::MAX - 10, 512, &[]).0,
        22,
        "read with offset overflow: EINVAL expected"
    );
    assert_ne!(
        raw.request(1, end - 100, 4096, &[0x77; 4096]).0,
        0,
        "write past the end succeeded"
    );
    let (err, data) = raw.request(0, 0, 16384, &[]);
    assert_eq!(err, 0, "in-range read after refused requests");
    assert_same(
        "raw NBD read of the first 16 KiB",
        &data,
        &model.bytes[..16384],
    );
}

fn read_frame(s: &mut TcpStream) -> Message {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    s.read_exact(&mut head).expect("frame header");
    let header = parse_header(&head).expect("valid header");
    let mut body = vec![0u8; header.body_len as usize];
    s.read_exact(&mut body).expect("frame body");
    decode_body(&header, body).expect("valid frame").0
}

/// (c) bad checksum, (d) wrong protocol version, (e) truncated frames, on every Haven port;
/// and a bad checksum after a good handshake.
fn bad_frames(p: &Ports) {
    let targets = [
        ("process server", p.ps, Role::Agent),
        ("master target", p.mt, Role::ProcessServer),
        ("config server", p.cs, Role::Agent),
    ];
    for (name, port, role) in targets {
        let addr = format!("127.0.0.1:{port}");
        let mut bad_crc = hello(PROTOCOL_VERSION, role);
        bad_crc[12] ^= 0xff;
        assert_not_accepted(
            name,
            &send_expect_close(&addr, &bad_crc, false, REFUSE_WITHIN),
        );
        let reply = send_expect_close(
            &addr,
            &hello(PROTOCOL_VERSION + 1, role),
            false,
            REFUSE_WITHIN,
        );
        match decode(&reply) {
            Ok(Some((Message::Reject { reason }, _, _))) => assert!(
                reason.contains("version"),
                "{name}: reject reason {reason:?}"
            ),
            other => panic!("{name}: wrong version answered with {other:?}"),
        }
        let good = hello(PROTOCOL_VERSION, role);
        for cut in [good.len() - 3, FRAME_HEADER_BYTES - 6] {
            assert_not_accepted(
                name,
                &send_expect_close(&addr, &good[..cut], true, REFUSE_WITHIN),
            );
        }
    }
    let mut s = TcpStream::connect(("127.0.0.1", p.ps)).expect("connect to the process server");
    s.set_read_timeout(Some(REFUSE_WITHIN)).expect("timeout");
    s.write_all(&hello(PROTOCOL_VERSION, Role::Agent))
        .expect("send Hello");
    assert!(
        matches!(read_frame(&mut s), Message::Hello(h) if h.role == Role::ProcessServer),
        "process server handshake"
    );
    let mut bad = encode(&Message::reject("corrupted in transit"), &[]).expect("encode");
    bad[12] ^= 0x01;
    s.write_all(&bad).expect("send bad frame");
    let mut rest = vec![];
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("process server kept a connection open after a bad checksum: {e}"),
    }
}

#[test]
fn bad_input_is_refused_and_service_continues() {
    if !have_qemu_io() {
        return;
    }
    let started = std::time::Instant::now();
    let mut c = Cluster::start(tmp());
    let (mut model, mut rng) = (Model::new(), Rng(0x5eed_0004));
    c.api.run_round(&mut model, &gen_round(&mut rng, 0));
    c.api.wait_applied();
    garbage_to_every_port(&c.ports);
    out_of_range_is_refused(&c.api, c.ports.nbd, &model);
    bad_frames(&c.ports);
    c.assert_alive();
    let status = c.api.status().expect("haven status after the bad input");
    let names: Vec<&str> = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        names,
        ["agent1", "mt1", "ps1"],
        "components after the bad input"
    );
    c.api.run_round(&mut model, &gen_round(&mut rng, 1));
    check_latest(&c.api, &model);
    c.assert_alive();
    eprintln!(
        "bad_input_is_refused_and_service_continues: {:?}",
        started.elapsed()
    );
}

/// A bare NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME) for the requests qemu-io refuses
/// to send, such as reads and writes past the end of the export.
struct RawNbd {
    s: TcpStream,
    size: u64,
}

impl RawNbd {
    fn connect(port: u16) -> RawNbd {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to NBD");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).expect("NBD greeting");
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT", "NBD greeting");
        let mut hello = 3u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        hello.extend_from_slice(&(DISK.len() as u32).to_be_bytes());
        hello.extend_from_slice(DISK.as_bytes());
        s.write_all(&hello).expect("NBD options");
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).expect("NBD export reply");
        RawNbd {
            s,
            size: u64::from_be_bytes(reply[..8].try_into().expect("8 bytes")),
        }
    }

    /// One request (`kind` 0 = read, 1 = write); returns the error code and the data read.
    fn request(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&0x00c0_ffeeu64.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.s.write_all(&req).expect("NBD request");
        let mut reply = [0u8; 16];
        self.s.read_exact(&mut reply).expect("NBD reply");
        assert_eq!(
            reply[..4],
            0x6744_6698u32.to_be_bytes(),
            "NBD simple reply magic"
        );
        assert_eq!(reply[8..], 0x00c0_ffeeu64.to_be_bytes(), "NBD reply cookie");
        let error = u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
        let mut data = vec![];
        if error == 0 && kind == 0 {
            data.resize(len as usize, 0);
            self.s.read_exact(&mut data).expect("NBD read data");
        }
        (error, data)
    }
}
