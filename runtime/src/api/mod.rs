//! HTTP APIs: the configuration server's REST API (documented in docs/api.md) and the master
//! target's data API (recovery points and images), which the console uses for exports;
//! every role's `/metrics` (OpenMetrics).

pub mod config_server;
pub mod master_target;
pub mod stats;

/// Microseconds since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2026-12-02T14:48:59.102Z`, the fraction cut, not rounded): how the APIs and the console show
/// a time, and what `haven export --point` takes back. A time past jiff's range (year 9999)
/// shows as `@SECONDS`.
pub fn time_rfc3339(us: u64) -> String {
    match i64::try_from(us).map(jiff::Timestamp::from_microsecond) {
        Ok(Ok(t)) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        _ => format!("@{}", us / 1_000_000),
    }
}
