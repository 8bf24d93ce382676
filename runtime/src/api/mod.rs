//! HTTP APIs: the configuration server's REST API (documented in docs/api.md) and the master
//! target's data API (recovery points and images), which the console uses for exports;
//! every role's `/metrics` (OpenMetrics).

pub mod config_server;
pub mod master_target;
pub mod stats;
