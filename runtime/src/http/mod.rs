//! HTTP for every role's API: axum routers served by hyper 1 over the project's [`Transport`],
//! and a keep-alive client on hyper's connection API over the same trait, so that the turmoil
//! level runs the very code that production runs.
//!
//! * Server: [`serve_connection`] serves one connection (HTTP/1.1, keep-alive) with a router;
//!   [`json`] and [`error`] build the API's responses (`{"error": text}` for every failure).
//! * Client: [`Client`] keeps one connection to one server and reconnects when it breaks;
//!   [`get_json`] and [`post_json`] are the console's one-shot calls over TCP.
//!
//! [`Transport`]: crate::transport::Transport

mod client;
pub mod range;
mod server;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use bytes::Bytes;
pub use http_body_util::BodyExt;
pub use hyper::body::Incoming;
pub use hyper::Method;

/// The `Content-Length` of a response, when it has a valid one.
pub fn content_length<B>(resp: &hyper::Response<B>) -> Option<u64> {
    resp.headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub use client::{get_json, ok_or_status, parse_base_url, post_json, read_body, Client};
pub use server::{error, json, serve_connection};

/// Largest accepted request body. API bodies are small JSON documents; image data only ever
/// flows server to client.
pub const HTTP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Largest request head hyper buffers (request line and headers).
pub const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// How long a client may take to send a request's head, so that a silent or trickling client
/// cannot hold a connection task forever.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect timeout of the client.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whole-exchange timeout of a JSON call: a console call fails with a message rather than hang
/// on a wedged server.
pub const HTTP_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest JSON response body the client buffers.
pub const HTTP_JSON_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest error body read to build an [`HttpError::Status`] message.
pub const HTTP_ERROR_BODY_BYTES_MAX: usize = 64 * 1024;

/// Errors of the HTTP client. Messages say what went wrong and, where the operator can act,
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {err}; is it running? (for the configuration server, set --api or HAVEN_API)")]
    Connect { addr: String, err: std::io::Error },
    #[error(
        "the connection to {addr} failed: {err}; retry, and check the server's log if it persists"
    )]
    Connection { addr: String, err: String },
    #[error("no response from {addr} within {secs} s; is the server overloaded or hung?")]
    ResponseTimeout { addr: String, secs: u64 },
    #[error("the response body exceeds the limit of {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("server answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cannot encode the request as JSON: {0}")]
    Encode(String),
    #[error("the server's response is not the expected JSON ({0}); are client and server the same Haven version?")]
    Decode(String),
    #[error("invalid API address {url:?}: {reason}; expected http://host:port or host:port")]
    BadUrl { url: String, reason: String },
    #[error("invalid request {what:?}: {reason}")]
    BadRequest { what: String, reason: String },
}
