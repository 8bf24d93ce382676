//! The network layer shared by every role's driver: handshakes, framed reading and writing, and
//! the mapping between sockets and core's `ConnId`s.
//!
//! Each connection has a reader task (frames in, as `NetEvent`s on the driver's bounded event
//! channel: a slow driver slows its peers through TCP) and a writer task fed by an unbounded
//! channel whose depth is bounded by core's windows (batches in flight per stream) and by the
//! small, periodic control messages.
//!
//! What it logs, and how it keeps retries from flooding the log, is in `netlog.rs`.

use crate::netlog::{self, peer_name, SharedRepeats, Unreachable};
use crate::transport::Transport;
use haven_core::ids::{ConnId, Epoch};
use haven_core::net::{ConnectToken, NetCommand, NetEvent, Payload};
use haven_core::protocol::{self, check_hello, Hello, Message, Role, FRAME_HEADER_BYTES};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Buffer of the socket writer.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// A frame to write: the encoded head (header and control part) and the data part.
pub type OutFrame = (Vec<u8>, Payload);

/// What the network layer tells its driver.
pub enum NetInbound {
    /// A connection is up; `writer` sends frames on it. `event` is `Connected` or `Accepted`.
    Up {
        conn: ConnId,
        writer: mpsc::UnboundedSender<OutFrame>,
        event: NetEvent,
    },
    Event(NetEvent),
}

/// The per-driver network state.
pub struct Net<T: Transport> {
    transport: T,
    hello: Hello,
    /// Roles allowed to connect to our listener.
    allowed: Vec<Role>,
    next_conn: Arc<AtomicU64>,
    events: mpsc::Sender<NetInbound>,
    writers: BTreeMap<ConnId, mpsc::UnboundedSender<OutFrame>>,
    /// Who is at the other end of each open connection, until it closes or we close it, and
    /// whether we made the connection (then we reconnect; otherwise the peer does).
    peers: BTreeMap<ConnId, (Hello, bool)>,
    unreachable: Unreachable,
    /// Refusals sent and heard, and handshakes refused, so that repeats stay quiet.
    refusals: SharedRepeats,
}

impl<T: Transport> Net<T> {
    pub fn new(
        transport: T,
        hello: Hello,
        allowed: Vec<Role>,
        events: mpsc::Sender<NetInbound>,
    ) -> Self {
        Net {
            transport,
            hello,
            allowed,
            next_conn: Arc::new(AtomicU64::new(1)),
            events,
            writers: BTreeMap::new(),
            peers: BTreeMap::new(),
            unreachable: Unreachable::default(),
            refusals: SharedRepeats::default(),
        }
    }

