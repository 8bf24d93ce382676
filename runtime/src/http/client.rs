//! The client side: hyper's HTTP/1.1 connection API over the project's `Transport`, one
//! keep-alive connection per [`Client`], reopened when it breaks.

use super::{
    HttpError, HTTP_CLIENT_TIMEOUT, HTTP_CONNECT_TIMEOUT, HTTP_ERROR_BODY_BYTES_MAX,
    HTTP_JSON_RESPONSE_BYTES_MAX,
};
use crate::transport::{Tcp, Transport};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

/// A client of one HTTP server (`host:port`) reached through a transport.
pub struct Client<T: Transport> {
    transport: T,
    addr: String,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl<T: Transport> Client<T> {
    pub fn new(transport: T, addr: impl Into<String>) -> Self {
        Client {
            transport,
            addr: addr.into(),
            conn: Mutex::new(None),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let connect_err = |err| HttpError::Connect {
            addr: self.addr.clone(),
            err,
        };
        let stream = tokio::time::timeout(HTTP_CONNECT_TIMEOUT, self.transport.connect(&self.addr))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.conn_err(e))?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("HTTP connection to {addr}: {e}");
            }
        });
        Ok(send)
    }

    fn conn_err(&self, e: impl std::fmt::Display) -> HttpError {
        HttpError::Connection {
            addr: self.addr.clone(),
            err: e.to_string(),
        }
    }

    /// Sends one request and returns the response head with its body still to read. The
    /// connection is reused while it stays up; a request that fails on a reused connection
    /// before any answer is retried once on a fresh one (the server may have closed it idle).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, HttpError> {
        let build = || {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, &self.addr);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            if body.is_some() {
                b = b.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            b.body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| HttpError::BadRequest {
                    what: path.to_string(),
                    reason: e.to_string(),
                })
        };
        let mut guard = self.conn.lock().await;
        for attempt in 0..2 {
            let reused = guard.is_some();
            let mut send = match guard.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            if send.ready().await.is_err() {
                if reused && attempt == 0 {
                    continue;
                }
                return Err(self.conn_err("the connection closed"));
            }
            match send.send_request(build()?).await {
                Ok(resp) => {
                    *guard = Some(send);
                    return Ok(resp);
                }
                // Canceled: never sent, so a retry cannot apply a command twice.
                Err(e) if reused && attempt == 0 && e.is_canceled() => continue,
                Err(e) => return Err(self.conn_err(e)),
            }
        }
        Err(self.conn_err("the connection closed twice"))
    }

    /// GET `path` and decode its JSON.
    pub async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, HttpError> {
        self.call_json(Method::GET, path, None).await
    }

    /// POST `body` as JSON to `path` and decode the JSON answer.
    pub async fn post_json<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, HttpError> {
        let bytes = serde_json::to_vec(body).map_err(|e| HttpError::Encode(e.to_string()))?;
        self.call_json(Method::POST, path, Some(bytes)).await
    }

    async fn call_json<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<R, HttpError> {
        let exchange = async {
            let resp = self.send(method, path, &[], body).await?;
            let resp = ok_or_status(resp).await?;
            let body = read_body(resp.into_body(), HTTP_JSON_RESPONSE_BYTES_MAX).await?;
            serde_json::from_slice(&body).map_err(|e| HttpError::Decode(e.to_string()))
        };
        tokio::time::timeout(HTTP_CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::ResponseTimeout {
                addr: self.addr.clone(),
                secs: HTTP_CLIENT_TIMEOUT.as_secs(),
            })?
    }
}

/// A 2xx response as it is; any other becomes [`HttpError::Status`] with the server's
/// `{"error": ...}` message, or its body text.
pub async fn ok_or_status(resp: Response<Incoming>) -> Result<Response<Incoming>, HttpError> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    // The status is the real error: a broken error body must not mask it.
    let body = read_body(resp.into_body(), HTTP_ERROR_BODY_BYTES_MAX)
        .await
        .unwrap_or_default();
    Err(HttpError::Status {
        status,
        message: error_message(status, &body),
    })
}

/// Reads a whole body of at most `max` bytes.
pub async fn read_body(body: Incoming, max: usize) -> Result<Bytes, HttpError> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(HttpError::BodyTooLarge { max })
        }
        Err(e) => Err(HttpError::Connection {
            addr: "the server".into(),
            err: e.to_string(),
        }),
    }
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
        hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no reason given")
            .to_string()
    } else {
        text.chars().take(500).collect()
    }
}

/// GET `path` from the server at `addr` (`host:port`) over TCP and decode its JSON.
pub async fn get_json<R: DeserializeOwned>(addr: &str, path: &str) -> Result<R, HttpError> {
    Client::new(Tcp, addr).get_json(path).await
}

/// POST `body` as JSON to `path` on the server at `addr` over TCP and decode the answer.
pub async fn post_json<B: Serialize, R: DeserializeOwned>(
    addr: &str,
    path: &str,
    body: &B,
) -> Result<R, HttpError> {
    Client::new(Tcp, addr).post_json(path, body).await
}

/// Normalizes an API base URL to `host:port`. Accepts `http://host:port` or `host:port`, with
/// an optional trailing slash.
pub fn parse_base_url(url: &str) -> Result<String, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim();
    let lower = trimmed.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        return Err(bad(
            "https is not supported yet; use http:// (put a TLS proxy in front if needed)",
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
    // A bare IPv6 address needs brackets, or the port is ambiguous.
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
