//! Checks of the HTTP side of a running cluster: the master target's image endpoint (HEAD,
//! Range) and every role's `/metrics`, parsed by a real OpenMetrics parser.

use crate::common::{assert_same, poll, Cluster, Model, DEADLINE, DISK};
use haven_runtime::http::{self, Client, Method};
use haven_runtime::transport::Tcp;
use prometheus_parse::{Sample, Scrape, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The master target's image endpoint answers `HEAD` with the size and `Range` with exactly
/// those bytes (what `curl -C -` sends to resume a download).
pub fn check_image_ranges(c: &Cluster, model: &Model) {
    let seq = model.rounds.last().expect("a round").seq;
    let path = format!("/replicas/{}/image?seq={seq}", DISK);
    let size = model.bytes.len() as u64;
    runtime().block_on(async {
        let mt = Client::new(Tcp, format!("127.0.0.1:{}", c.ports.mt_api));
        let head = mt.send(Method::HEAD, &path, &[], None).await.expect("HEAD");
        assert_eq!(head.status(), 200);
        assert_eq!(
            http::content_length(&head),
            Some(size),
            "HEAD names the size"
        );
        assert_eq!(head.headers()["accept-ranges"], "bytes");
        let body = http::read_body(head.into_body(), 1)
            .await
            .expect("HEAD body");
        assert!(body.is_empty(), "HEAD has no body");
        let cases = [
            ("bytes=4096-8191".to_string(), 4096..8192),
            (format!("bytes={}-", size - 12_345), size - 12_345..size),
            ("bytes=-1000".to_string(), size - 1000..size),
            ("bytes=1000-1000".to_string(), 1000..1001),
        ];
        for (range, want) in cases {
            let resp = mt
                .send(Method::GET, &path, &[("range", &range)], None)
                .await
                .expect("ranged GET");
            assert_eq!(resp.status(), 206, "{range}");
            assert_eq!(
                resp.headers()["content-range"],
                format!("bytes {}-{}/{size}", want.start, want.end - 1).as_str(),
                "{range}"
            );
            let got = http::read_body(resp.into_body(), 64 << 20)
                .await
                .expect("body");
            let (a, b) = (want.start as usize, want.end as usize);
            assert_same(&format!("image {range}"), &got, &model.bytes[a..b]);
        }
        let past = format!("bytes={size}-");
        let resp = mt
            .send(Method::GET, &path, &[("range", &past)], None)
            .await
            .expect("GET past the end");
        assert_eq!(resp.status(), 416);
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes */{size}").as_str()
        );
    });
}

/// Every recovery point the master target lists, read back through its API and compared
/// with the model at that point's seq (not only at round ends: the points inside rounds too,
/// wherever the model can tell which write a seq was). Returns (compared, listed).
pub fn check_every_point(c: &Cluster, model: &Model, start_seq: u64) -> (usize, usize) {
    let started = std::time::Instant::now();
    runtime().block_on(async {
        let mt = Client::new(Tcp, format!("127.0.0.1:{}", c.ports.mt_api));
        let points: Vec<serde_json::Value> = mt
            .get_json(&format!("/replicas/{DISK}/points"))
            .await
            .expect("points");
        let mut compared = 0;
        for p in &points {
            let seq = p["seq"].as_u64().expect("seq");
            let Some(want) = model.at_seq(seq, start_seq) else {
                continue;
            };
            let path = format!("/replicas/{DISK}/image?seq={seq}");
            let resp = mt.send(Method::GET, &path, &[], None).await.expect("image");
            let resp = http::ok_or_status(resp).await.expect("image status");
            let got = http::read_body(resp.into_body(), 1 << 30)
                .await
                .expect("image body");
            assert_same(&format!("point at seq {seq} vs the model"), &got, &want);
            compared += 1;
        }
        eprintln!(
            "compared {compared} of {} listed points with the model in {:?}",
            points.len(),
            started.elapsed()
        );
        (compared, points.len())
    })
}

