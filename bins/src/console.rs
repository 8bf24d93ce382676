//! Console commands: they speak to the configuration server's REST API (and, for exports, to
//! the master target's data API that the configuration server names).

use crate::download::progress;
use crate::size::{format_time, human_bytes, parse_time};
use haven_core::config_server::{DiskView, ProtectionState, StatusView};
use haven_runtime::api::master_target::PointView;
use haven_runtime::http;
use haven_runtime::meta::PointRecord;
use std::io::Write;
use std::path::{Path, PathBuf};

pub async fn fetch_status(api: &str) -> Result<StatusView, String> {
    http::get_json::<StatusView>(api, "/api/status")
        .await
        .map_err(|e| e.to_string())
}

pub fn disk_line(d: &DiskView) -> String {
    if d.state != ProtectionState::Protected {
        return format!(
            "{disk} (agent {agent}): {state}; the agent serves it without replicating it",
            disk = d.disk,
            agent = d.agent,
            state = d.state.name()
        );
    }
    let (mode, written, cached, applied, rpo, bytes) = match &d.source {
        Some(s) => (
            s.mode.name(),
            s.seq_written,
            s.seq_cached,
            s.seq_applied,
            human_ms(s.rpo_ms),
            human_bytes(s.bytes_written),
        ),
        None => ("unknown", 0, 0, 0, "-".into(), "-".into()),
    };
    let points = d.replica.as_ref().map_or(0, |r| r.points);
    let journal = d
        .replica
        .as_ref()
        .map_or("-".into(), |r| human_bytes(r.journal_bytes));
    let mut warn = d
        .replica
        .as_ref()
        .and_then(|r| r.inconsistent.clone())
        .map(|w| format!("  INCONSISTENT: {w}"))
        .unwrap_or_default();
    if let Some(why) = &d.refused {
        warn.push_str(&format!(
            "  REFUSED by master target {}: {why}",
            d.master_target.as_ref().map_or("?", |m| m.as_str())
        ));
    }
    format!(
        "{disk} (agent {agent}, epoch {epoch}): mode {mode}, seq written {written} / cached {cached} / applied {applied}, RPO {rpo}, written {bytes}, {points} recovery points, journal {journal}{warn}",
        disk = d.disk,
        agent = d.agent,
        epoch = d.epoch.0
    )
}

/// Exit codes of `haven status` (documented in docs/operations.md): 0 when every component is
/// online, every protected replica consistent and every RPO within its threshold.
pub const STATUS_OFFLINE: i32 = 3;
pub const STATUS_INCONSISTENT: i32 = 4;
pub const STATUS_RPO_OVER: i32 = 5;
pub const STATUS_REFUSED: i32 = 6;

/// "350 ms", "1.2 s", "3 min", "2.0 h": durations for people.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1e3),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

/// The worst health problem in a status, as an exit code (0: healthy).
pub fn health_code(s: &StatusView) -> i32 {
    let protected = || {
        s.disks
            .iter()
            .filter(|d| d.state == ProtectionState::Protected)
    };
    if s.components.iter().any(|c| !c.online) {
        STATUS_OFFLINE
    } else if protected().any(|d| d.refused.is_some()) {
        STATUS_REFUSED
    } else if protected().any(|d| d.replica.as_ref().is_some_and(|r| r.inconsistent.is_some())) {
        STATUS_INCONSISTENT
    } else if protected().any(|d| {
        d.source
            .as_ref()
            .is_some_and(|x| x.rpo_ms > d.policy.rpo_threshold_ms)
    }) {
        STATUS_RPO_OVER
    } else {
        0
    }
}

