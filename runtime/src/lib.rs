//! haven-runtime: tokio drivers, file and redb stores, NBD server, TCP transport, HTTP API.
pub mod alloc;
pub mod api;
pub mod drivers;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod nbd;
pub mod net;
pub mod netlog;
pub mod segment;
pub mod stores;
pub mod transport;
pub mod vfs;
