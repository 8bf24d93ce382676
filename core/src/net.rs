//! What every role says to and hears from the network, through its driver.
//!
//! The driver owns sockets and the handshake (it sends our `Hello`, checks the peer's with
//! `protocol::check_hello`, and reports the peer). Core sees connections as `ConnId`s and frames
//! as messages plus a data part.

use crate::ids::ConnId;
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
    Connect {
        token: ConnectToken,
        addr: String,
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
