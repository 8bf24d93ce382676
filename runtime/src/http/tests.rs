//! Round-trip tests over real 127.0.0.1 TCP.

use super::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const BIG_LEN: usize = 10 * 1024 * 1024;
const STREAM_CHUNK: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Msg {
    name: String,
    n: u64,
}

struct TestHandler;

/// Deterministic, non-repeating-per-chunk content so misordering is caught.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

/// Stream `total` pattern bytes, then fail with `fail` if given (after
/// `stop_at` bytes).
fn spawn_producer(total: usize, stop_at: Option<usize>) -> mpsc::Receiver<Result<Vec<u8>, String>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let end = stop_at.unwrap_or(total);
        let mut off = 0;
        while off < end {
            let n = STREAM_CHUNK.min(end - off);
            let chunk: Vec<u8> = (off..off + n).map(pattern).collect();
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            off += n;
        }
        if stop_at.is_some() {
            let _ = tx.send(Err("disk read failed".into())).await;
        }
    });
    rx
}

impl Handler for TestHandler {
    async fn handle(&self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/msg") => Response::json(
                200,
                &Msg {
                    name: "haven".into(),
                    n: 7,
                },
            ),
            ("POST", "/echo") => match serde_json::from_slice::<Msg>(&req.body) {
                Ok(mut m) => {
                    m.n += 1;
                    Response::json(201, &m)
                }
                Err(e) => Response::error(400, &format!("bad body: {e}")),
            },
            ("GET", "/query") => Response::json(200, &req.query),
            ("GET", "/text") => Response::text(503, "busy, try later"),
            ("GET", "/big") => Response::stream(BIG_LEN as u64, spawn_producer(BIG_LEN, None)),
            ("GET", "/broken") => {
                Response::stream(BIG_LEN as u64, spawn_producer(BIG_LEN, Some(300 * 1024)))
            }
            _ => Response::error(404, &format!("no route for {}", req.path)),
        }
    }
}

async fn start() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, Arc::new(TestHandler)));
    addr
}

/// Send raw bytes, return everything the server answers until it closes.
async fn raw_exchange(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: &str, path: &str) -> ClientResponse<TcpStream> {
    let s = TcpStream::connect(addr).await.unwrap();
    request(s, "GET", addr, path, None).await.unwrap()
}

#[tokio::test]
async fn http_json_get_and_post_round_trip() {
    let addr = start().await;
    let m: Msg = get_json(&addr, "/msg").await.unwrap();
    assert_eq!(
        m,
        Msg {
            name: "haven".into(),
            n: 7
        }
    );
    let sent = Msg {
        name: "x y".into(),
        n: 41,
    };
    let got: Msg = post_json(&addr, "/echo", &sent).await.unwrap();
    assert_eq!(
        got,
        Msg {
            name: "x y".into(),
            n: 42
        }
    );
}