pub async fn status(api: &str, json: bool) -> Result<(), String> {
    let s = fetch_status(api).await?;
    let code = health_code(&s);
    if json {
        let v = haven_runtime::api::config_server::status_json(&s);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("status serializes")
        );
    } else {
        print_status(&s);
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn print_status(s: &StatusView) {
    println!("components:");
    for c in &s.components {
        let state = if c.online { "online" } else { "OFFLINE" };
        println!(
            "  {:<16} {:<15} {state:<8} last seen {} ago  {}",
            c.id,
            c.role,
            human_ms(c.last_seen_ms),
            c.data_addr
        );
    }
    for (id, p) in &s.process_servers {
        println!(
            "  {id}: cache {} of {}",
            human_bytes(p.cache_bytes),
            human_bytes(p.cache_bytes_max)
        );
    }
    println!("disks:");
    for d in &s.disks {
        println!("  {}", disk_line(d));
    }
    if s.disks.is_empty() {
        println!("  (no disks registered yet)");
    }
    let warnings: Vec<_> = s
        .events
        .iter()
        .rev()
        .filter(|e| e.level != "info")
        .take(5)
        .collect();
    if !warnings.is_empty() {
        println!("last warnings:");
        for e in warnings.iter().rev() {
            println!("  {}  {}", format_time(e.time_ms * 1000), e.text);
        }
    }
}

async fn fetch_points(api: &str, disk: &str) -> Result<Vec<PointRecord>, String> {
    http::get_json::<Vec<PointRecord>>(api, &format!("/api/disks/{disk}/points"))
        .await
        .map_err(|e| e.to_string())
}

pub async fn points(api: &str, disk: &str, json: bool) -> Result<(), String> {
    let pts = fetch_points(api, disk).await?;
    if json {
        let v: Vec<PointView> = pts.iter().map(PointView::from).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("points serialize")
        );
        return Ok(());
    }
    println!("{:>12}  {:<24}  kind", "seq", "time (UTC)");
    for p in &pts {
        println!("{:>12}  {:<24}  {:?}", p.seq, format_time(p.time.0), p.kind);
    }
    println!("{} recovery points", pts.len());
    Ok(())
}

/// Picks the recovery point named by `spec`: `latest`, a seq, or a time (the newest point at or
/// before it; a time as `haven points` prints it names the point printed with it).
pub fn resolve_point(points: &[PointRecord], spec: &str) -> Result<PointRecord, String> {
    let none = || {
        "the disk has no recovery points yet; wait for replication (see `haven status`)".to_string()
    };
    if spec == "latest" {
        return points.last().cloned().ok_or_else(none);
    }
    if let Ok(seq) = spec.parse::<u64>() {
        return points
            .iter()
            .find(|p| p.seq == seq)
            .cloned()
            .ok_or_else(|| {
                format!("seq {seq} is not a recovery point; list them with `haven points`")
            });
    }
    let t =
        parse_time(spec).map_err(|e| format!("--point must be latest, a seq or a time: {e}"))?;
    points
        .iter()
        .rev()
        .find(|p| p.time.0 <= t)
        .cloned()
        .ok_or_else(|| match (points.first(), points.last()) {
            (Some(a), Some(b)) => format!(
                "no recovery point at or before {spec}: the oldest is {} (seq {}), the newest {} (seq {})",
                format_time(a.time.0),
                a.seq,
                format_time(b.time.0),
                b.seq
            ),
            _ => none(),
        })
}

pub async fn export(
    api: &str,
    disk: &str,
    spec: &str,
    out: &Path,
    force: bool,
) -> Result<(), String> {
    let status = fetch_status(api).await?;
    // Before --force counts: overwriting a live disk is never what was meant.
    let sources = status.disks.iter().filter_map(|d| {
        let path = d.source_path.as_deref()?;
        Some((d.disk.as_str(), d.agent.as_str(), path))
    });
    refuse_source(out, sources)?;
    if !force && out.exists() {
        return Err(format!(
            "{} exists; pass --force to overwrite it",
            out.display()
        ));
    }
    let d = status
        .disks
        .iter()
        .find(|d| d.disk.as_str() == disk)
        .ok_or_else(|| format!("disk {disk} is not protected; see `haven status`"))?;
    let mt = d
        .master_target_api
        .clone()
        .filter(|a| !a.is_empty())
        .ok_or("the disk's master target is not registered")?;
    let pts = fetch_points(api, disk).await?;
    let point = resolve_point(&pts, spec)?;
    progress(format_args!(
        "exporting {disk} at seq {} ({}) to {}\n",
        point.seq,
        format_time(point.time.0),
        out.display()
    ));
    let path = format!("/replicas/{disk}/image?seq={}", point.seq);
    let len = crate::download::image(&mt, &path, out).await?;
    progress(format_args!(
        "\rwrote {} ({})            \n",
        out.display(),
        human_bytes(len)
    ));
    // The seq is the result for scripts; a reader that went away no longer wants it.
    let _ = writeln!(std::io::stdout(), "{}", point.seq);
    Ok(())
}

