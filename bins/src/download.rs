//! Downloading a recovery point's image from a master target into a local file: written under
//! a temporary name and renamed into place only when whole and synced, so that a cut transfer,
//! a failed disk or a killed export never leaves a file that has the right size but zeros
//! where the disk had data.

use crate::size::human_bytes;
use haven_runtime::http;
use haven_runtime::transport::Tcp;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes read per chunk of an export.
const EXPORT_CHUNK_BYTES: usize = 4 << 20;
/// Bytes between two progress reports.
const PROGRESS_BYTES: u64 = 64 << 20;

/// Downloads `GET path` from the master target at `mt` into `out` (replacing it); the image's
/// length in bytes. On failure `out` is untouched and the temporary file is removed.
pub async fn image(mt: &str, path: &str, out: &Path) -> Result<u64, String> {
    let resp = http::Client::new(Tcp, mt)
        .send(http::Method::GET, path, &[], None)
        .await
        .map_err(|e| e.to_string())?;
    let resp = http::ok_or_status(resp)
        .await
        .map_err(|e| format!("master target at {mt}: {e}"))?;
    let len = http::content_length(&resp).ok_or("the master target sent no length")?;
    let mut body = resp.into_body();
    let partial = partial_path(out);
    let written = async {
        let file = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        file.set_len(len).map_err(|e| e.to_string())?;
        write_sparse(&mut body, &file, len).await?;
        file.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&partial, out).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                partial.display(),
                out.display()
            )
        })?;
        sync_parent(out)
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("{e}; {} was not written", out.display()));
    }
    Ok(len)
}

/// Where an export to `out` is written until it is complete: `.NAME.partial` beside it (the
/// same file system, so the final rename is atomic). A killed export leaves it behind; the
/// next export to `out` overwrites it.
pub fn partial_path(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!(".{name}.partial"))
}

/// Makes a rename into `path`'s directory durable.
fn sync_parent(path: &Path) -> Result<(), String> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))
}

/// Progress for the operator on stderr. A closed or full stderr (the export piped into
/// `head`, a terminal gone) must not stop the export, so write errors are ignored.
pub fn progress(args: std::fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.flush();
}

async fn write_sparse(
    body: &mut http::Incoming,
    file: &std::fs::File,
    len: u64,
) -> Result<(), String> {
    use http::BodyExt;
    let mut buf = vec![0u8; EXPORT_CHUNK_BYTES];
    let mut off = 0u64;
    let mut last_report = 0u64;
    // Bytes of the last frame not yet copied into `buf`.
    let mut pending = http::Bytes::new();
    while off < len {
        let mut filled = 0;
        while filled < buf.len() && off + (filled as u64) < len {
            if pending.is_empty() {
                let frame = body.frame().await.ok_or_else(|| {
                    format!(
                        "export ended early at {} of {len} bytes",
                        off + filled as u64
                    )
                });
                let frame = frame?.map_err(|e| {
                    format!(
                        "export cut short at {} of {len} bytes: {e}; run it again",
                        off + filled as u64
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    pending = data;
                }
                continue;
            }
            let n = pending.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&pending.split_to(n));
            filled += n;
        }
        let chunk = &buf[..filled];
        if !haven_runtime::vfs::is_zero(chunk) {
            file.write_all_at(chunk, off).map_err(|e| e.to_string())?;
        }
        off += filled as u64;
        if off - last_report >= PROGRESS_BYTES || off == len {
            last_report = off;
            progress(format_args!(
                "\r{:>5.1}%  {} of {}",
                off as f64 * 100.0 / len as f64,
                human_bytes(off),
                human_bytes(len)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// Serves one HTTP request with a `200` claiming `claimed` bytes, sends `body` and closes:
    /// a master target that dies in the middle of an image when `body` is shorter.
    fn serve_once(claimed: usize, body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {claimed}\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        });
        addr
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Bytes that differ at every offset, with a run of zeros (written as a hole).
    fn image_bytes(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        v[EXPORT_CHUNK_BYTES..2 * EXPORT_CHUNK_BYTES].fill(0);
        v
    }

    #[test]
    fn a_whole_image_lands_at_out_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.img");
        let want = image_bytes(3 * EXPORT_CHUNK_BYTES + 12345);
        let addr = serve_once(want.len(), want.clone());
        let len = run(image(&addr, "/replicas/disk0/image?seq=1", &out)).unwrap();
        assert_eq!(len, want.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), want);
        assert!(!partial_path(&out).exists());
    }

    /// The failure a user met: an export cut short after 64 MiB left a file of the full size
    /// at `--out` with zeros from there on, which looked like a good image.
    #[test]
    fn a_cut_transfer_leaves_out_untouched_and_removes_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.img");
        std::fs::write(&out, b"an earlier export").unwrap();
        let want = image_bytes(3 * EXPORT_CHUNK_BYTES);
        let addr = serve_once(want.len(), want[..EXPORT_CHUNK_BYTES + 7].to_vec());
        let err = run(image(&addr, "/replicas/disk0/image?seq=1", &out)).unwrap_err();
        assert!(err.contains("was not written"), "{err}");
        assert!(
            err.contains("ended early") || err.contains("cut short"),
            "{err}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"an earlier export");
        assert!(!partial_path(&out).exists());
    }

    #[test]
    fn the_partial_file_sits_beside_out_hidden() {
        assert_eq!(
            partial_path(Path::new("/srv/x/disk0.img")),
            PathBuf::from("/srv/x/.disk0.img.partial")
        );
        assert_eq!(
            partial_path(Path::new("disk0.img")),
            PathBuf::from(".disk0.img.partial")
        );
    }
}
