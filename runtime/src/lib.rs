//! haven-runtime: tokio drivers, file and redb stores, NBD server, TCP transport, HTTP API.
pub mod http;
pub mod nbd;
pub mod segment;
pub mod vfs;
