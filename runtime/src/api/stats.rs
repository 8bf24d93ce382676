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

/// `/metrics` from `metrics(stats)` and `/stats` as JSON, both from the latest snapshot.
fn routes<S>(
    stats: watch::Receiver<S>,
    metrics: impl Fn(&S) -> axum::response::Response + Clone + Send + Sync + 'static,
) -> Router
where
    S: serde::Serialize + Clone + Send + Sync + 'static,
{
    let s2 = stats.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = metrics(&stats.borrow());
                async move { r }
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

/// The agent's routes.
pub fn agent_router(stats: watch::Receiver<AgentStats>) -> Router {
    routes(stats, |s: &AgentStats| {
        Metrics::default().sources(&s.disks).response_owned()
    })
}

/// The process server's routes.
pub fn process_server_router(
    component: ComponentId,
    stats: watch::Receiver<ProcessServerStats>,
) -> Router {
    routes(stats, move |s: &ProcessServerStats| {
        Metrics::default().cache(&component, s).response_owned()
    })
}
