//! The server side: one hyper HTTP/1.1 connection served with an axum router, over any stream
//! the transport gives.

use super::{HTTP_BODY_BYTES_MAX, HTTP_HEAD_BYTES_MAX, HTTP_HEAD_TIMEOUT};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves HTTP/1.1 requests on `stream` with `router` until the client closes the connection
/// (keep-alive), a request head takes longer than [`HTTP_HEAD_TIMEOUT`], or the connection
/// fails. Request bodies are limited to [`HTTP_BODY_BYTES_MAX`] (413 above it).
pub async fn serve_connection<S>(stream: S, router: Router) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_with(stream, router, HTTP_HEAD_TIMEOUT).await
}

/// [`serve_connection`] with another head timeout (tests).
pub(crate) async fn serve_connection_with<S>(
    stream: S,
    router: Router,
    head_timeout: std::time::Duration,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router
        .layer(DefaultBodyLimit::max(HTTP_BODY_BYTES_MAX))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such resource; see docs/api.md") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this resource does not take that method; see docs/api.md",
            )
        });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(HTTP_HEAD_BYTES_MAX.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await
}

/// A JSON response. An encoding failure becomes a 500, not a panic.
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(bytes) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the response as JSON: {e}"),
        ),
    }
}

/// `{"error": message}`: the shape the client turns into `HttpError::Status`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
