//! The HTTP layer over real loopback TCP: keep-alive, errors with messages, percent-decoding,
//! streamed bodies (whole and cut short), malformed and oversized requests, silent clients.

use super::server::serve_connection_with;
use super::*;
use crate::transport::Tcp;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Msg {
    n: u32,
    text: String,
}

const BIG_LEN: usize = 10 << 20;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

/// A body of `BIG_LEN` pattern bytes in 64 KiB chunks; with `fail_at`, an error after that
/// many bytes.
fn big_body(fail_at: Option<usize>) -> Body {
    let chunks = (0..BIG_LEN).step_by(64 << 10).map(move |start| {
        if fail_at.is_some_and(|f| start >= f) {
            return Err(std::io::Error::other("the disk failed"));
        }
        let end = (start + (64 << 10)).min(BIG_LEN);
        Ok(bytes::Bytes::from(
            (start..end).map(pattern).collect::<Vec<u8>>(),
        ))
    });
    Body::from_stream(futures_util::stream::iter(chunks))
}

fn sized(body: Body) -> Response {
    Response::builder()
        .header(axum::http::header::CONTENT_LENGTH, BIG_LEN)
        .body(body)
        .unwrap()
}

fn router() -> Router {
    Router::new()
        .route(
            "/msg",
            get(|| async {
                json(
                    StatusCode::OK,
                    &Msg {
                        n: 1,
                        text: "hi".into(),
                    },
                )
            }),
        )
        .route(
            "/msg",
            post(|Json(mut m): Json<Msg>| async move {
                m.n += 1;
                json(StatusCode::CREATED, &m)
            }),
        )
        .route(
            "/conflict",
            get(|| async { error(StatusCode::CONFLICT, "disk0 is busy; try later") }),
        )
        .route(
            "/text",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy, try later") }),
        )
        .route(
            "/echo/{name}",
            get(
                |Path(name): Path<String>, Query(q): Query<BTreeMap<String, String>>| async move {
                    json(StatusCode::OK, &(name, q))
                },
            ),
        )
        .route("/big", get(|| async { sized(big_body(None)) }))
        .route(
            "/broken",
            get(|| async { sized(big_body(Some(300 << 10))) }),
        )
}

/// A server on loopback; the counter counts the connections it accepted.
async fn start() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(s, router()));
        }
    });
    (addr, accepted)
}

/// Sends raw bytes; returns what the server answers until it closes.
async fn raw_exchange(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http_json_calls_share_one_kept_alive_connection() {
    let (addr, accepted) = start().await;
    let client = Client::new(Tcp, addr.as_str());
    for _ in 0..3 {
        let m: Msg = client.get_json("/msg").await.unwrap();
        assert_eq!(
            m,
            Msg {
                n: 1,
                text: "hi".into()
            }
        );
        let m: Msg = client
            .post_json(
                "/msg",
                &Msg {
                    n: 41,
                    text: "x".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(m.n, 42);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "six calls, one connection"
    );
}

#[tokio::test]
async fn http_errors_carry_the_servers_message() {
    let (addr, _) = start().await;
    let err = get_json::<Msg>(&addr, "/conflict").await.unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 409, message } if message == "disk0 is busy; try later"),
        "{err:?}"
    );
    let err = get_json::<Msg>(&addr, "/text").await.unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 503, message } if message == "busy, try later"),
        "{err:?}"
    );
    let err = get_json::<Msg>(&addr, "/nowhere").await.unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 404, message } if message.contains("docs/api.md")),
        "{err:?}"
    );
    let err = post_json::<_, Msg>(&addr, "/conflict", &1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 405, .. }),
        "{err:?}"
    );
    let err = post_json::<_, Msg>(&addr, "/msg", &"not a msg")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 422, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_path_and_query_are_percent_decoded() {
    let (addr, _) = start().await;
    let (name, q): (String, BTreeMap<String, String>) = get_json(
        &addr,
        "/echo/a%20b?seq=12&t=2026-12-02T10%3A00%3A00Z&x=%2B1",
    )
    .await
    .unwrap();
    assert_eq!(name, "a b");
    assert_eq!(q["seq"], "12");
    assert_eq!(q["t"], "2026-12-02T10:00:00Z");
    assert_eq!(q["x"], "+1");
}