    /// Accepts connections on `listener` until the driver goes away.
    pub fn listen(&self, listener: T::Listener) {
        let (hello, allowed, next, events, refusals) = (
            self.hello.clone(),
            self.allowed.clone(),
            self.next_conn.clone(),
            self.events.clone(),
            self.refusals.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match T::accept(&listener).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if events.is_closed() {
                    return;
                }
                let (hello, allowed, next, events, refusals) = (
                    hello.clone(),
                    allowed.clone(),
                    next.clone(),
                    events.clone(),
                    refusals.clone(),
                );
                tokio::spawn(async move {
                    match accept_handshake(stream, &hello, &allowed).await {
                        Ok((stream, peer_hello)) => {
                            let conn = ConnId(next.fetch_add(1, Ordering::Relaxed));
                            start(
                                stream,
                                conn,
                                NetEvent::Accepted {
                                    conn,
                                    peer: peer_hello,
                                },
                                events,
                            )
                            .await;
                        }
                        Err(e) if netlog::fresh(&refusals, &e) => {
                            tracing::warn!("refused a connection from {peer}: {e}")
                        }
                        Err(e) => tracing::debug!("refused a connection from {peer}: {e}"),
                    }
                });
            }
        });
    }

    /// Registers a connection reported `Up`.
    pub fn up(&mut self, conn: ConnId, writer: mpsc::UnboundedSender<OutFrame>) {
        self.writers.insert(conn, writer);
    }

    /// Registers what an inbound item says about connections and returns its event for core.
    pub fn inbound(&mut self, ev: NetInbound) -> NetEvent {
        match ev {
            NetInbound::Up {
                conn,
                writer,
                event,
            } => {
                self.up(conn, writer);
                match &event {
                    NetEvent::Connected { peer, .. } => {
                        self.peers.insert(conn, (peer.clone(), true));
                    }
                    NetEvent::Accepted { peer, .. } => {
                        self.peers.insert(conn, (peer.clone(), false));
                    }
                    _ => {}
                }
                event
            }
            NetInbound::Event(event) => {
                match &event {
                    NetEvent::Closed { conn, reason } => {
                        self.log_closed(*conn, reason);
                        self.closed(*conn);
                    }
                    NetEvent::Received {
                        conn,
                        msg: Message::Reject { reason },
                        ..
                    } => self.log_refused(*conn, reason),
                    _ => {}
                }
                event
            }
        }
    }

    /// Forgets a closed connection.
    pub fn closed(&mut self, conn: ConnId) {
        self.writers.remove(&conn);
        self.peers.remove(&conn);
    }

    /// A connection went away that this side did not close: losing a process server, a master
    /// target or the configuration server is a warning.
    fn log_closed(&self, conn: ConnId, reason: &str) {
        let Some((peer, outgoing)) = self.peers.get(&conn) else {
            return; // Closed by us, or never up.
        };
        let who = peer_name(peer);
        let next = if *outgoing {
            "reconnecting"
        } else {
            "waiting for it to reconnect"
        };
        if netlog::loss_matters(peer.role) {
            tracing::warn!("lost the connection to {who}: {reason}; {next}");
        } else {
            tracing::info!("{who} disconnected: {reason}");
        }
    }

    /// The peer refused us (the configuration server refusing a registration, say): an error
    /// the operator must see, repeated at most once a minute while the retries go on.
    fn log_refused(&mut self, conn: ConnId, reason: &str) {
        // The close that follows is part of the refusal, not a loss to report.
        let who = self
            .peers
            .remove(&conn)
            .map_or("a peer".into(), |(p, _)| peer_name(&p));
        if netlog::fresh(&self.refusals, reason) {
            tracing::error!("{who} refused us: {reason} (retrying; repeats are logged at debug)");
        } else {
            tracing::debug!("{who} refused us again: {reason}");
        }
    }

    /// This side refuses the peer of `conn`.
    fn log_refusal(&self, conn: ConnId, reason: &str) {
        let who = self
            .peers
            .get(&conn)
            .map_or("a peer".into(), |(p, _)| peer_name(p));
        if netlog::fresh(&self.refusals, reason) {
            tracing::warn!("refused {who}: {reason}");
        } else {
            tracing::debug!("refused {who} again: {reason}");
        }
    }

    pub fn execute(&mut self, cmd: NetCommand) {
        match cmd {
            NetCommand::Connect { token, addr, epoch } => self.connect(token, addr, epoch),
            NetCommand::Send { conn, msg, data } => self.send(conn, &msg, data),
            NetCommand::Close { conn } => {
                // Dropping the writer ends the writer task, which shuts the socket down; the
                // reader then reports Closed, which is not logged: we closed it on purpose.
                self.writers.remove(&conn);
                self.peers.remove(&conn);
            }
        }
    }

    /// Sends a frame; a connection that is already gone drops it (core learns of the close
    /// through its `Closed` event and resends what matters).
    pub fn send(&mut self, conn: ConnId, msg: &Message, data: Payload) {
        if let Message::Reject { reason } = msg {
            self.log_refusal(conn, reason);
        }
        let Some(w) = self.writers.get(&conn) else {
            return;
        };
        match protocol::encode_head(msg, &data) {
            Ok(head) => {
                let _ = w.send((head, data));
            }
            Err(e) => tracing::error!("cannot encode {}: {e}", msg.kind()),
        }
    }

    /// Sends an already framed message, its head and its data (the process server forwards
    /// cached frames as they are).
    pub fn send_raw(&mut self, conn: ConnId, head: Vec<u8>, data: Payload) {
        if let Some(w) = self.writers.get(&conn) {
            let _ = w.send((head, data));
        }
    }

    fn connect(&self, token: ConnectToken, addr: String, epoch: Epoch) {
        let (transport, hello, next, events, unreachable) = (
            self.transport.clone(),
            Hello {
                epoch,
                ..self.hello.clone()
            },
            self.next_conn.clone(),
            self.events.clone(),
            self.unreachable.clone(),
        );
        tokio::spawn(async move {
            let result = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let stream = transport
                    .connect(&addr)
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))?;
                connect_handshake(stream, &hello).await
            })
            .await
            .unwrap_or_else(|_| Err(format!("connect to {addr}: timed out")));
            match result {
                Ok((stream, peer)) => {
                    unreachable.log_success(&addr, &peer);
                    let conn = ConnId(next.fetch_add(1, Ordering::Relaxed));
                    start(
                        stream,
                        conn,
                        NetEvent::Connected { token, conn, peer },
                        events,
                    )
                    .await;
                }
                Err(reason) => {
                    unreachable.log_failure(&addr, &reason);
                    let _ = events
                        .send(NetInbound::Event(NetEvent::ConnectFailed { token, reason }))
                        .await;
                }
            }
        });
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, msg: &Message) -> std::io::Result<()> {
    let frame = protocol::encode(msg, &[]).map_err(std::io::Error::other)?;
    s.write_all(&frame).await?;
    s.flush().await
}

