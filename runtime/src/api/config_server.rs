//! The configuration server's REST API (see docs/api.md).
//!
//! - `GET /api/status` — components, disks (state, placement, policy, progress, RPO), events
//!   (each with `time_ms` and its RFC 3339 `time`)
//! - `GET /metrics` — OpenMetrics: every disk and component the server knows
//! - `GET /api/components` — the registered components
//! - `GET /api/disks/{disk}/points` — the disk's recovery points, from its master target
//! - `POST /api/protect` `{"agent", "disk", "process_server"?, "master_target"?}`
//! - `POST /api/unprotect` `{"disk", "keep_replica"?}`
//! - `POST /api/disks/{disk}/settings` — a `PolicyChange` in base units
//!
//! Reads come from the driver's last status snapshot; commands go to the core through the
//! driver and are answered once their changes are durable: 200 `{"result": text}`, or 400
//! (invalid), 404 (unknown) or 409 (refused) with `{"error": text}`.

use crate::drivers::config_server::CsClient;
use crate::http::{error, json, Client};
use crate::transport::Transport;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use haven_core::config_server::{
    Command, CommandErrorKind, CommandResult, PolicyChange, StatusView,
};
use haven_core::ids::{ComponentId, DiskId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Master targets whose API clients are kept (one keep-alive connection each).
const MT_CLIENTS_MAX: usize = 256;

pub struct CsApi<T: Transport> {
    pub cs: CsClient,
    transport: T,
    /// Clients of the master targets' APIs, by address.
    master_targets: Mutex<BTreeMap<String, Arc<Client<T>>>>,
}

impl<T: Transport> CsApi<T> {
    pub fn new(cs: CsClient, transport: T) -> Self {
        CsApi {
            cs,
            transport,
            master_targets: Mutex::new(BTreeMap::new()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectBody {
    agent: ComponentId,
    disk: DiskId,
    #[serde(default)]
    process_server: Option<ComponentId>,
    #[serde(default)]
    master_target: Option<ComponentId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnprotectBody {
    disk: DiskId,
    #[serde(default)]
    keep_replica: bool,
}

type St<T> = State<Arc<CsApi<T>>>;

/// The configuration server's routes.
pub fn router<T: Transport>(api: CsApi<T>) -> Router {
    Router::new()
        .route("/api/status", get(status::<T>))
        .route("/metrics", get(metrics::<T>))
        .route("/api/components", get(components::<T>))
        .route("/api/disks/{disk}/points", get(points::<T>))
        .route("/api/protect", post(protect::<T>))
        .route("/api/unprotect", post(unprotect::<T>))
        .route("/api/disks/{disk}/settings", post(settings::<T>))
        .with_state(Arc::new(api))
}

async fn status<T: Transport>(State(api): St<T>) -> Response {
    json(StatusCode::OK, &status_json(&api.cs.status()))
}

/// The status as `GET /api/status` serves it: the snapshot, with each event's time also in
/// RFC 3339 (`time`, beside `time_ms`) for people and scripts.
pub fn status_json(status: &StatusView) -> serde_json::Value {
    let mut v = serde_json::to_value(status).expect("a status serializes");
    let events = v.get_mut("events").and_then(|e| e.as_array_mut());
    for e in events.into_iter().flatten() {
        let time = e.get("time_ms").and_then(|t| t.as_u64());
        if let (Some(ms), Some(obj)) = (time, e.as_object_mut()) {
            let text = super::time_rfc3339(ms.saturating_mul(1000));
            obj.insert("time".into(), serde_json::Value::String(text));
        }
    }
    v
}

async fn metrics<T: Transport>(State(api): St<T>) -> Response {
    let status = api.cs.status();
    crate::metrics::Metrics::default()
        .status(&status)
        .response_owned()
}

async fn components<T: Transport>(State(api): St<T>) -> Response {
    json(StatusCode::OK, &api.cs.status().components)
}

async fn protect<T: Transport>(
    State(api): St<T>,
    body: Result<Json<ProtectBody>, JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(r) => return bad_body(r),
    };
    let cmd = Command::Protect {
        agent: b.agent,
        disk: b.disk,
        process_server: b.process_server,
        master_target: b.master_target,
    };
    answer(api.cs.command(cmd).await)
}

async fn unprotect<T: Transport>(
    State(api): St<T>,
    body: Result<Json<UnprotectBody>, JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(r) => return bad_body(r),
    };
    let cmd = Command::Unprotect {
        disk: b.disk,
        keep_replica: b.keep_replica,
    };
    answer(api.cs.command(cmd).await)
}

async fn settings<T: Transport>(
    State(api): St<T>,
    Path(disk): Path<String>,
    body: Result<Json<PolicyChange>, JsonRejection>,
) -> Response {
    let disk = match DiskId::new(disk) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match body {
        Ok(Json(change)) => answer(api.cs.command(Command::Settings { disk, change }).await),
        Err(r) => bad_body(r),
    }
}

/// A body that is not the expected JSON: the answer names what is wrong with it (413 when it
/// is too large, 415 without a JSON content type, 400 otherwise).
fn bad_body(r: JsonRejection) -> Response {
    error(
        r.status(),
        &format!(
            "request body is not the expected JSON: {}; see docs/api.md",
            r.body_text()
        ),
    )
}

fn answer(result: CommandResult) -> Response {
    match result {
        Ok(text) => json(StatusCode::OK, &serde_json::json!({ "result": text })),
        Err(e) => {
            let status = match e.kind {
                CommandErrorKind::Invalid => StatusCode::BAD_REQUEST,
                CommandErrorKind::Unknown => StatusCode::NOT_FOUND,
                CommandErrorKind::Refused => StatusCode::CONFLICT,
            };
            error(status, &e.message)
        }
    }
}

/// The disk's recovery points, asked of its master target through the transport.
async fn points<T: Transport>(State(api): St<T>, Path(disk): Path<String>) -> Response {
    let disk = match DiskId::new(disk) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let addr = {
        let status = api.cs.status();
        match status.disks.iter().find(|d| d.disk == disk) {
            Some(d) => d.master_target_api.clone(),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no disk {disk} is known; see `haven status`"),
                )
            }
        }
    };
    let Some(addr) = addr.filter(|a| !a.is_empty()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("disk {disk} has no master target with an API yet"),
        );
    };
    let client = api.master_target(&addr);
    match client
        .get_json::<serde_json::Value>(&format!("/replicas/{disk}/points"))
        .await
    {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            &format!("master target at {addr}: {e}"),
        ),
    }
}

impl<T: Transport> CsApi<T> {
    fn master_target(&self, addr: &str) -> Arc<Client<T>> {
        let mut clients = self.master_targets.lock().expect("client table");
        if !clients.contains_key(addr) && clients.len() >= MT_CLIENTS_MAX {
            clients.clear();
        }
        clients
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Client::new(self.transport.clone(), addr)))
            .clone()
    }
}
