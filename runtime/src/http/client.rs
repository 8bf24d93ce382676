//! The client half: one request per connection, incremental body reads,
//! JSON convenience calls for the CLI, API base-URL parsing.

use super::wire::{clip, content_length, header, parse_headers, read_head, reason_phrase};
use super::{
    HttpError, HTTP_CLIENT_TIMEOUT, HTTP_CONNECT_TIMEOUT, HTTP_ERROR_BODY_BYTES_MAX,
    HTTP_HEAD_BYTES_MAX, HTTP_JSON_RESPONSE_BYTES_MAX,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Buffer size [`ClientResponse::body_bytes`] reads with.
const BODY_READ_CHUNK: usize = 64 * 1024;

/// A response whose head has been read; the body is read on demand.
pub struct ClientResponse<S> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// `None` means the body runs until the server closes the connection.
    pub content_length: Option<u64>,
    stream: S,
    /// Body bytes that arrived together with the head.
    pending: Vec<u8>,
    pending_pos: usize,
    received: u64,
}

impl<S> fmt::Debug for ClientResponse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("content_length", &self.content_length)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> ClientResponse<S> {
    /// Case-insensitive header lookup.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Read the whole body, refusing more than `max` bytes.
    pub async fn body_bytes(mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        if let Some(len) = self.content_length.filter(|&len| len > max as u64) {
            return Err(HttpError::BodyTooLarge { len, max });
        }
        let capacity = self.content_length.unwrap_or(0) as usize;
        let mut out = Vec::with_capacity(capacity);
        let mut buf = vec![0u8; BODY_READ_CHUNK];
        loop {
            let n = self.read_chunk(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() + n > max {
                return Err(HttpError::BodyTooLarge {
                    len: (out.len() + n) as u64,
                    max,
                });
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Read up to `buf.len()` body bytes; `Ok(0)` at the end of the body.
    /// With a known Content-Length, a connection that ends early is an
    /// error ([`HttpError::Truncated`]) — this is how an aborted image
    /// stream is detected.
    pub async fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        let want = match self.content_length {
            Some(len) => buf
                .len()
                .min(usize::try_from(len - self.received).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if want == 0 {
            return Ok(0);
        }
        let n = if self.pending_pos < self.pending.len() {
            let n = want.min(self.pending.len() - self.pending_pos);
            buf[..n].copy_from_slice(&self.pending[self.pending_pos..self.pending_pos + n]);
            self.pending_pos += n;
            n
        } else {
            match self.stream.read(&mut buf[..want]).await {
                Ok(n) => n,
                Err(e) => return Err(self.cut_short(e.to_string()).unwrap_or(HttpError::Io(e))),
            }
        };
        if n == 0 {
            return match self.cut_short("closed by the server".into()) {
                Some(e) => Err(e),
                None => Ok(0),
            };
        }
        self.received += n as u64;
        Ok(n)
    }

    /// The truncation error, if the body has a known length.
    fn cut_short(&self, reason: String) -> Option<HttpError> {
        self.content_length.map(|expected| HttpError::Truncated {
            expected,
            received: self.received,
            reason,
        })
    }
}

/// Send one request over `stream` and read the response head. `host` goes
/// into the `Host` header. The request asks the server to close afterwards.
pub async fn request<S>(
    mut stream: S,
    method: &str,
    host: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
) -> Result<ClientResponse<S>, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    validate_request_parts(method, host, path_and_query)?;
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: haven\r\nAccept: */*\r\nConnection: close\r\n"
    );
    // Some servers insist on a length for POST/PUT even when it is zero.
    let len = body.map(<[u8]>::len);
    if let Some(len) = len.or(matches!(method, "POST" | "PUT" | "PATCH").then_some(0)) {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&out).await?;
    stream.flush().await?;

    let head = read_head(&mut stream, HTTP_HEAD_BYTES_MAX)
        .await
        .map_err(|e| match e {
            HttpError::Closed => HttpError::NoResponse {
                addr: host.to_string(),
            },
            e => e,
        })?;
    let mut lines = head.text.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    let headers = parse_headers(lines)?;
    if header(&headers, "transfer-encoding").is_some() {
        return Err(HttpError::Malformed(
            "chunked responses are not supported".into(),
        ));
    }
    // Bodiless statuses carry no body whatever the headers say.
    let bodiless = method == "HEAD" || status == 204 || status == 304;
    let content_length = if bodiless {
        Some(0)
    } else {
        content_length(&headers)?
    };
    Ok(ClientResponse {
        status,
        headers,
        content_length,
        stream,
        pending: head.rest,
        pending_pos: 0,
        received: 0,
    })
}

/// Refuse anything that could inject extra header lines into the request.
fn validate_request_parts(method: &str, host: &str, path: &str) -> Result<(), HttpError> {
    let clean = |s: &str| {
        !s.is_empty()
            && !s
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    };
    if !clean(method) || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed(format!(
            "invalid method {:?}",
            clip(method)
        )));
    }
    if !clean(host) {
        return Err(HttpError::Malformed(format!(
            "invalid host {:?}",
            clip(host)
        )));
    }
    if !clean(path) || !path.starts_with('/') {
        return Err(HttpError::Malformed(format!(
            "invalid request path {:?}: must start with '/' and be percent-encoded",
            clip(path)
        )));
    }
    Ok(())
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &str) -> Result<u16, HttpError> {
    let bad = || HttpError::Malformed(format!("invalid status line {:?}", clip(line)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(bad());
    }
    match code.parse::<u16>() {
        Ok(status) if (100..=599).contains(&status) => Ok(status),
        _ => Err(bad()),
    }
}

/// GET `path` from the server at `addr` ("host:port") and decode JSON.
pub async fn get_json<T: DeserializeOwned>(addr: &str, path: &str) -> Result<T, HttpError> {
    call_json(addr, "GET", path, None).await
}

/// POST `body` as JSON to `path` on the server at `addr` and decode JSON.
pub async fn post_json<B: Serialize, T: DeserializeOwned>(
    addr: &str,
    path: &str,
    body: &B,
) -> Result<T, HttpError> {
    let bytes = serde_json::to_vec(body).map_err(|e| HttpError::Encode(e.to_string()))?;
    call_json(addr, "POST", path, Some(&bytes)).await
}

async fn call_json<T: DeserializeOwned>(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<T, HttpError> {
    let exchange = async {
        let connect_err = |err| HttpError::Connect {
            addr: addr.to_string(),
            err,
        };
        let stream = tokio::time::timeout(HTTP_CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        let response = request(stream, method, addr, path, body).await?;
        decode_json(response).await
    };
    tokio::time::timeout(HTTP_CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| HttpError::ResponseTimeout {
            addr: addr.to_string(),
            secs: HTTP_CLIENT_TIMEOUT.as_secs(),
        })?
}

/// 2xx → decoded body; anything else → [`HttpError::Status`] carrying the
/// server's `{"error": ...}` message, or its body text.
async fn decode_json<T, S>(response: ClientResponse<S>) -> Result<T, HttpError>
where
    T: DeserializeOwned,
    S: AsyncRead + Unpin,
{
    let status = response.status;
    if !(200..300).contains(&status) {
        // The status is the real error; a broken error body must not mask it.
        let body = response
            .body_bytes(HTTP_ERROR_BODY_BYTES_MAX)
            .await
            .unwrap_or_default();
        return Err(HttpError::Status {
            status,
            message: error_message(status, &body),
        });
    }
    let body = response.body_bytes(HTTP_JSON_RESPONSE_BYTES_MAX).await?;
    serde_json::from_slice(&body).map_err(|e| HttpError::Decode(e.to_string()))
}

fn error_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        reason_phrase(status).to_string()
    } else {
        clip(text).to_string()
    }
}

/// Normalize an API base URL to `host:port`. Accepts `http://host:port` or
/// `host:port`, with an optional trailing slash.
pub fn parse_base_url(url: &str) -> Result<String, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim();
    let lower = trimmed.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        return Err(bad(
            "https is not supported; use http:// (put a TLS proxy in front if needed)",
        ));
    } else if lower.starts_with("http://") {
        &trimmed["http://".len()..]
    } else if lower.contains("://") {
        return Err(bad("only the http:// scheme is supported"));
    } else {
        trimmed
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad("paths, queries and credentials are not allowed"));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("missing or invalid host"));
    }
    // Bare IPv6 needs brackets, otherwise the port is ambiguous.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad(
            "write IPv6 addresses in brackets, e.g. http://[::1]:8080",
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(format!("{host}:{p}")),
        _ => Err(bad("port must be a number from 1 to 65535")),
    }
}
