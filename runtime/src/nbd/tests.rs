//! End-to-end tests with real clients (qemu-io, qemu-nbd) over TCP against a [`FileExport`].
//! Protocol-level error paths are covered in `raw_tests.rs`.

use std::process::Command;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::raw_tests::RawClient;
use super::*;

pub(super) const DISK_BYTES: u64 = 1 << 20;

struct TestServer {
    port: u16,
    tmp: tempfile::NamedTempFile,
}

impl TestServer {
    fn url(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{name}", self.port)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.tmp.path()).expect("read backing file")
    }
}

/// Two exports over one tempfile: "disk" (default, read-write) and "ro" (read-only).
pub(super) fn test_exports() -> (tempfile::NamedTempFile, Arc<Exports<FileExport>>) {
    let tmp = tempfile::NamedTempFile::new().expect("tempfile");
    tmp.as_file().set_len(DISK_BYTES).expect("set_len");
    let mut exports = Exports::new();
    let rw = FileExport::open(tmp.path(), false).expect("open rw");
    exports.add_with_description("disk", "haven test disk", Arc::new(rw));
    exports.add(
        "ro",
        Arc::new(FileExport::open(tmp.path(), true).expect("open ro")),
    );
    (tmp, Arc::new(exports))
}

async fn start_server() -> TestServer {
    let (tmp, exports) = test_exports();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(serve(listener, exports));
    TestServer { port, tmp }
}

/// A test that needs a client tool fails when it is missing (never a silent pass): the
/// message names the Debian package. `.ci/run` installs them all.
fn have_tool(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    let package = match tool {
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdsh" => "libnbd-bin",
        other => other,
    };
    assert!(
        found,
        "{tool} is required by this test but not installed: apt-get install {package} \
         (.ci/run installs what the tests need)"
    );
    found
}

/// Run a subprocess off the async workers; returns (success, stdout+stderr).
async fn run_tool(tool: &str, args: Vec<String>) -> (bool, String) {
    let tool = tool.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&tool)
            .args(&args)
            .output()
            .expect("spawn tool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .expect("join")
}

/// qemu-io with one `-c` per command; asserts success and no error/verification failure.
async fn qemu_io_ok(url: &str, cmds: &[&str]) -> String {
    let (ok, out) = run_tool("qemu-io", qemu_io_args(url, cmds)).await;
    let lower = out.to_lowercase();
    assert!(
        ok && !lower.contains("error") && !lower.contains("verification failed"),
        "qemu-io failed: {out}"
    );
    out
}

