//! The server half: request parsing, response writing, the accept loop.

use super::wire::{self, clip, content_length, header, parse_headers, percent_decode, read_head};
use super::{
    HttpError, HTTP_BODY_BYTES_MAX, HTTP_DRAIN_BYTES_MAX, HTTP_HEAD_BYTES_MAX, HTTP_HEAD_TIMEOUT,
    HTTP_LINGER_TIMEOUT,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin at 100% CPU while the condition persists.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A parsed request. `path` is kept percent-encoded (decoding it could turn
/// `%2F` into a path separator); the query is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Case-insensitive header lookup.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A response body: either fully in memory, or streamed from a channel
/// (image downloads) with the total length announced up front.
#[derive(Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    Stream {
        len: u64,
        rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    },
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Body,
}

impl Response {
    /// A JSON response. Serialization failure becomes a 500 rather than a
    /// panic: a handler bug must not take down the connection task.
    pub fn json<T: Serialize>(status: u16, v: &T) -> Self {
        match serde_json::to_vec(v) {
            Ok(bytes) => Response {
                status,
                content_type: "application/json".into(),
                body: Body::Bytes(bytes),
            },
            Err(e) => Response::error(500, &format!("cannot encode response as JSON: {e}")),
        }
    }

    pub fn text(status: u16, s: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: Body::Bytes(s.into().into_bytes()),
        }
    }

    /// `{"error": message}` — the shape the client turns into
    /// [`HttpError::Status`].
    pub fn error(status: u16, message: &str) -> Self {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// A streamed `application/octet-stream` body of exactly `len` bytes.
    /// The producer sends chunks, or `Err` to abort (the connection is then
    /// closed short so the client notices).
    pub fn stream(len: u64, rx: mpsc::Receiver<Result<Vec<u8>, String>>) -> Self {
        Response {
            status: 200,
            content_type: "application/octet-stream".into(),
            body: Body::Stream { len, rx },
        }
    }
}

/// Application logic behind the server.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// Accept connections forever, serving each on its own task. Errors are
/// logged, never fatal: one bad client must not stop the API.
pub async fn serve<H: Handler>(listener: tokio::net::TcpListener, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Responses are written as head + body; without NODELAY,
                // Nagle plus delayed ACK can add ~40 ms to small replies.
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, handler).await {
                        tracing::warn!(%peer, "http connection failed: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("http accept failed: {e}; retrying");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Serve exactly one request on `stream`, then close it.
pub async fn serve_connection<S, H>(stream: S, handler: Arc<H>) -> Result<(), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    serve_connection_with_timeout(stream, handler, HTTP_HEAD_TIMEOUT).await
}

/// [`serve_connection`] with an explicit request-read timeout, so tests can
/// exercise the timeout without waiting [`HTTP_HEAD_TIMEOUT`].
pub(crate) async fn serve_connection_with_timeout<S, H>(
    mut stream: S,
    handler: Arc<H>,
    head_timeout: Duration,
) -> Result<(), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let req = match tokio::time::timeout(head_timeout, read_request(&mut stream)).await {
        Ok(Ok(req)) => req,
        // A connect-and-close (health probe, port scan) is not an error.
        Ok(Err(HttpError::Closed)) => return Ok(()),
        Ok(Err(e)) => {
            reject(&mut stream, &e).await;
            return Err(e);
        }
        Err(_elapsed) => {
            let e = HttpError::HeadTimeout {
                secs: head_timeout.as_secs(),
            };
            reject(&mut stream, &e).await;
            return Err(e);
        }
    };
    tracing::debug!(method = %req.method, path = %req.path, "http request");
    let response = handler.handle(req).await;
    write_response(&mut stream, response).await?;
    // Best effort: the response is already flushed.
    let _ = stream.shutdown().await;
    Ok(())
}

