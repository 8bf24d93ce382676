//! Console commands that change the configuration server's state: `protect`, `unprotect`,
//! `settings`, and `components` to see what can be named. Each prints the server's answer (said
//! once the change is durable) or its refusal.

use crate::size::parse_size;
use haven_core::config_server::{ComponentView, PolicyChange};
use haven_runtime::http;
use serde::Deserialize;

#[derive(Deserialize)]
struct Answer {
    result: String,
}

async fn post(api: &str, path: &str, body: serde_json::Value) -> Result<(), String> {
    let a: Answer = http::post_json(api, path, &body)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", a.result);
    Ok(())
}

/// `haven protect AGENT/DISK [--process-server ID] [--master-target ID]`
pub async fn protect(
    api: &str,
    target: &str,
    process_server: Option<String>,
    master_target: Option<String>,
) -> Result<(), String> {
    let Some((agent, disk)) = target.split_once('/') else {
        return Err(format!(
            "{target:?}: name the disk as AGENT/DISK, for example agent1/disk0 (`haven status` lists them)"
        ));
    };
    let body = serde_json::json!({
        "agent": agent,
        "disk": disk,
        "process_server": process_server,
        "master_target": master_target,
    });
    post(api, "/api/protect", body).await
}

/// `haven unprotect DISK [--keep-replica]`
pub async fn unprotect(api: &str, disk: &str, keep_replica: bool) -> Result<(), String> {
    let body = serde_json::json!({ "disk": disk, "keep_replica": keep_replica });
    post(api, "/api/unprotect", body).await
}

/// `haven settings DISK KEY=VALUE...`
pub async fn settings(api: &str, disk: &str, pairs: &[String]) -> Result<(), String> {
    let change = parse_settings(pairs)?;
    let body = serde_json::to_value(&change).expect("a policy change encodes");
    post(api, &format!("/api/disks/{disk}/settings"), body).await
}

/// `haven components`
pub async fn components(api: &str, json: bool) -> Result<(), String> {
    let list: Vec<ComponentView> = http::get_json(api, "/api/components")
        .await
        .map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list).expect("encodes"));
        return Ok(());
    }
    println!(
        "{:<16} {:<15} {:<8} {:>5}  address",
        "id", "role", "state", "disks"
    );
    for c in &list {
        let state = if c.online { "online" } else { "OFFLINE" };
        println!(
            "{:<16} {:<15} {state:<8} {:>5}  {}",
            c.id, c.role, c.disks, c.data_addr
        );
    }
    Ok(())
}

const SETTINGS_HELP: &str = "known settings: rpo_threshold=DURATION (e.g. 30s, 5m), \
                             batch_bytes_max=SIZE (e.g. 4M), batch_delay=DURATION (e.g. 20ms)";

/// Parses `KEY=VALUE` pairs into a policy change (the server checks the ranges).
pub fn parse_settings(pairs: &[String]) -> Result<PolicyChange, String> {
    let mut c = PolicyChange::default();
    if pairs.is_empty() {
        return Err(format!("give at least one KEY=VALUE; {SETTINGS_HELP}"));
    }
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("{p:?} is not KEY=VALUE; {SETTINGS_HELP}"));
        };
        let bad = |e: String| format!("{k}: {e}");
        match k.trim() {
            "rpo_threshold" => c.rpo_threshold_ms = Some(parse_duration_ms(v).map_err(bad)?),
            "batch_bytes_max" => c.batch_bytes_max = Some(parse_size(v).map_err(bad)?),
            "batch_delay" => c.batch_delay_ms = Some(parse_duration_ms(v).map_err(bad)?),
            other => return Err(format!("unknown setting {other:?}; {SETTINGS_HELP}")),
        }
    }
    Ok(c)
}

/// `250ms`, `30s`, `5m`, `1h`, `1d`; a bare number is milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 250ms, 30s, 5m, 1h)"))?;
    let mul = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("unknown unit {u:?} in {s:?}: use ms, s, m, h or d")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse() {
        let c = parse_settings(&[
            "rpo_threshold=5m".into(),
            "batch_bytes_max=2M".into(),
            "batch_delay=20ms".into(),
        ])
        .unwrap();
        assert_eq!(c.rpo_threshold_ms, Some(300_000));
        assert_eq!(c.batch_bytes_max, Some(2 << 20));
        assert_eq!(c.batch_delay_ms, Some(20));
        assert!(parse_settings(&["colour=red".into()])
            .unwrap_err()
            .contains("unknown setting"));
        assert!(parse_settings(&["rpo_threshold".into()])
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(parse_settings(&["rpo_threshold=5y".into()])
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_settings(&[]).is_err());
        assert_eq!(parse_duration_ms("1500").unwrap(), 1500);
    }
}