fn qemu_io_args(url: &str, cmds: &[&str]) -> Vec<String> {
    let mut args = vec!["-f".to_string(), "raw".to_string(), url.to_string()];
    for cmd in cmds {
        args.push("-c".to_string());
        args.push(cmd.to_string());
    }
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_io_write_read_roundtrip() {
    if !have_tool("qemu-io") {
        return;
    }
    let server = start_server().await;
    qemu_io_ok(
        &server.url("disk"),
        &["write -P 0xab 0 64k", "read -P 0xab 0 64k", "flush"],
    )
    .await;
    let bytes = server.bytes();
    assert!(bytes[..65536].iter().all(|&b| b == 0xab));
    assert!(bytes[65536..].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_io_unaligned_and_default_export() {
    if !have_tool("qemu-io") {
        return;
    }
    let server = start_server().await;
    let cmds = [
        "write -P 0xcd 1000 3333",
        "read -P 0xcd 1000 3333",
        "read -P 0 0 1000",
        "write -P 0x5a 4333 1",
    ];
    qemu_io_ok(&server.url("disk"), &cmds).await;
    // Empty export name selects the first export.
    qemu_io_ok(
        &format!("nbd://127.0.0.1:{}", server.port),
        &["read -P 0xcd 1000 3333"],
    )
    .await;
    let bytes = server.bytes();
    assert!(bytes[..1000].iter().all(|&b| b == 0));
    assert!(bytes[1000..4333].iter().all(|&b| b == 0xcd));
    assert_eq!(bytes[4333], 0x5a);
    assert!(bytes[4334..].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_io_discard_and_write_zeroes() {
    if !have_tool("qemu-io") {
        return;
    }
    let server = start_server().await;
    let cmds = [
        "write -P 0x11 0 256k",
        "discard 0 64k",
        "read -P 0 0 64k",
        "write -z 64k 64k",
        "write -z -u 128k 64k",
        "read -P 0 64k 128k",
        "read -P 0x11 192k 64k",
    ];
    qemu_io_ok(&server.url("disk"), &cmds).await;
    let bytes = server.bytes();
    assert!(bytes[..192 * 1024].iter().all(|&b| b == 0));
    assert!(bytes[192 * 1024..256 * 1024].iter().all(|&b| b == 0x11));
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_io_write_past_end_fails_and_server_keeps_serving() {
    if !have_tool("qemu-io") {
        return;
    }
    let server = start_server().await;
    let (ok, out) = run_tool(
        "qemu-io",
        qemu_io_args(&server.url("disk"), &["write -P 1 1020k 8k"]),
    )
    .await;
    let lower = out.to_lowercase();
    assert!(
        !ok || lower.contains("error") || lower.contains("invalid"),
        "past-end write should fail: {out}"
    );
    qemu_io_ok(&server.url("disk"), &["write -P 2 0 4k", "read -P 2 0 4k"]).await;
    // qemu refuses to open a read-only export read-write; opened with -r, writes fail.
    let (ok, out) = run_tool("qemu-io", qemu_io_args(&server.url("ro"), &["read 0 4k"])).await;
    assert!(
        !ok && out.to_lowercase().contains("permission denied"),
        "{out}"
    );
    let mut args = vec!["-r".to_string()];
    args.extend(qemu_io_args(&server.url("ro"), &["write -P 3 0 4k"]));
    let (_, out) = run_tool("qemu-io", args).await;
    // Refused client-side from the READ_ONLY flag; server-side EPERM is covered in raw_tests.
    assert!(out.contains("read-only"), "{out}");
    qemu_io_ok(&server.url("disk"), &["read -P 2 0 4k"]).await;
    assert!(server.bytes()[..4096].iter().all(|&b| b == 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_nbd_lists_exports() {
    if !have_tool("qemu-nbd") {
        return;
    }
    let server = start_server().await;
    let args = ["-L", "-b", "127.0.0.1", "-p", &server.port.to_string()]
        .map(String::from)
        .to_vec();
    let (ok, out) = run_tool("qemu-nbd", args).await;
    assert!(ok, "qemu-nbd -L failed: {out}");
    assert!(out.contains("exports available: 2"), "{out}");
    assert!(
        out.contains("export: 'disk'") && out.contains("haven test disk"),
        "{out}"
    );
    assert!(out.contains("export: 'ro'"), "{out}");
    assert!(out.contains("size:  1048576"), "{out}");
}

/// libnbd is strict and tries structured replies, extended headers and meta contexts first,
/// so this checks the refusals and the INFO replies against a second independent client.
#[tokio::test(flavor = "multi_thread")]
async fn nbdinfo_reports_export() {
    if !have_tool("nbdinfo") {
        return;
    }
    let server = start_server().await;
    let (ok, out) = run_tool("nbdinfo", vec![server.url("disk")]).await;
    assert!(ok, "nbdinfo failed: {out}");
    assert!(out.contains("export-size: 1048576"), "{out}");
    assert!(
        out.contains("can_multi_conn: true") && out.contains("is_read_only: false"),
        "{out}"
    );
    assert!(out.contains("block_size_preferred: 4096"), "{out}");
    let (ok, out) = run_tool("nbdinfo", vec!["--list".into(), server.url("")]).await;
    assert!(
        ok && out.contains("export=\"disk\"") && out.contains("export=\"ro\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_input_closes_connection_and_server_keeps_serving() {
    let server = start_server().await;
    // Garbage right away (client flags with unknown bits, then junk).
    let mut s = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    s.write_all(&[0xff; 4096]).await.expect("send garbage");
    expect_closed(&mut s).await;
    // Valid client flags, then a bogus option magic.
    let mut s = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    s.write_all(&3u32.to_be_bytes()).await.expect("flags");
    s.write_all(b"this is not an NBD option header at all")
        .await
        .expect("junk");
    expect_closed(&mut s).await;
    // A proper client still works afterwards.
    let mut s = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let mut client = RawClient {
        s: &mut s,
        read_lens: Default::default(),
    };
    client.greet().await;
    let (size, _) = client.go("disk").await;
    assert_eq!(size, DISK_BYTES);
}

/// Drain until EOF; the server must close the connection (bounded by a timeout).
async fn expect_closed<S: AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), wait)
        .await
        .expect("server should close the connection");
}

/// fio's own byte check through the NBD server: random 4 KiB writes at queue depth 16, each
/// block stamped with a header and a crc32c, all read back and verified (`--verify`); then the
/// backing file is compared with what fio reads. Throughput is measured by
/// bench/replication.sh, not here.
#[tokio::test(flavor = "multi_thread")]
async fn fio_writes_verify_through_the_nbd_server() {
    const FIO_BYTES: u64 = 16 << 20;
    assert!(have_tool("fio"));
    let tmp = tempfile::NamedTempFile::new().expect("tempfile");
    tmp.as_file().set_len(FIO_BYTES).expect("set_len");
    let mut exports = Exports::new();
    exports.add(
        "verify",
        Arc::new(FileExport::open(tmp.path(), false).expect("open")),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(serve(listener, Arc::new(exports)));
    let args = [
        "--name=verify".to_string(),
        "--ioengine=nbd".to_string(),
        format!("--uri=nbd://127.0.0.1:{port}/verify"),
        "--rw=randwrite".to_string(),
        "--bs=4k".to_string(),
        "--iodepth=16".to_string(),
        format!("--size={FIO_BYTES}"),
        "--verify=crc32c".to_string(),
        "--do_verify=1".to_string(),
        "--verify_fatal=1".to_string(),
        // No verify state file in the working directory.
        "--verify_state_save=0".to_string(),
        "--randseed=4242".to_string(),
        "--output-format=json".to_string(),
    ];
    let (ok, out) = run_tool("fio", args.to_vec()).await;
    assert!(ok, "fio failed: {out}");
    let json_start = out.find('{').expect("fio JSON");
    let v: serde_json::Value = serde_json::from_str(&out[json_start..]).expect("fio JSON");
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "fio error: {job}");
    assert_eq!(
        job["write"]["io_bytes"], FIO_BYTES,
        "every block written once"
    );
    assert_eq!(
        job["read"]["io_bytes"], FIO_BYTES,
        "every block read back and verified"
    );
    // The backing file holds exactly what fio verified: every block carries fio's header
    // (magic 0xacca; fio's verify_header has the offset at bytes 16..24) with its own offset.
    let bytes = std::fs::read(tmp.path()).expect("backing file");
    for (i, block) in bytes.chunks(4096).enumerate() {
        let magic = u16::from_le_bytes([block[0], block[1]]);
        assert_eq!(magic, 0xacca, "block {i} has no fio header");
        let offset = u64::from_le_bytes(block[16..24].try_into().expect("8 bytes"));
        assert_eq!(
            offset,
            i as u64 * 4096,
            "block {i} holds another block's data"
        );
    }
}
