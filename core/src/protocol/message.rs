//! The messages of the Haven protocol. Control parts are postcard-encoded; block data travels
//! as the raw data part of the frame that carries a `Batch`.

use crate::batch::BatchHeader;
use crate::ids::{ComponentId, DiskId, Epoch, Seq};
use crate::stats::{AgentStats, MasterTargetStats, ProcessServerStats};
use serde::{Deserialize, Serialize};

/// Protocol version. A peer with another version is refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 2;
/// Longest free-text reason carried in a message.
pub const REASON_BYTES_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    Agent,
    ProcessServer,
    MasterTarget,
    ConfigServer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::ProcessServer => "process-server",
            Role::MasterTarget => "master-target",
            Role::ConfigServer => "config-server",
        }
    }

    /// The name with its article, for sentences ("an agent", "a process-server").
    pub fn with_article(self) -> String {
        let article = if self == Role::Agent { "an" } else { "a" };
        format!("{article} {}", self.name())
    }
}

/// The first frame each side sends on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    pub component: ComponentId,
    /// The protection epoch the connection is made for: a data connection carries one disk's
    /// stream under this epoch (its `OpenStream` must say the same, or it is refused), a new
    /// epoch takes a new connection; 0 on control connections and from the acceptor.
    pub epoch: Epoch,
}

/// A component's registration with the configuration server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Address where the component accepts Haven protocol connections (process server and
    /// master target), empty for an agent.
    pub data_addr: String,
    /// Address of the component's HTTP API (master target: recovery points and images).
    pub api_addr: String,
    /// Disks this component protects (agent).
    pub disks: Vec<DiskInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub disk: DiskId,
    pub size_bytes: u64,
    /// The disk's file or block device on the agent's machine, canonical (symbolic links
    /// resolved), so that `haven export` can refuse to write over it; empty when unknown.
    #[serde(default)]
    pub source_path: String,
}

/// Which process server carries a disk's stream (sent to the agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub process_server: ComponentId,
    pub process_server_addr: String,
    /// The disk's batch bounds, when its policy sets them (None: the agent's own settings).
    pub batch_bytes_max: Option<u64>,
    pub batch_delay_ms: Option<u64>,
}

/// A disk whose protection ended: its receiver drops what it holds of the disk at `epoch` or
/// older (an agent stops streaming it, a process server drops its cache, a master target
/// removes its replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub disk: DiskId,
    pub epoch: Epoch,
}

/// Which master target holds a disk's replica (sent to the process server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub disk: DiskId,
    pub epoch: Epoch,
    pub size_bytes: u64,
    pub master_target: ComponentId,
    pub master_target_addr: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    /// The sender refuses the connection or a request; the connection is closed after it.
    Reject {
        reason: String,
    },

    // Data path: agent -> process server -> master target.
    /// Opens (or reopens) a disk's stream on this connection. `first_seq` is the oldest seq the
    /// sender still holds: if it is past what the receiver has, the writes between were lost
    /// (an agent crash) and the receiver records the gap instead of waiting for them.
    OpenStream {
        disk: DiskId,
        epoch: Epoch,
        size_bytes: u64,
        first_seq: Seq,
    },
    /// Answer to `OpenStream`: where the receiver stands, so the sender resends from there.
    StreamState {
        disk: DiskId,
        epoch: Epoch,
        cached_seq: Seq,
        applied_seq: Seq,
    },
    /// A batch of writes; the frame's data part holds the blocks of its data ops.
    Batch(BatchHeader),
    /// Process server -> agent: batches through `cached_seq` are durable in the cache; the
    /// master target has applied through `applied_seq`.
    BatchAck {
        disk: DiskId,
        epoch: Epoch,
        cached_seq: Seq,
        applied_seq: Seq,
    },
    /// Process server -> agent: the cache is full; resend batches after `first_seq` later.
    Busy {
        disk: DiskId,
        first_seq: Seq,
        retry_after_ms: u64,
    },
    /// Master target -> process server: batches through `applied_seq` are in the journal, synced.
    Applied {
        disk: DiskId,
        epoch: Epoch,
        applied_seq: Seq,
    },

    // Control: every component <-> configuration server.
    Register(Registration),
    Assign(Vec<Assignment>),
    Routes(Vec<Route>),
    /// Configuration server -> component: protections that ended. Resent until the
    /// component's heartbeat no longer lists the disk; receivers act on it idempotently.
    Retire(Vec<Retired>),
    AgentHeartbeat(AgentStats),
    ProcessServerHeartbeat(ProcessServerStats),
    MasterTargetHeartbeat(MasterTargetStats),
}

impl Message {
    /// Short name for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Reject { .. } => "Reject",
            Message::OpenStream { .. } => "OpenStream",
            Message::StreamState { .. } => "StreamState",
            Message::Batch(_) => "Batch",
            Message::BatchAck { .. } => "BatchAck",
            Message::Busy { .. } => "Busy",
            Message::Applied { .. } => "Applied",
            Message::Register(_) => "Register",
            Message::Assign(_) => "Assign",
            Message::Routes(_) => "Routes",
            Message::Retire(_) => "Retire",
            Message::AgentHeartbeat(_) => "AgentHeartbeat",
            Message::ProcessServerHeartbeat(_) => "ProcessServerHeartbeat",
            Message::MasterTargetHeartbeat(_) => "MasterTargetHeartbeat",
        }
    }

    pub fn reject(reason: impl Into<String>) -> Message {
        let mut reason: String = reason.into();
        if reason.len() > REASON_BYTES_MAX {
            let mut cut = REASON_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Message::Reject { reason }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer speaks protocol version {theirs}, this build speaks {PROTOCOL_VERSION}; upgrade the older component")]
    Version { theirs: u32 },
    #[error("a {got} connected where only {expected} may connect; check the addresses in the configuration")]
    Role { got: &'static str, expected: String },
    #[error("the first message must be Hello, got {0}")]
    NotHello(&'static str),
}

/// Checks the peer's first message: a Hello of our version from one of the roles we serve.
pub fn check_hello(msg: &Message, allowed: &[Role]) -> Result<Hello, HandshakeError> {
    let Message::Hello(hello) = msg else {
        return Err(HandshakeError::NotHello(msg.kind()));
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            theirs: hello.version,
        });
    }
    if !allowed.contains(&hello.role) {
        let expected = allowed
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(HandshakeError::Role {
            got: hello.role.name(),
            expected,
        });
    }
    Ok(hello.clone())
}