#[tokio::test]
async fn http_streamed_10_mib_body_is_byte_exact() {
    let (addr, _) = start().await;
    let client = Client::new(Tcp, addr.as_str());
    let resp = client.send(Method::GET, "/big", &[], None).await.unwrap();
    assert_eq!(content_length(&resp), Some(BIG_LEN as u64));
    let body = read_body(resp.into_body(), BIG_LEN).await.unwrap();
    assert_eq!(body.len(), BIG_LEN);
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    // The limit is enforced.
    let resp = client.send(Method::GET, "/big", &[], None).await.unwrap();
    let err = read_body(resp.into_body(), BIG_LEN - 1).await.unwrap_err();
    assert!(matches!(err, HttpError::BodyTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn http_body_cut_short_is_an_error_not_short_data() {
    let (addr, _) = start().await;
    let client = Client::new(Tcp, addr.as_str());
    let resp = client
        .send(Method::GET, "/broken", &[], None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let err = read_body(resp.into_body(), BIG_LEN).await.unwrap_err();
    assert!(matches!(err, HttpError::Connection { .. }), "{err:?}");
    // The client reconnects for the next call.
    let m: Msg = client.get_json("/msg").await.unwrap();
    assert_eq!(m.n, 1);
}

#[tokio::test]
async fn http_garbage_gets_400_and_the_server_keeps_serving() {
    let (addr, _) = start().await;
    let answer = raw_exchange(&addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let m: Msg = get_json(&addr, "/msg").await.unwrap();
    assert_eq!(m.n, 1);
}

#[tokio::test]
async fn http_oversized_head_and_body_are_refused() {
    let (addr, _) = start().await;
    let long = format!(
        "GET /msg?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let answer = raw_exchange(&addr, long.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let body = format!(
        r#"{{"n":1,"text":"{}"}}"#,
        "a".repeat(HTTP_BODY_BYTES_MAX + 1)
    );
    let err = post_json::<_, Msg>(&addr, "/msg", &serde_json::from_str::<Msg>(&body).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 413, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_silent_client_is_disconnected() {
    // A client that sends half a head and then nothing.
    let (mut client, server) = tokio::io::duplex(1024);
    client.write_all(b"GET /msg HTTP/1.1\r\n").await.unwrap();
    let task = tokio::spawn(serve_connection_with(
        server,
        router(),
        std::time::Duration::from_millis(200),
    ));
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the server must hang up on a silent client");
    let served = task.await.unwrap();
    assert!(
        served.is_err(),
        "the connection ends with the timeout: {served:?}"
    );
}

#[tokio::test]
async fn http_client_errors_say_what_to_do() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = get_json::<Msg>(&format!("127.0.0.1:{port}"), "/msg")
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("is it running?"), "{err}");
}

#[test]
fn http_parse_base_url_accepts_and_rejects() {
    assert_eq!(
        parse_base_url("http://127.0.0.1:7080").unwrap(),
        "127.0.0.1:7080"
    );
    assert_eq!(parse_base_url("HTTP://host:1/").unwrap(), "host:1");
    assert_eq!(parse_base_url("host:65535").unwrap(), "host:65535");
    assert_eq!(parse_base_url("http://[::1]:8080").unwrap(), "[::1]:8080");
    for bad in [
        "https://h:1",
        "ftp://h:1",
        "h",
        "h:0",
        "h:99999",
        "h:+1",
        ":80",
        "http://h:1/api",
        "::1:80",
        "u@h:1",
    ] {
        assert!(parse_base_url(bad).is_err(), "{bad} must be refused");
    }
}