#[tokio::test]
async fn http_handler_errors_become_status_errors() {
    let addr = start().await;
    let err = get_json::<Msg>(&addr, "/nope").await.unwrap_err();
    match err {
        HttpError::Status {
            status: 404,
            message,
        } => assert_eq!(message, "no route for /nope"),
        other => panic!("unexpected {other:?}"),
    }
    // A non-JSON error body is passed through as text.
    let err = get_json::<Msg>(&addr, "/text").await.unwrap_err();
    assert!(
        matches!(&err, HttpError::Status { status: 503, message } if message == "busy, try later"),
        "{err:?}"
    );
    // A handler-side JSON parse failure surfaces its message.
    let err = post_json::<_, Msg>(&addr, "/echo", &serde_json::json!({"bad": 1}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad body"), "{err}");
}

#[tokio::test]
async fn http_query_is_percent_decoded() {
    let addr = start().await;
    let q: BTreeMap<String, String> = get_json(
        &addr,
        "/query?name=a%20b%2Fc&plus=x+y&flag&utf=%C3%A9&k=1&k=2",
    )
    .await
    .unwrap();
    let want: BTreeMap<String, String> = [
        ("name", "a b/c"),
        ("plus", "x y"),
        ("flag", ""),
        ("utf", "é"),
        ("k", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(q, want);
    // A broken escape is the client's fault: 400.
    let err = get_json::<BTreeMap<String, String>>(&addr, "/query?x=%zz")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpError::Status { status: 400, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_streamed_10_mib_body_is_byte_exact() {
    let addr = start().await;
    let mut resp = get(&addr, "/big").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length, Some(BIG_LEN as u64));
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    let mut buf = vec![0u8; 100_000]; // odd size so reads straddle chunks
    let mut off = 0usize;
    loop {
        let n = resp.read_chunk(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(off + i), "byte {}", off + i);
        }
        off += n;
    }
    assert_eq!(off, BIG_LEN);
    // body_bytes reads the same thing in one go.
    let body = get(&addr, "/big").await.body_bytes(BIG_LEN).await.unwrap();
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)));
}

#[tokio::test]
async fn http_truncated_stream_is_detected_by_client() {
    let addr = start().await;
    let mut resp = get(&addr, "/broken").await;
    assert_eq!(resp.status, 200);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let err = loop {
        match resp.read_chunk(&mut buf).await {
            Ok(0) => panic!("short body reported as complete after {total} bytes"),
            Ok(n) => total += n as u64,
            Err(e) => break e,
        }
    };
    match err {
        HttpError::Truncated {
            expected, received, ..
        } => {
            assert_eq!(expected, BIG_LEN as u64);
            assert_eq!(received, total);
            assert!(received < expected);
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = get(&addr, "/broken")
        .await
        .body_bytes(BIG_LEN)
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Truncated { .. }), "{err:?}");
}

#[tokio::test]
async fn http_garbage_request_gets_400_and_server_keeps_serving() {
    let addr = start().await;
    for garbage in [
        &b"garbage\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET x HTTP/1.1\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ] {
        let answer = raw_exchange(&addr, garbage).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        assert!(answer.contains("{\"error\":"), "{answer}");
    }
    let answer = raw_exchange(
        &addr,
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    // A connect-and-close probe is harmless too.
    drop(TcpStream::connect(&addr).await.unwrap());
    let m: Msg = get_json(&addr, "/msg").await.unwrap();
    assert_eq!(m.n, 7);
}

#[tokio::test]
async fn http_oversized_head_and_body_are_rejected() {
    let addr = start().await;
    let mut huge = b"GET /msg HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', HTTP_HEAD_BYTES_MAX + 1000));
    huge.extend_from_slice(b"\r\n\r\n");
    let answer = raw_exchange(&addr, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let mut many = b"GET /msg HTTP/1.1\r\n".to_vec();
    for i in 0..=HTTP_HEADERS_MAX {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let answer = raw_exchange(&addr, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let big_body = vec![b'x'; HTTP_BODY_BYTES_MAX + 1];
    let s = TcpStream::connect(&addr).await.unwrap();
    let resp = request(s, "POST", &addr, "/echo", Some(&big_body))
        .await
        .unwrap();
    assert_eq!(resp.status, 413);

    let m: Msg = get_json(&addr, "/msg").await.unwrap();
    assert_eq!(m.n, 7);
}

#[tokio::test]
async fn http_silent_client_times_out() {
    // A client that sends half a head and then nothing.
    let (mut client, server) = tokio::io::duplex(1024);
    client.write_all(b"GET /msg HTTP/1.1\r\n").await.unwrap();
    let timeout = std::time::Duration::from_millis(200);
    let task = tokio::spawn(server::serve_connection_with_timeout(
        server,
        Arc::new(TestHandler),
        timeout,
    ));
    // The server tells the client why it hung up...
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(client);
    // ...and the task ends with the timeout error.
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, HttpError::HeadTimeout { .. }), "{err:?}");
}

#[tokio::test]
async fn http_client_errors_say_what_to_do() {
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = get_json::<Msg>(&format!("127.0.0.1:{port}"), "/msg")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cannot connect") && text.contains("HAVEN_API"),
        "{text}"
    );

    let addr = start().await;
    let err = get_json::<Msg>(&addr, "/query").await.unwrap_err();
    assert!(matches!(err, HttpError::Decode(_)), "{err:?}");
    let s = TcpStream::connect(&addr).await.unwrap();
    let err = request(s, "GET", &addr, "/a\r\nX: y", None)
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
}

#[test]
fn http_parse_base_url_accepts_and_rejects() {
    for (input, want) in [
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("HTTP://haven.local:80", "haven.local:80"),
        ("localhost:9000", "localhost:9000"),
        ("  localhost:9000/ ", "localhost:9000"),
        ("http://[::1]:8080", "[::1]:8080"),
    ] {
        assert_eq!(parse_base_url(input).unwrap(), want, "{input}");
    }
    for (input, needle) in [
        ("https://h:443", "https is not supported"),
        ("ftp://h:21", "only the http"),
        ("http://h", "missing :port"),
        ("h:0", "port must be"),
        ("h:99999", "port must be"),
        ("h:+80", "port must be"),
        ("http://h:80/api", "paths"),
        (":80", "host"),
        ("::1:80", "brackets"),
        ("", "missing :port"),
        ("garbage", "missing :port"),
    ] {
        let err = parse_base_url(input).unwrap_err().to_string();
        assert!(
            err.contains(needle) && err.contains("expected http://host:port"),
            "{input}: {err}"
        );
    }
}

#[test]
fn http_percent_decode_edge_cases() {
    use super::wire::percent_decode;
    assert_eq!(percent_decode("a%2bb+c", true).unwrap(), "a+b c");
    assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
    assert!(percent_decode("%", true).is_err());
    assert!(percent_decode("%4", true).is_err());
    assert!(percent_decode("%ff", true).is_err()); // not UTF-8
    assert!(percent_decode("%é1", true).is_err()); // must not panic on char boundaries
}