/// Reads exactly `len` bytes into a new vector, without zeroing it first.
pub async fn read_vec<S: AsyncRead + Unpin>(s: &mut S, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let want = (len - buf.len()) as u64;
        if (&mut *s).take(want).read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf)
}

/// Reads one frame. Framing errors are `InvalidData` errors that say what was wrong.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(Message, Vec<u8>)> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    s.read_exact(&mut head).await?;
    let header = protocol::parse_header(&head)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let body = read_vec(s, header.body_len as usize).await?;
    protocol::decode_body(&header, body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn connect_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    hello: &Hello,
) -> Result<(S, Hello), String> {
    write_frame(&mut s, &Message::Hello(hello.clone()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (msg, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| "handshake: timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    if let Message::Reject { reason } = &msg {
        return Err(format!("peer refused the connection: {reason}"));
    }
    let all = [
        Role::Agent,
        Role::ProcessServer,
        Role::MasterTarget,
        Role::ConfigServer,
    ];
    let peer = check_hello(&msg, &all).map_err(|e| e.to_string())?;
    Ok((s, peer))
}

async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    hello: &Hello,
    allowed: &[Role],
) -> Result<(S, Hello), String> {
    let (msg, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| "handshake: timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    match check_hello(&msg, allowed) {
        Ok(peer) => {
            write_frame(&mut s, &Message::Hello(hello.clone()))
                .await
                .map_err(|e| e.to_string())?;
            Ok((s, peer))
        }
        Err(e) => {
            let _ = write_frame(&mut s, &Message::reject(e.to_string())).await;
            Err(e.to_string())
        }
    }
}

/// Starts the reader and writer tasks of an established connection and reports it up.
async fn start<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    conn: ConnId,
    event: NetEvent,
    events: mpsc::Sender<NetInbound>,
) {
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<OutFrame>();
    if events
        .send(NetInbound::Up {
            conn,
            writer: tx,
            event,
        })
        .await
        .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        let mut wr = BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
        while let Some((head, data)) = rx.recv().await {
            if wr.write_all(&head).await.is_err() || wr.write_all(&data).await.is_err() {
                return;
            }
            if rx.is_empty() && wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let reason = loop {
            match read_frame(&mut rd).await {
                Ok((msg, data)) => {
                    let ev = NetInbound::Event(NetEvent::Received { conn, msg, data });
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break "peer closed the connection".to_string()
                }
                Err(e) => {
                    // Logged with the peer's name when the driver hears of the close.
                    tracing::debug!("connection {conn:?}: {e}");
                    break e.to_string();
                }
            }
        };
        let _ = events
            .send(NetInbound::Event(NetEvent::Closed { conn, reason }))
            .await;
    });
}