async fn read_request<S>(stream: &mut S) -> Result<Request, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = read_head(stream, HTTP_HEAD_BYTES_MAX).await?;
    let mut lines = head.text.split("\r\n");
    let (method, target) = parse_request_line(lines.next().unwrap_or(""))?;
    let headers = parse_headers(lines)?;
    if header(&headers, "transfer-encoding").is_some() {
        return Err(HttpError::LengthRequired);
    }
    let len = content_length(&headers)?.unwrap_or(0);
    if len > HTTP_BODY_BYTES_MAX as u64 {
        return Err(HttpError::BodyTooLarge {
            len,
            max: HTTP_BODY_BYTES_MAX,
        });
    }
    let (path, query) = split_target(target)?;
    // curl sends `Expect: 100-continue` for larger bodies and would otherwise
    // stall a second before sending the body anyway.
    let expects =
        header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects && len > 0 && head.rest.is_empty() {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        stream.flush().await?;
    }
    let body = read_body(stream, head.rest, len as usize).await?;
    Ok(Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body,
    })
}

/// `METHOD /target HTTP/1.x` → (method, target).
fn parse_request_line(line: &str) -> Result<(&str, &str), HttpError> {
    let bad = || HttpError::Malformed(format!("invalid request line {:?}", clip(line)));
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(bad());
    }
    Ok((method, target))
}

/// Split `/path?a=1&b=x%20y` into the raw path and the decoded query map.
/// Repeated keys keep the last value.
fn split_target(target: &str) -> Result<(String, BTreeMap<String, String>), HttpError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut map = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(percent_decode(k, true)?, percent_decode(v, true)?);
    }
    Ok((path.to_string(), map))
}

async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut body: Vec<u8>,
    len: usize,
) -> Result<Vec<u8>, HttpError> {
    // Bytes beyond Content-Length would be a pipelined request; we answer one
    // request per connection, so they are dropped.
    body.truncate(len);
    let have = body.len();
    body.resize(len, 0);
    stream.read_exact(&mut body[have..]).await.map_err(|e| {
        HttpError::Malformed(format!(
            "request body ended after fewer than {len} bytes: {e}"
        ))
    })?;
    Ok(body)
}

/// Answer a request that could not be read with a JSON error, then close
/// gracefully. Bounded by a timeout: the peer may be the silent one.
async fn reject<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, e: &HttpError) {
    let response = Response::error(e.server_status(), &e.to_string());
    let _ = tokio::time::timeout(HTTP_LINGER_TIMEOUT, async {
        if write_response(stream, response).await.is_ok() {
            let _ = stream.shutdown().await;
            drain(stream).await;
        }
    })
    .await;
}

/// Read and discard input until the peer closes. Closing with unread input
/// makes TCP send RST, which can destroy the error response before the
/// client reads it.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < HTTP_DRAIN_BYTES_MAX {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: Response,
) -> Result<(), HttpError> {
    // Handlers are trusted, but a CR/LF here would corrupt the head.
    let content_type = if response.content_type.contains(['\r', '\n']) {
        "application/octet-stream"
    } else {
        response.content_type.as_str()
    };
    let len = match &response.body {
        Body::Bytes(b) => b.len() as u64,
        Body::Stream { len, .. } => *len,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        response.status,
        wire::reason_phrase(response.status),
    );
    match response.body {
        Body::Bytes(bytes) => {
            // One write so small responses go out in one segment.
            let mut out = head.into_bytes();
            out.extend_from_slice(&bytes);
            stream.write_all(&out).await?;
        }
        Body::Stream { len, rx } => {
            stream.write_all(head.as_bytes()).await?;
            pump_stream(stream, len, rx).await?;
        }
    }
    stream.flush().await?;
    Ok(())
}

/// Copy channel chunks to the stream, enforcing exactly `len` bytes. On any
/// producer failure we return an error so the caller drops the connection
/// without completing the body: the client's length check catches it.
async fn pump_stream<S: AsyncWrite + Unpin>(
    stream: &mut S,
    len: u64,
    mut rx: mpsc::Receiver<Result<Vec<u8>, String>>,
) -> Result<(), HttpError> {
    let mut sent = 0u64;
    let abort = |sent, reason: String| HttpError::StreamAborted { sent, len, reason };
    while sent < len {
        match rx.recv().await {
            Some(Ok(chunk)) => {
                if sent + chunk.len() as u64 > len {
                    return Err(abort(
                        sent,
                        "producer sent more than the announced length".into(),
                    ));
                }
                stream.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            Some(Err(reason)) => return Err(abort(sent, reason)),
            None => return Err(abort(sent, "producer ended early".into())),
        }
    }
    Ok(())
}
