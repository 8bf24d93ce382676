//! A transport that shows a checker every protocol message a host sends, at the moment its
//! last byte is written: the real drivers' acknowledgements can then be checked against what
//! their disks hold durably at that instant (`durability.rs`). Streams that do not start with
//! the frame magic (HTTP, NBD) are passed through untouched.

use haven_core::protocol::frame::FRAME_MAGIC;
use haven_core::protocol::{self, Message, FRAME_HEADER_BYTES};
use haven_runtime::transport::Transport;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Called with the sending host's name and each message it sent.
pub type SendHook = Arc<dyn Fn(&'static str, &Message) + Send + Sync>;

/// turmoil's TCP for host `host`, with every sent message shown to `hook`.
#[derive(Clone)]
pub struct TapTcp {
    pub host: &'static str,
    pub hook: Option<SendHook>,
}

impl TapTcp {
    fn wrap(&self, inner: turmoil::net::TcpStream) -> TapStream {
        TapStream {
            inner,
            tap: self.hook.clone().map(|hook| Decoder {
                host: self.host,
                hook,
                frame: Vec::new(),
                want: FRAME_HEADER_BYTES,
                header: None,
                off: false,
            }),
        }
    }
}

impl Transport for TapTcp {
    type Stream = TapStream;
    type Listener = TapListener;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        let s = turmoil::net::TcpStream::connect(addr.to_string()).await?;
        Ok(self.wrap(s))
    }
    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        let inner = turmoil::net::TcpListener::bind(addr.to_string()).await?;
        Ok(TapListener {
            inner,
            tcp: self.clone(),
        })
    }
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, String)> {
        let (s, peer) = listener.inner.accept().await?;
        Ok((listener.tcp.wrap(s), peer.to_string()))
    }
    fn local_addr(listener: &Self::Listener) -> io::Result<String> {
        Ok(listener.inner.local_addr()?.to_string())
    }
}

/// A listener whose accepted streams are tapped like connected ones.
pub struct TapListener {
    inner: turmoil::net::TcpListener,
    tcp: TapTcp,
}

/// Splits the bytes a stream writes into frames and shows each decoded message to the hook.
struct Decoder {
    host: &'static str,
    hook: SendHook,
    frame: Vec<u8>,
    /// Bytes `frame` must reach before the next step (the header, then header + body).
    want: usize,
    header: Option<protocol::FrameHeader>,
    /// Not a protocol stream (or a frame failed to parse): stop looking.
    off: bool,
}

impl Decoder {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !self.off && !bytes.is_empty() {
            let take = (self.want - self.frame.len()).min(bytes.len());
            self.frame.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.frame.len() < self.want {
                return;
            }
            match self.header {
                None => self.on_header(),
                Some(h) => {
                    let body = self.frame.split_off(FRAME_HEADER_BYTES);
                    match protocol::decode_body(&h, body) {
                        Ok((msg, _)) => (self.hook)(self.host, &msg),
                        Err(_) => self.off = true,
                    }
                    self.frame.clear();
                    self.header = None;
                    self.want = FRAME_HEADER_BYTES;
                }
            }
        }
    }

    fn on_header(&mut self) {
        let head: [u8; FRAME_HEADER_BYTES] = self.frame[..].try_into().expect("header bytes");
        if head[..4] != FRAME_MAGIC {
            self.off = true;
            return;
        }
        match protocol::parse_header(&head) {
            Ok(h) => {
                self.want = FRAME_HEADER_BYTES + h.body_len as usize;
                self.header = Some(h);
            }
            Err(_) => self.off = true,
        }
    }
}

pub struct TapStream {
    inner: turmoil::net::TcpStream,
    tap: Option<Decoder>,
}

impl AsyncRead for TapStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(tap)) = (&r, this.tap.as_mut()) {
            tap.feed(&buf[..*n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