/// Refuses an `--out` that is the source disk of a known disk (`sources`: disk, agent, the
/// agent's canonical path of it): the export would destroy what it copies. Paths are compared
/// canonical (an `--out` that does not exist yet by its parent directory and name), and an
/// existing `--out` also by its file identity, which catches a hard link.
pub fn refuse_source<'a>(
    out: &Path,
    sources: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let target = canonical_out(out);
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let out_id = id(out);
    for (disk, agent, path) in sources {
        let same = Path::new(path) == target || (out_id.is_some() && id(Path::new(path)) == out_id);
        if same {
            return Err(format!(
                "{} is the source disk of {disk} (agent {agent}); exporting onto it would \
                 destroy it; choose another --out",
                out.display()
            ));
        }
    }
    Ok(())
}

/// `out` with symbolic links and `..` resolved, as far as it exists.
fn canonical_out(out: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(out) {
        return p;
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = std::fs::canonicalize(parent.unwrap_or(Path::new(".")));
    match (dir, out.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::time::Timestamp;
    use haven_runtime::meta::PointKind;

    #[test]
    fn points_resolve() {
        let p = |seq, t: u64| PointRecord {
            seq,
            time: Timestamp(t * 1_000_000),
            kind: PointKind::Crash,
        };
        let pts = vec![p(3, 100), p(7, 200), p(9, 300)];
        assert_eq!(resolve_point(&pts, "latest").unwrap().seq, 9);
        assert_eq!(resolve_point(&pts, "7").unwrap().seq, 7);
        assert!(resolve_point(&pts, "8").is_err());
        assert_eq!(resolve_point(&pts, "@250").unwrap().seq, 7);
        assert!(resolve_point(&pts, "@50").is_err());
        assert!(resolve_point(&[], "latest").is_err());
    }

    #[test]
    fn an_export_never_overwrites_a_source_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let disk = dir.join("disk0.img");
        std::fs::write(&disk, b"live data").unwrap();
        let src = disk.to_str().unwrap().to_string();
        let sources = || [("disk0", "lab-agent", src.as_str())];
        let refused = |out: &Path| refuse_source(out, sources()).err();
        let e = refused(&disk).expect("the source itself");
        assert!(
            e.contains("is the source disk of disk0 (agent lab-agent)")
                && e.contains("choose another --out"),
            "{e}"
        );
        assert!(refused(&dir.join("sub/../disk0.img")).is_some());
        std::os::unix::fs::symlink(&disk, dir.join("link.img")).unwrap();
        assert!(refused(&dir.join("link.img")).is_some());
        std::fs::hard_link(&disk, dir.join("hard.img")).unwrap();
        assert!(refused(&dir.join("hard.img")).is_some());
        std::os::unix::fs::symlink(&dir, dir.join("dirlink")).unwrap();
        assert!(refused(&dir.join("dirlink/disk0.img")).is_some());
        assert!(refused(&dir.join("new.img")).is_none());
        assert!(refused(&dir.join("sub/disk0.img")).is_none());
        assert!(refuse_source(&disk, []).is_ok());
        assert_eq!(std::fs::read(&disk).unwrap(), b"live data");
    }

    #[test]
    fn a_time_as_points_prints_it_finds_that_point() {
        let p = |seq, us| PointRecord {
            seq,
            time: Timestamp(us),
            kind: PointKind::Crash,
        };
        // Stored times have microseconds; `haven points` prints milliseconds.
        let pts = vec![p(1, 1_796_223_805_508_405), p(2, 1_796_223_806_641_205)];
        for pt in &pts {
            let printed = format_time(pt.time.0);
            assert_eq!(
                resolve_point(&pts, &printed).unwrap().seq,
                pt.seq,
                "{printed}"
            );
        }
        let pt = resolve_point(&pts, "2026-12-02T16:03:26.641+01:00").unwrap();
        assert_eq!(pt.seq, 2);
        let e = resolve_point(&pts, "2026-02-30T00:00:00Z").unwrap_err();
        assert!(e.contains("not a valid time"), "{e}");
        let json = serde_json::to_value(PointView::from(&pts[1])).unwrap();
        assert_eq!(json["time_rfc3339"], "2026-12-02T15:03:26.641Z");
        assert_eq!(json["time"], 1_796_223_806_641_205u64);
    }
}
