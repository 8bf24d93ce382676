//! Protocol-level tests with a hand-rolled client over an in-memory duplex stream (which also
//! proves the server is generic over the transport): error paths real clients never exercise.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::proto::*;
use super::tests::{test_exports, DISK_BYTES};
use super::*;

/// Minimal NBD client for driving the server byte by byte.
pub(super) struct RawClient<S> {
    pub(super) s: S,
    /// Expected READ payload length per cookie, to parse replies arriving in any order.
    pub(super) read_lens: HashMap<u64, u32>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    pub(super) async fn greet(&mut self) {
        assert_eq!(self.s.read_u64().await.expect("magic"), NBDMAGIC);
        assert_eq!(self.s.read_u64().await.expect("ihaveopt"), IHAVEOPT);
        let flags = self.s.read_u16().await.expect("flags");
        assert_eq!(flags, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        self.s
            .write_u32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)
            .await
            .expect("client flags");
    }

    async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut msg = IHAVEOPT.to_be_bytes().to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.s.write_all(&msg).await.expect("send option");
    }

    /// Returns (reply type, data) after checking magic and echoed option.
    async fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        assert_eq!(
            self.s.read_u64().await.expect("reply magic"),
            OPTION_REPLY_MAGIC
        );
        assert_eq!(self.s.read_u32().await.expect("option"), option);
        let reply_type = self.s.read_u32().await.expect("type");
        let mut data = vec![0u8; self.s.read_u32().await.expect("len") as usize];
        self.s.read_exact(&mut data).await.expect("data");
        (reply_type, data)
    }

    fn info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        requests
            .iter()
            .for_each(|r| data.extend_from_slice(&r.to_be_bytes()));
        data
    }

    /// NBD_OPT_GO; returns (size, transmission flags).
    pub(super) async fn go(&mut self, name: &str) -> (u64, u16) {
        self.send_option(NBD_OPT_GO, &Self::info_payload(name, &[]))
            .await;
        let mut export = None;
        loop {
            let (reply_type, data) = self.option_reply(NBD_OPT_GO).await;
            match reply_type {
                NBD_REP_ACK => return export.expect("INFO_EXPORT before ACK"),
                NBD_REP_INFO if be_u16(&data[0..2]) == NBD_INFO_EXPORT => {
                    export = Some((be_u64(&data[2..10]), be_u16(&data[10..12])));
                }
                NBD_REP_INFO => {}
                other => panic!("unexpected GO reply {other:#x}"),
            }
        }
    }

    async fn request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let req = Request {
            magic: NBD_REQUEST_MAGIC,
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.s.write_all(&req.encode()).await.expect("request");
        self.s.write_all(payload).await.expect("payload");
        if command == NBD_CMD_READ {
            self.read_lens.insert(cookie, length);
        }
    }

    /// Returns (cookie, error, data).
    async fn reply(&mut self) -> (u64, u32, Vec<u8>) {
        assert_eq!(
            self.s.read_u32().await.expect("magic"),
            NBD_SIMPLE_REPLY_MAGIC
        );
        let error = self.s.read_u32().await.expect("error");
        let cookie = self.s.read_u64().await.expect("cookie");
        let len = self.read_lens.remove(&cookie).unwrap_or(0);
        let mut data = vec![0u8; if error == NBD_OK { len as usize } else { 0 }];
        self.s.read_exact(&mut data).await.expect("read data");
        (cookie, error, data)
    }

    /// Collect `n` replies keyed by cookie (they may arrive in any order).
    async fn replies(&mut self, n: usize) -> HashMap<u64, (u32, Vec<u8>)> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let (cookie, error, data) = self.reply().await;
            assert!(
                out.insert(cookie, (error, data)).is_none(),
                "duplicate cookie {cookie}"
            );
        }
        out
    }
}

