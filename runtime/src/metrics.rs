//! `/metrics` on every role's API: OpenMetrics text encoded by prometheus-client from the stats
//! each role already reports in its heartbeats (names and labels in docs/api.md). Each role's
//! endpoint shows what that role knows; the configuration server's shows every disk and
//! component it has heard of.
//!
//! The values are snapshots, so each scrape builds a fresh registry: nothing is kept between
//! scrapes and a disk that went away disappears from the next one.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use haven_core::config_server::{ComponentView, StatusView};
use haven_core::ids::ComponentId;
use haven_core::stats::{AgentDiskStats, ProcessServerStats, ReplicaStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    disk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentRoleLabels {
    component: String,
    role: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The metrics of one scrape, filled from whatever stats the role has.
#[derive(Default)]
pub struct Metrics {
    sources: Option<SourceFamilies>,
    caches: Option<CacheFamilies>,
    replicas: Option<ReplicaFamilies>,
    up: Option<Family<ComponentRoleLabels, Gauge>>,
}

#[derive(Default)]
struct SourceFamilies {
    rpo: Family<DiskLabels, F64Gauge>,
    written: Family<DiskLabels, Counter>,
    buffered: Family<DiskLabels, Gauge>,
}

#[derive(Default)]
struct CacheFamilies {
    bytes: Family<ComponentLabels, Gauge>,
    max: Family<ComponentLabels, Gauge>,
    bytes_in: Family<ComponentLabels, Counter>,
    bytes_out: Family<ComponentLabels, Counter>,
}

#[derive(Default)]
struct ReplicaFamilies {
    applied: Family<DiskLabels, Gauge>,
    journal: Family<DiskLabels, Gauge>,
    points: Family<DiskLabels, Gauge>,
    consistent: Family<DiskLabels, Gauge>,
}

fn disk(d: &impl std::fmt::Display) -> DiskLabels {
    DiskLabels {
        disk: d.to_string(),
    }
}

/// Saturating: a gauge is an i64.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The source side of an agent's disks.
    pub fn sources(&mut self, disks: &[AgentDiskStats]) -> &mut Self {
        let f = self.sources.get_or_insert_with(Default::default);
        for d in disks {
            let l = disk(&d.disk);
            f.rpo.get_or_create(&l).set(d.rpo_ms as f64 / 1000.0);
            f.written.get_or_create(&l).inc_by(d.bytes_written);
            f.buffered.get_or_create(&l).set(i(d.buffered_bytes));
        }
        self
    }

    /// A process server's cache and traffic.
    pub fn cache(&mut self, component: &ComponentId, s: &ProcessServerStats) -> &mut Self {
        let f = self.caches.get_or_insert_with(Default::default);
        let l = ComponentLabels {
            component: component.to_string(),
        };
        f.bytes.get_or_create(&l).set(i(s.cache_bytes));
        f.max.get_or_create(&l).set(i(s.cache_bytes_max));
        f.bytes_in.get_or_create(&l).inc_by(s.bytes_in);
        f.bytes_out.get_or_create(&l).inc_by(s.bytes_out);
        self
    }

    /// Replicas of a master target.
    pub fn replicas<'a>(
        &mut self,
        replicas: impl IntoIterator<Item = &'a ReplicaStats>,
    ) -> &mut Self {
        let f = self.replicas.get_or_insert_with(Default::default);
        for r in replicas {
            let l = disk(&r.disk);
            f.applied.get_or_create(&l).set(i(r.applied_seq));
            f.journal.get_or_create(&l).set(i(r.journal_bytes));
            f.points.get_or_create(&l).set(i(r.points));
            f.consistent
                .get_or_create(&l)
                .set(i64::from(r.inconsistent.is_none()));
        }
        self
    }

    /// The registered components, 1 when online.
    pub fn components(&mut self, components: &[ComponentView]) -> &mut Self {
        let f = self.up.get_or_insert_with(Default::default);
        for c in components {
            let l = ComponentRoleLabels {
                component: c.id.to_string(),
                role: c.role.clone(),
            };
            f.get_or_create(&l).set(i64::from(c.online));
        }
        self
    }

    /// Everything the configuration server knows.
    pub fn status(&mut self, s: &StatusView) -> &mut Self {
        let sources: Vec<_> = s.disks.iter().filter_map(|d| d.source.clone()).collect();
        self.sources(&sources);
        self.replicas(s.disks.iter().filter_map(|d| d.replica.as_ref()));
        for (id, ps) in &s.process_servers {
            self.cache(id, ps);
        }
        self.components(&s.components)
    }

    /// The OpenMetrics text of what was filled in.
    pub fn encode(self) -> Result<String, std::fmt::Error> {
        let mut r = Registry::with_prefix("haven");
        if let Some(f) = self.sources {
            r.register_with_unit(
                "disk_rpo",
                "How far the replica is behind the source: the age of the oldest write not yet applied at the master target",
                Unit::Seconds,
                f.rpo,
            );
            r.register_with_unit(
                "source_written",
                "Bytes the workload wrote to the protected disk",
                Unit::Bytes,
                f.written,
            );
            r.register_with_unit(
                "source_buffered",
                "Bytes of writes the agent holds that the process server has not yet cached",
                Unit::Bytes,
                f.buffered,
            );
        }
        if let Some(f) = self.caches {
            r.register_with_unit(
                "process_server_cache",
                "Bytes in the process server's durable cache",
                Unit::Bytes,
                f.bytes,
            );
            r.register_with_unit(
                "process_server_cache_max",
                "The process server's cache quota",
                Unit::Bytes,
                f.max,
            );
            r.register(
                "process_server_bytes_in",
                "Bytes of batches the process server received from agents",
                f.bytes_in,
            );
            r.register(
                "process_server_bytes_out",
                "Bytes of batches the process server forwarded to master targets",
                f.bytes_out,
            );
        }
        if let Some(f) = self.replicas {
            r.register(
                "replica_applied_seq",
                "The newest write applied to the replica",
                f.applied,
            );
            r.register_with_unit(
                "replica_journal",
                "Bytes of the replica's retention journal",
                Unit::Bytes,
                f.journal,
            );
            r.register("replica_points", "Recovery points of the replica", f.points);
            r.register(
                "replica_consistent",
                "1 when the replica is consistent (its points can be exported), 0 when a resync is needed",
                f.consistent,
            );
        }
        if let Some(f) = self.up {
            r.register(
                "component_up",
                "1 when the component is online at the configuration server",
                f,
            );
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)?;
        Ok(out)
    }

    /// The scrape's HTTP response (for a builder chain: `Metrics::default().x(..).response_owned()`).
    pub fn response_owned(&mut self) -> Response {
        std::mem::take(self).response()
    }

    /// The scrape's HTTP response.
    pub fn response(self) -> Response {
        match self.encode() {
            Ok(text) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                text,
            )
                .into_response(),
            Err(e) => crate::http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode the metrics: {e}"),
            ),
        }
    }
}
