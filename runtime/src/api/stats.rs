//! The small API of the roles that have no other: the agent's and the process server's
//! `GET /metrics` and `GET /stats` (the JSON of what they report in their heartbeats), read
//! from the stats snapshot their driver publishes.

use crate::http::json;
use crate::metrics::Metrics;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use haven_core::ids::ComponentId;
use haven_core::stats::{AgentStats, ProcessServerStats};
use tokio::sync::watch;

/// How often a driver refreshes its stats snapshot at most (they are also refreshed on each
/// of its timer wake-ups, which come at least every heartbeat interval).
pub const STATS_PUBLISH_MS: u64 = 250;

/// The agent's routes.
pub fn agent_router(stats: watch::Receiver<AgentStats>) -> Router {
    let s2 = stats.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let s = stats.borrow().clone();
                async move { Metrics::default().sources(&s.disks).response_owned() }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let s = s2.borrow().clone();
                async move { json(StatusCode::OK, &s) }
            }),
        )
}

/// The process server's routes.
pub fn process_server_router(
    component: ComponentId,
    stats: watch::Receiver<ProcessServerStats>,
) -> Router {
    let s2 = stats.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let s = stats.borrow().clone();
                let c = component.clone();
                async move { Metrics::default().cache(&c, &s).response_owned() }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let s = s2.borrow().clone();
                async move { json(StatusCode::OK, &s) }
            }),
        )
}