fn duplex_client(
    exports: Arc<Exports<FileExport>>,
) -> (
    RawClient<DuplexStream>,
    tokio::task::JoinHandle<Result<(), NbdError>>,
) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve_connection(server, exports));
    (
        RawClient {
            s: client,
            read_lens: Default::default(),
        },
        task,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_handshake_options() {
    let (_tmp, exports) = test_exports();
    let (mut c, task) = duplex_client(exports);
    c.greet().await;
    c.send_option(NBD_OPT_LIST, &[]).await;
    let (t, data) = c.option_reply(NBD_OPT_LIST).await;
    assert_eq!(t, NBD_REP_SERVER);
    assert_eq!(&data[4..8], b"disk");
    assert_eq!(&data[8..], b"haven test disk");
    assert_eq!(c.option_reply(NBD_OPT_LIST).await.0, NBD_REP_SERVER);
    assert_eq!(c.option_reply(NBD_OPT_LIST).await.0, NBD_REP_ACK);
    for opt in [
        NBD_OPT_STRUCTURED_REPLY,
        NBD_OPT_EXTENDED_HEADERS,
        NBD_OPT_SET_META_CONTEXT,
        4242,
    ] {
        c.send_option(opt, &[]).await;
        assert_eq!(c.option_reply(opt).await.0, NBD_REP_ERR_UNSUP);
    }
    c.send_option(
        NBD_OPT_INFO,
        &RawClient::<DuplexStream>::info_payload("nope", &[]),
    )
    .await;
    assert_eq!(c.option_reply(NBD_OPT_INFO).await.0, NBD_REP_ERR_UNKNOWN);
    c.send_option(NBD_OPT_INFO, &[0, 0, 0, 9, b'x']).await;
    assert_eq!(c.option_reply(NBD_OPT_INFO).await.0, NBD_REP_ERR_INVALID);
    let payload =
        RawClient::<DuplexStream>::info_payload("ro", &[NBD_INFO_NAME, NBD_INFO_DESCRIPTION]);
    c.send_option(NBD_OPT_INFO, &payload).await;
    let mut seen = Vec::new();
    loop {
        let (t, data) = c.option_reply(NBD_OPT_INFO).await;
        if t == NBD_REP_ACK {
            break;
        }
        assert_eq!(t, NBD_REP_INFO);
        seen.push(be_u16(&data[0..2]));
        if be_u16(&data[0..2]) == NBD_INFO_EXPORT {
            assert_ne!(be_u16(&data[10..12]) & NBD_FLAG_READ_ONLY, 0);
        }
    }
    assert_eq!(
        seen,
        vec![
            NBD_INFO_EXPORT,
            NBD_INFO_BLOCK_SIZE,
            NBD_INFO_NAME,
            NBD_INFO_DESCRIPTION
        ]
    );
    c.send_option(NBD_OPT_ABORT, &[]).await;
    assert_eq!(c.option_reply(NBD_OPT_ABORT).await.0, NBD_REP_ACK);
    task.await.expect("join").expect("abort is orderly");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_oversized_option_is_refused() {
    let (_tmp, exports) = test_exports();
    let (mut c, task) = duplex_client(exports);
    c.greet().await;
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&NBD_OPT_INFO.to_be_bytes());
    header.extend_from_slice(&(NBD_OPTION_BYTES_MAX + 1).to_be_bytes());
    c.s.write_all(&header).await.expect("header");
    assert_eq!(c.option_reply(NBD_OPT_INFO).await.0, NBD_REP_ERR_TOO_BIG);
    assert!(matches!(
        task.await.expect("join"),
        Err(NbdError::Protocol(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_transmission_errors_keep_connection_open() {
    let (tmp, exports) = test_exports();
    let (mut c, task) = duplex_client(exports);
    c.greet().await;
    let (size, flags) = c.go("").await;
    assert_eq!(size, DISK_BYTES);
    assert_eq!(flags, transmission_flags(false));
    assert_eq!(flags & NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_CAN_MULTI_CONN);

    // Pipeline a mix of valid and invalid requests; replies may come back in any order.
    c.request(
        NBD_CMD_WRITE,
        NBD_CMD_FLAG_FUA,
        1,
        4096,
        4096,
        &[0x77; 4096],
    )
    .await;
    c.request(NBD_CMD_WRITE, 0, 2, DISK_BYTES - 10, 20, &[0x66; 20])
        .await;
    c.request(NBD_CMD_READ, 0, 3, DISK_BYTES, 1, &[]).await;
    c.request(NBD_CMD_READ, 0, 4, u64::MAX - 1, 4, &[]).await;
    c.request(NBD_CMD_TRIM, 0, 5, DISK_BYTES, 4096, &[]).await;
    c.request(
        NBD_CMD_WRITE_ZEROES,
        NBD_CMD_FLAG_NO_HOLE,
        6,
        DISK_BYTES - 1,
        2,
        &[],
    )
    .await;
    c.request(99, 0, 7, 0, 0, &[]).await;
    c.request(NBD_CMD_READ, 0, 8, 0, NBD_PAYLOAD_BYTES_MAX + 1, &[])
        .await;
    c.request(NBD_CMD_FLUSH, 0, 9, 0, 0, &[]).await;
    let replies = c.replies(9).await;
    let errors: Vec<u32> = (1..=9).map(|cookie| replies[&cookie].0).collect();
    let expected = [
        NBD_OK, NBD_ENOSPC, NBD_EINVAL, NBD_EINVAL, NBD_EINVAL, NBD_ENOSPC, NBD_EINVAL, NBD_EINVAL,
        NBD_OK,
    ];
    assert_eq!(errors, expected);

    c.request(NBD_CMD_READ, 0, 10, 4000, 200, &[]).await;
    let (_, error, data) = c.reply().await;
    assert_eq!(error, NBD_OK);
    assert_eq!(&data[..96], &[0u8; 96][..]);
    assert_eq!(&data[96..], &[0x77u8; 104][..]);

    c.request(NBD_CMD_DISC, 0, 11, 0, 0, &[]).await;
    task.await.expect("join").expect("disc is orderly");
    let bytes = std::fs::read(tmp.path()).expect("backing");
    assert!(bytes[4096..8192].iter().all(|&b| b == 0x77));
    assert!(
        bytes[DISK_BYTES as usize - 10..].iter().all(|&b| b == 0),
        "out-of-range write must not land"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_read_only_and_oversized_write() {
    let (_tmp, exports) = test_exports();
    let (mut c, task) = duplex_client(exports);
    c.greet().await;
    let (_, flags) = c.go("ro").await;
    assert_ne!(flags & NBD_FLAG_READ_ONLY, 0);
    c.request(NBD_CMD_WRITE, 0, 1, 0, 8, &[1; 8]).await;
    c.request(NBD_CMD_TRIM, 0, 2, 0, 8, &[]).await;
    c.request(NBD_CMD_WRITE_ZEROES, 0, 3, 0, 8, &[]).await;
    c.request(NBD_CMD_READ, 0, 4, 0, 8, &[]).await;
    let replies = c.replies(4).await;
    assert_eq!(
        [1, 2, 3, 4].map(|k| replies[&k].0),
        [NBD_EPERM, NBD_EPERM, NBD_EPERM, NBD_OK]
    );
    assert_eq!(replies[&4].1, vec![0u8; 8]);
    // A write whose payload exceeds the maximum cannot be skipped: the server hangs up.
    c.request(NBD_CMD_WRITE, 0, 5, 0, NBD_PAYLOAD_BYTES_MAX + 1, &[])
        .await;
    assert!(matches!(
        task.await.expect("join"),
        Err(NbdError::Protocol(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_many_inflight_requests_all_answered() {
    let (_tmp, exports) = test_exports();
    let (c, task) = duplex_client(exports);
    let mut c = c;
    c.greet().await;
    c.go("disk").await;
    // More than NBD_INFLIGHT_MAX requests without reading replies exercises backpressure
    // (the duplex buffer is small, so the server must stall rather than buffer unboundedly).
    let (mut rd, mut wr) = tokio::io::split(c.s);
    let total = (NBD_INFLIGHT_MAX * 4) as u64;
    let writer = tokio::spawn(async move {
        for cookie in 0..total {
            let req = Request {
                magic: NBD_REQUEST_MAGIC,
                flags: 0,
                command: NBD_CMD_WRITE,
                cookie,
                offset: cookie * 4096,
                length: 4096,
            };
            wr.write_all(&req.encode()).await.expect("req");
            wr.write_all(&[cookie as u8; 4096]).await.expect("payload");
        }
        wr
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..total {
        let mut header = [0u8; NBD_SIMPLE_REPLY_HEADER_BYTES];
        rd.read_exact(&mut header).await.expect("reply");
        assert_eq!(be_u32(&header[4..8]), NBD_OK);
        assert!(seen.insert(be_u64(&header[8..16])));
    }
    let wr = writer.await.expect("writer");
    drop(tokio::io::ReadHalf::unsplit(rd, wr));
    task.await.expect("join").expect("EOF is orderly");
}
