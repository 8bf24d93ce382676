//! A tiny, dependency-free HTTP/1.1 server and client for Haven's REST API
//! and image downloads.
//!
//! Deliberately minimal: one request per connection (`Connection: close`),
//! `Content-Length` bodies only, no TLS, no chunked encoding. That is all the
//! configuration API and image streaming need, and it keeps the attack
//! surface small enough to reason about. Everything is generic over the
//! stream type so the same code runs over real TCP and over simulated TCP
//! (turmoil) in the deterministic simulation tests.
//!
//! * Server: [`serve`] (accept loop) and [`serve_connection`] (one
//!   connection) dispatch a parsed [`Request`] to a [`Handler`] and write its
//!   [`Response`], which may be a byte buffer or a channel-fed stream.
//! * Client: [`request`] sends one request over any stream and returns a
//!   [`ClientResponse`] whose body is read incrementally; [`get_json`] and
//!   [`post_json`] are the convenience calls the CLI uses over tokio TCP.

mod client;
mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::{get_json, parse_base_url, post_json, request, ClientResponse};
pub use server::{serve, serve_connection, Body, Handler, Request, Response};

/// Largest accepted message head (request/status line plus headers). Real
/// API requests are a few hundred bytes; 16 KiB leaves room for long query
/// strings while bounding the memory a client can make us buffer.
pub const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Largest accepted request body. API bodies are small JSON documents; image
/// data only ever flows server → client, so 1 MiB is generous.
pub const HTTP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Largest number of header lines in one message; bounds per-request work.
pub const HTTP_HEADERS_MAX: usize = 64;

/// How long a client may take to deliver the whole request (head and body),
/// so a silent or trickling client cannot hold a server task forever.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server keeps a rejected connection open to deliver the error
/// response and drain unread input. Closing a socket with unread input makes
/// the kernel send RST, which can destroy the error response in flight.
pub const HTTP_LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes drained from a rejected connection before giving up on it.
pub const HTTP_DRAIN_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Connect timeout for [`get_json`] / [`post_json`].
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whole-exchange timeout for [`get_json`] / [`post_json`]: a CLI call must
/// fail with a message rather than hang on a wedged server.
pub const HTTP_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest JSON response body [`get_json`] / [`post_json`] will buffer.
pub const HTTP_JSON_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest error body read to build an [`HttpError::Status`] message.
pub const HTTP_ERROR_BODY_BYTES_MAX: usize = 64 * 1024;

/// Errors from the HTTP server and client. Messages say what went wrong and,
/// where the operator can act, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to the configuration server at {addr}: {err}; is it running? set --api or HAVEN_API")]
    Connect { addr: String, err: std::io::Error },
    #[error("network I/O error: {0}; check connectivity and retry")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection before sending anything")]
    Closed,
    #[error("the server at {addr} closed the connection without answering; check the server log")]
    NoResponse { addr: String },
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
    #[error("HTTP message head exceeds {max} bytes; shorten the URL or headers")]
    HeadTooLarge { max: usize },
    #[error("HTTP message has more than {max} header lines")]
    TooManyHeaders { max: usize },
    #[error("body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { len: u64, max: usize },
    #[error(
        "request body must be sent with Content-Length; chunked transfer encoding is not supported"
    )]
    LengthRequired,
    #[error("the client did not send a complete request within {secs} s; closing the connection")]
    HeadTimeout { secs: u64 },
    #[error("no response from {addr} within {secs} s; is the server overloaded or hung?")]
    ResponseTimeout { addr: String, secs: u64 },
    #[error("the connection ended after {received} of {expected} body bytes ({reason}); the transfer was cut short, retry it")]
    Truncated {
        expected: u64,
        received: u64,
        reason: String,
    },
    #[error("response body aborted after {sent} of {len} bytes: {reason}; closed the connection so the client sees a short body")]
    StreamAborted { sent: u64, len: u64, reason: String },
    #[error("server answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cannot encode the request as JSON: {0}")]
    Encode(String),
    #[error("the server's response is not the expected JSON ({0}); are client and server the same Haven version?")]
    Decode(String),
    #[error("invalid API address {url:?}: {reason}; expected http://host:port or host:port")]
    BadUrl { url: String, reason: String },
}

impl HttpError {
    /// The status the server answers with when reading a request fails.
    fn server_status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTimeout { .. } => 408,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            _ => 500,
        }
    }
}
