//! NBD server (fixed newstyle handshake, simple replies), generic over the export backend.
//!
//! Flow of one connection ([`serve_connection`]):
//!
//! 1. [`handshake`]: the server greets with `NBDMAGIC` + `IHAVEOPT` and the
//!    `FIXED_NEWSTYLE | NO_ZEROES` handshake flags, reads the client flags, then answers
//!    options (`LIST`, `INFO`, `GO`, `EXPORT_NAME`, `ABORT`; everything else gets
//!    `NBD_REP_ERR_UNSUP`) until the client selects an export or leaves.
//! 2. [`transmission`]: a reader loop parses requests in arrival order, validates them
//!    (bounds, read-only, payload size) and calls the backend, whose returned future is
//!    spawned so up to [`NBD_INFLIGHT_MAX`] requests run concurrently. Completed requests
//!    go through a channel to a single writer task, so replies never interleave on the
//!    socket, may leave out of order (each carries the client's cookie), and the buffered
//!    writer is flushed only when no further reply is queued.
//!
//! The protocol constants and wire encoding live in [`proto`]; [`FileExport`] is a plain
//! file backend used by tests and for serving raw images.
//!
//! Error choices for out-of-range requests follow the spec's SHOULDs: `EINVAL` for READ and
//! TRIM, `ENOSPC` for WRITE and WRITE_ZEROES, `EPERM` for any write-class command on a
//! read-only export. The connection stays open after all of these; only protocol violations
//! that desynchronise the stream (bad magic, oversized WRITE payload) close it.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};

mod file_export;
pub mod handshake;
pub mod proto;
pub mod transmission;

#[cfg(test)]
mod raw_tests;
#[cfg(test)]
mod tests;

pub use file_export::FileExport;
pub use proto::{
    NBD_INFLIGHT_BYTES_MAX, NBD_INFLIGHT_MAX, NBD_OPTION_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX,
};

/// A block device served over NBD. The server does all bounds checking, so an implementation
/// may assume `offset + len <= size_bytes()` for every call.
pub trait NbdExport: Send + Sync + 'static {
    /// Size in bytes; constant while served.
    fn size_bytes(&self) -> u64;
    /// Read-only exports advertise `NBD_FLAG_READ_ONLY`; the server rejects writes with `EPERM`
    /// without calling the backend.
    fn read_only(&self) -> bool {
        false
    }
    /// Called in request arrival order on the connection's reader; an implementation may enqueue synchronously
    /// at call time and return a future that completes when the data is read.
    /// The returned buffer must be exactly `len` bytes long (anything else becomes `EIO`).
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<u8>, ExportError>> + Send + 'static;
    /// Write `data` at `offset`; with `fua` the data must be durable when the future completes.
    fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send + 'static;
    /// Advisory discard of a range; later reads of it may return anything the backend chooses.
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send + 'static;
    /// Make a range read back as zeroes; with `no_hole` the backend must keep it allocated.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> impl Future<Output = Result<(), ExportError>> + Send + 'static;
    /// Make every completed write durable. Must cover writes from all connections, because the
    /// server advertises `NBD_FLAG_CAN_MULTI_CONN`.
    fn flush(&self) -> impl Future<Output = Result<(), ExportError>> + Send + 'static;
}

/// Failure reported by an export backend; mapped to an NBD errno in the reply.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("no space left")]
    NoSpace,
    #[error("export is read-only")]
    ReadOnly,
    #[error("export is shutting down")]
    ShuttingDown,
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol in a way that loses stream framing; the connection is closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// One named export.
struct ExportEntry<E> {
    name: String,
    description: String,
    export: Arc<E>,
}

/// Ordered set of exports served by a listener. The first one is the default export, selected
/// by an empty name.
pub struct Exports<E> {
    entries: Vec<ExportEntry<E>>,
}

impl<E: NbdExport> Default for Exports<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: NbdExport> Exports<E> {
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Add an export without description. A later export with the same name is shadowed by
    /// the earlier one (lookups return the first match).
    pub fn add(&mut self, name: impl Into<String>, export: Arc<E>) {
        self.add_with_description(name, "", export);
    }

    /// Add an export with a human-readable description (sent in `NBD_REP_SERVER` and
    /// `NBD_INFO_DESCRIPTION`).
    pub fn add_with_description(
        &mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        export: Arc<E>,
    ) {
        self.entries.push(ExportEntry {
            name: name.into(),
            description: description.into(),
            export,
        });
    }

    /// Look up an export by name; the empty name means the default (first) export.
    pub fn get(&self, name: &str) -> Option<&Arc<E>> {
        self.entry(name).map(|entry| &entry.export)
    }

    fn entry(&self, name: &str) -> Option<&ExportEntry<E>> {
        if name.is_empty() {
            return self.entries.first();
        }
        self.entries.iter().find(|entry| entry.name == name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(name, description)` pairs in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|entry| (entry.name.as_str(), entry.description.as_str()))
    }
}

/// Serve one client: handshake, then transmission until the client disconnects.
/// Returns `Ok(())` on an orderly end (ABORT, DISC, or EOF between requests).
pub async fn serve_connection<S, E>(stream: S, exports: Arc<Exports<E>>) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    E: NbdExport,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(proto::SOCKET_BUFFER_BYTES, read_half);
    let mut writer = BufWriter::with_capacity(proto::SOCKET_BUFFER_BYTES, write_half);
    let Some(selected) = handshake::negotiate(&mut reader, &mut writer, &exports).await? else {
        return Ok(());
    };
    tracing::debug!(export = %selected.name, "nbd: entering transmission");
    transmission::run(reader, writer, selected.export).await
}

/// Accept clients forever, serving each on its own task. Per-connection errors are logged and
/// never stop the listener.
pub async fn serve<E: NbdExport>(listener: tokio::net::TcpListener, exports: Arc<Exports<E>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Typically EMFILE/ENFILE: back off briefly instead of spinning.
                tracing::warn!(%err, "nbd: accept failed");
                tokio::time::sleep(proto::ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Replies are small and latency-bound; Nagle would add delay at low queue depth.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, %peer, "nbd: set_nodelay failed");
        }
        let exports = exports.clone();
        tokio::spawn(async move {
            match serve_connection(stream, exports).await {
                Ok(()) => tracing::debug!(%peer, "nbd: client disconnected"),
                Err(err) => tracing::warn!(%peer, %err, "nbd: connection ended with error"),
            }
        });
    }
}
