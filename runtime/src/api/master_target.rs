//! The master target's HTTP API.
//!
//! - `GET /replicas` — every replica's metadata
//! - `GET /metrics` — OpenMetrics of the replicas
//! - `GET /replicas/{disk}/points` — its recovery points, oldest first: `seq`, `time`
//!   (microseconds since the epoch), `time_rfc3339` (UTC, milliseconds) and `kind`
//! - `GET|HEAD /replicas/{disk}/image?seq=N` — the raw disk image at point N, streamed; a
//!   `Range: bytes=...` header asks for part of it (206), so `curl -C -` resumes a download

use crate::drivers::master_target::Replicas;
use crate::http::range::{self, Wanted};
use crate::http::{error, json};
use crate::meta::{MetaStore, PointKind, PointRecord};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use haven_core::ids::DiskId;
use haven_core::stats::{MasterTargetStats, ReplicaStats};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Bytes per chunk of a streamed image.
pub const IMAGE_CHUNK_BYTES: u64 = 1 << 20;
/// Chunks buffered ahead of a slow client.
const IMAGE_CHUNKS_AHEAD: usize = 8;

pub struct MtApi<V: crate::vfs::Vfs + Clone> {
    /// The replicas' data, for images.
    pub replicas: Replicas<V>,
    /// Recovery points as recorded.
    pub meta: Arc<MetaStore>,
    /// The replicas' metadata as the core holds it, published after every round.
    pub stats: tokio::sync::watch::Receiver<MasterTargetStats>,
}

#[derive(Serialize)]
struct ReplicaView {
    disk: DiskId,
    size_bytes: u64,
    epoch: u64,
    applied_seq: u64,
    points: u64,
    journal_bytes: u64,
    inconsistent: Option<String>,
}

/// A recovery point as the APIs show it: the stored record with its time also in RFC 3339, as
/// `haven points` prints it and `haven export --point` takes it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointView {
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time: u64,
    /// The same time in UTC to the millisecond, e.g. `2026-12-02T14:48:59.102Z`.
    pub time_rfc3339: String,
    pub kind: PointKind,
}

impl From<&PointRecord> for PointView {
    fn from(p: &PointRecord) -> Self {
        PointView {
            seq: p.seq,
            time: p.time.as_micros(),
            time_rfc3339: super::time_rfc3339(p.time.as_micros()),
            kind: p.kind,
        }
    }
}

#[derive(Deserialize)]
struct ImageQuery {
    seq: u64,
}

/// The master target's routes.
pub fn router<V: crate::vfs::Vfs + Clone + Send + 'static>(api: MtApi<V>) -> Router {
    Router::new()
        .route("/replicas", get(list::<V>))
        .route("/metrics", get(metrics::<V>))
        .route("/replicas/{disk}/points", get(points::<V>))
        .route("/replicas/{disk}/image", get(image::<V>))
        .with_state(Arc::new(api))
}

type St<V> = State<Arc<MtApi<V>>>;

async fn list<V: crate::vfs::Vfs + Clone>(State(api): St<V>) -> Response {
    let v: Vec<ReplicaView> = api
        .stats
        .borrow()
        .replicas
        .iter()
        .map(|r| ReplicaView {
            disk: r.disk.clone(),
            size_bytes: r.size_bytes,
            epoch: r.epoch.0,
            applied_seq: r.applied_seq,
            points: r.points,
            journal_bytes: r.journal_bytes,
            inconsistent: r.inconsistent.clone(),
        })
        .collect();
    json(StatusCode::OK, &v)
}

async fn metrics<V: crate::vfs::Vfs + Clone>(State(api): St<V>) -> Response {
    let stats: Vec<ReplicaStats> = api.stats.borrow().replicas.clone();
    crate::metrics::Metrics::default()
        .replicas(&stats)
        .response_owned()
}

fn disk_id(disk: &str) -> Result<DiskId, Box<Response>> {
    DiskId::new(disk).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.to_string())))
}

async fn points<V: crate::vfs::Vfs + Clone>(
    State(api): St<V>,
    Path(disk): Path<String>,
) -> Response {
    let disk = match disk_id(&disk) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match api.meta.points(&disk) {
        Ok(p) => json(
            StatusCode::OK,
            &p.iter().map(PointView::from).collect::<Vec<_>>(),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn image<V: crate::vfs::Vfs + Clone + Send + 'static>(
    State(api): St<V>,
    method: Method,
    Path(disk): Path<String>,
    query: Result<Query<ImageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let disk = match disk_id(&disk) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let Ok(Query(ImageQuery { seq })) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the recovery point as ?seq=N (see GET /replicas/{disk}/points)",
        );
    };
    match api.meta.has_point(&disk, seq) {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("seq {seq} is not a recovery point of {disk}"),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    let size = match api.replicas.lock().expect("replica lock").get(&disk) {
        Some(r) => r.size_bytes(),
        None => return error(StatusCode::NOT_FOUND, &format!("no replica of {disk} here")),
    };
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, bytes) = match range::wanted(range_header, size) {
        Wanted::Whole => (StatusCode::OK, 0..size),
        Wanted::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        Wanted::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response()
        }
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, bytes.end - bytes.start);
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", bytes.start, bytes.end - 1),
        );
    }
    let body = if method == Method::HEAD || bytes.is_empty() {
        Body::empty()
    } else {
        stream_image(api.replicas.clone(), disk, seq, bytes)
    };
    resp.body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

/// The bytes `range` of the image at `seq`, read on a blocking thread a chunk at a time and
/// at most [`IMAGE_CHUNKS_AHEAD`] chunks ahead of the client. A read error ends the body
/// short, so that the client sees a truncated transfer rather than wrong bytes.
fn stream_image<V: crate::vfs::Vfs + Clone + Send + 'static>(
    replicas: Replicas<V>,
    disk: DiskId,
    seq: u64,
    range: std::ops::Range<u64>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, String>>(IMAGE_CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut off = range.start;
        while off < range.end {
            let n = IMAGE_CHUNK_BYTES.min(range.end - off);
            let mut buf = vec![0u8; n as usize];
            let r = {
                let replicas = replicas.lock().expect("replica lock");
                match replicas.get(&disk) {
                    Some(r) => r.read_at(seq, off, &mut buf).map_err(|e| e.to_string()),
                    None => Err("the replica went away".to_string()),
                }
            };
            let failed = r.is_err();
            if let Err(e) = &r {
                tracing::warn!("image of {disk} at seq {seq}: read at {off} failed: {e}");
            }
            if tx.blocking_send(r.map(|_| buf)).is_err() || failed {
                return;
            }
            off += n;
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((
            item.map(bytes::Bytes::from).map_err(std::io::Error::other),
            rx,
        ))
    });
    Body::from_stream(chunks)
}
