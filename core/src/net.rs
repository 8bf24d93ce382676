//! What every role says to and hears from the network, through its driver.
//!
//! The driver owns sockets and the handshake (it sends our `Hello`, checks the peer's with
//! `protocol::check_hello`, and reports the peer). Core sees connections as `ConnId`s and frames
//! as messages plus a data part.

use crate::ids::{ConnId, Epoch};
use crate::protocol::{Hello, Message};
use crate::time::Timestamp;
use std::sync::Arc;

/// A data part that may be sent more than once (resends) without copying.
pub type Payload = Arc<Vec<u8>>;

/// A token that names an outgoing connection attempt, chosen by core.
pub type ConnectToken = u64;

#[derive(Debug)]
pub enum NetEvent {
    /// An outgoing connection asked for with `Connect` is up and its handshake passed.
    Connected {
        token: ConnectToken,
        conn: ConnId,
        peer: Hello,
    },
    /// An outgoing connection could not be made.
    ConnectFailed { token: ConnectToken, reason: String },
    /// A peer connected to our listener and passed the handshake.
    Accepted { conn: ConnId, peer: Hello },
    /// A frame arrived.
    Received {
        conn: ConnId,
        msg: Message,
        data: Vec<u8>,
    },
    /// The connection is gone (peer closed, I/O error, framing error, or our `Close`).
    Closed { conn: ConnId, reason: String },
}

#[derive(Debug, Clone)]
pub enum NetCommand {
    /// Opens a connection; its `Hello` carries `epoch`: the protection epoch of the disk the
    /// connection is for (a stream is opened under it, and a new epoch takes a new connection),
    /// `Epoch(0)` for a control connection.
    Connect {
        token: ConnectToken,
        addr: String,
        epoch: Epoch,
    },
    Send {
        conn: ConnId,
        msg: Message,
        data: Payload,
    },
    Close {
        conn: ConnId,
    },
}

impl NetCommand {
    pub fn send(conn: ConnId, msg: Message) -> NetCommand {
        NetCommand::Send {
            conn,
            msg,
            data: Arc::new(Vec::new()),
        }
    }
}

impl NetCommand {
    /// Refuses `conn`: a `Reject` saying why, then a close.
    pub fn refusal(conn: ConnId, reason: impl Into<String>) -> [NetCommand; 2] {
        [
            NetCommand::send(conn, Message::reject(reason)),
            NetCommand::Close { conn },
        ]
    }
}

/// The state of an outgoing connection a role keeps up (to a peer or the configuration server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Idle,
    Connecting(ConnectToken),
    /// Connected, the stream's `OpenStream` not yet answered.
    Opening(ConnId),
    Ready(ConnId),
    /// Waiting until the time to reconnect.
    Backoff(Timestamp),
}

/// The epoch each accepted connection's `Hello` carries. A data connection is made for one
/// disk's stream under one epoch: an `OpenStream` under any other epoch is refused, so a peer
/// that learns of a new epoch opens a new connection (the old one cannot carry it by mistake).
/// One entry per open connection, removed when it closes.
#[derive(Debug, Default)]
pub(crate) struct ConnEpochs(std::collections::BTreeMap<ConnId, Epoch>);

impl ConnEpochs {
    pub fn accepted(&mut self, conn: ConnId, peer: &Hello) {
        self.0.insert(conn, peer.epoch);
    }

    pub fn closed(&mut self, conn: ConnId) {
        self.0.remove(&conn);
    }

    /// Why `OpenStream { disk, epoch }` may not be opened on `conn`, if it may not.
    pub fn refusal(&self, conn: ConnId, disk: &crate::ids::DiskId, epoch: Epoch) -> Option<String> {
        match self.0.get(&conn) {
            Some(e) if *e == epoch => None,
            Some(e) => Some(format!(
                "disk {disk}: OpenStream under epoch {epoch} on a connection made for epoch {e}; \
                 open a new connection for a new epoch"
            )),
            None => Some(format!(
                "disk {disk}: OpenStream on a connection that was not accepted here"
            )),
        }
    }
}