/// `GET /metrics` of the API at `port`, parsed.
fn scrape(port: u16) -> Result<Scrape, String> {
    runtime().block_on(async {
        let api = Client::new(Tcp, format!("127.0.0.1:{port}"));
        let resp = api
            .send(Method::GET, "/metrics", &[], None)
            .await
            .map_err(|e| e.to_string())?;
        let resp = http::ok_or_status(resp).await.map_err(|e| e.to_string())?;
        let ct = resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_string();
        assert!(
            ct.starts_with("application/openmetrics-text"),
            "content type {ct}"
        );
        let body = http::read_body(resp.into_body(), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?;
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).map_err(|e| e.to_string())
    })
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

/// The value of `name` with the label `key=value`, if the scrape has it.
fn value(s: &Scrape, name: &str, key: &str, val: &str) -> Option<f64> {
    s.samples
        .iter()
        .find(|x: &&Sample| x.metric == name && x.labels.get(key) == Some(val))
        .map(|x| number(&x.value))
}

fn need(s: &Scrape, name: &str, key: &str, val: &str) -> Result<f64, String> {
    value(s, name, key, val).ok_or_else(|| {
        let names: Vec<_> = s.samples.iter().map(|x| x.metric.as_str()).collect();
        format!("no {name}{{{key}={val:?}}} in {names:?}")
    })
}

/// Every role's `/metrics` parses, names what docs/api.md lists, and agrees with what was
/// written: the replica at the last seq, consistent, every component up.
pub fn check_metrics(c: &Cluster, model: &Model) {
    let seq = model.rounds.last().expect("a round").seq as f64;
    let written_bytes = model.bytes.iter().filter(|b| **b != 0).count() as f64;
    // The configuration server's view, which lags by a heartbeat: poll it.
    poll(
        "the configuration server's metrics to show the last write",
        DEADLINE,
        || {
            let s = scrape(c.ports.cs_api)?;
            for (id, role) in [
                ("agent1", "agent"),
                ("ps1", "process-server"),
                ("mt1", "master-target"),
            ] {
                let up = need(&s, "haven_component_up", "component", id)?;
                let sample = s
                    .samples
                    .iter()
                    .find(|x| {
                        x.metric == "haven_component_up" && x.labels.get("component") == Some(id)
                    })
                    .expect("found above");
                assert_eq!(sample.labels.get("role"), Some(role), "role of {id}");
                if up != 1.0 {
                    return Err(format!("{id} is not up"));
                }
            }
            let applied = need(&s, "haven_replica_applied_seq", "disk", DISK)?;
            if applied != seq {
                return Err(format!("replica applied {applied}, want {seq}"));
            }
            assert_eq!(need(&s, "haven_replica_consistent", "disk", DISK)?, 1.0);
            assert!(need(&s, "haven_replica_points", "disk", DISK)? >= model.rounds.len() as f64);
            assert!(need(&s, "haven_replica_journal_bytes", "disk", DISK)? > 0.0);
            let rpo = need(&s, "haven_disk_rpo_seconds", "disk", DISK)?;
            assert!((0.0..60.0).contains(&rpo), "RPO {rpo} s");
            assert!(need(&s, "haven_source_written_bytes_total", "disk", DISK)? >= written_bytes);
            assert!(need(&s, "haven_source_buffered_bytes", "disk", DISK)? >= 0.0);
            let max = need(
                &s,
                "haven_process_server_cache_max_bytes",
                "component",
                "ps1",
            )?;
            assert_eq!(max, (16u64 << 30) as f64, "the default cache quota");
            let used = need(&s, "haven_process_server_cache_bytes", "component", "ps1")?;
            assert!((0.0..=max).contains(&used), "cache use {used}");
            let bytes_in = need(
                &s,
                "haven_process_server_bytes_in_total",
                "component",
                "ps1",
            )?;
            let bytes_out = need(
                &s,
                "haven_process_server_bytes_out_total",
                "component",
                "ps1",
            )?;
            assert!(bytes_in >= written_bytes / 2.0, "bytes in {bytes_in}");
            assert!(bytes_out > 0.0, "bytes out {bytes_out}");
            Ok(())
        },
    );
    // Each role's own endpoint shows its part.
    let mt = scrape(c.ports.mt_api).expect("master target metrics");
    assert_eq!(
        need(&mt, "haven_replica_applied_seq", "disk", DISK),
        Ok(seq)
    );
    assert_eq!(need(&mt, "haven_replica_consistent", "disk", DISK), Ok(1.0));
    let agent = scrape(c.ports.agent_api).expect("agent metrics");
    assert!(
        need(&agent, "haven_source_written_bytes_total", "disk", DISK).expect("agent")
            >= written_bytes
    );
    let ps = scrape(c.ports.ps_api).expect("process server metrics");
    assert!(
        need(
            &ps,
            "haven_process_server_bytes_in_total",
            "component",
            "ps1"
        )
        .expect("ps")
            > 0.0
    );
    assert!(
        value(&agent, "haven_replica_applied_seq", "disk", DISK).is_none(),
        "the agent has no replica"
    );
}
