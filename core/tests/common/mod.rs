//! The four roles driven by hand, with no runtime: a tiny in-test harness routes `NetCommand`s
//! between role instances (through the real framing) and carries out storage outputs in memory.
//! The richer, seeded version of this harness lives in haven-sim.
//!
//! `cluster` holds the `Cluster` and its network routing, `storage` carries out its storage
//! outputs, `mt_alone` drives a lone master target without a cluster, and `cs` a lone
//! configuration server.

#![allow(dead_code)]

pub mod agent_alone;
mod cluster;
pub mod cs;
pub mod mt_alone;
pub mod ps_alone;
mod storage;

pub use cluster::Cluster;

use haven_core::agent::{AgentSettings, IoId, SourceOp};
use haven_core::batch::{Encoding, BLOCK_BYTES};
use haven_core::config_server::ConfigServerSettings;
use haven_core::master_target::MasterTargetSettings;
use haven_core::process_server::ProcessServerSettings;
use haven_core::protocol::{Hello, Message, Role, PROTOCOL_VERSION};
use haven_core::{ComponentId, DiskId, Epoch};

pub const B: usize = BLOCK_BYTES as usize;
pub const DISK_BLOCKS: usize = 32;
pub const DISK_BYTES: usize = DISK_BLOCKS * B;

pub fn disk_id() -> DiskId {
    DiskId::new("disk0").unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Cs,
    Ps,
    Mt,
    Agent,
}

impl Node {
    pub const ALL: [Node; 4] = [Node::Cs, Node::Ps, Node::Mt, Node::Agent];
    pub fn addr(self) -> &'static str {
        match self {
            Node::Cs => "cs:7000",
            Node::Ps => "ps:7001",
            Node::Mt => "mt:7002",
            Node::Agent => "agent:none",
        }
    }
    /// The node's `Hello` on a connection made for `epoch`.
    pub fn hello_at(self, epoch: Epoch) -> Hello {
        Hello {
            epoch,
            ..self.hello()
        }
    }

    pub fn hello(self) -> Hello {
        let (role, name) = match self {
            Node::Cs => (Role::ConfigServer, "cs"),
            Node::Ps => (Role::ProcessServer, "ps1"),
            Node::Mt => (Role::MasterTarget, "mt1"),
            Node::Agent => (Role::Agent, "agent1"),
        };
        Hello {
            version: PROTOCOL_VERSION,
            role,
            component: ComponentId::new(name).unwrap(),
            epoch: Epoch(0),
        }
    }
}

pub fn agent_settings() -> AgentSettings {
    AgentSettings {
        component: ComponentId::new("agent1").unwrap(),
        config_server_addr: Node::Cs.addr().into(),
        batch_bytes_max: 4 * BLOCK_BYTES,
        batch_delay_ms: 10,
        buffer_bytes_max: 1 << 20,
        window_batches_max: 4,
        heartbeat_interval_ms: 1000,
        reconnect_delay_ms: 50,
    }
}

pub fn ps_settings() -> ProcessServerSettings {
    ProcessServerSettings {
        component: ComponentId::new("ps1").unwrap(),
        config_server_addr: Node::Cs.addr().into(),
        data_addr: Node::Ps.addr().into(),
        cache_bytes_max: 64 << 20,
        window_batches_max: 3,
        heartbeat_interval_ms: 1000,
        reconnect_delay_ms: 50,
        busy_retry_ms: 20,
    }
}

pub fn mt_settings() -> MasterTargetSettings {
    MasterTargetSettings {
        component: ComponentId::new("mt1").unwrap(),
        config_server_addr: Node::Cs.addr().into(),
        data_addr: Node::Mt.addr().into(),
        api_addr: "mt:8080".into(),
        heartbeat_interval_ms: 1000,
        reconnect_delay_ms: 50,
    }
}

pub fn cs_settings() -> ConfigServerSettings {
    ConfigServerSettings {
        rules: vec![],
        auto_protect: true,
        heartbeat_timeout_ms: 10_000,
    }
}

/// xorshift64: a deterministic workload without the rand crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A random write, unaligned write, or zeroing inside the disk.
pub fn random_op(c: &mut Cluster, rng: &mut Rng) -> IoId {
    match rng.below(6) {
        0 => {
            let off = rng.below(DISK_BLOCKS as u64 - 4) as usize * B;
            let len = (1 + rng.below(3)) as usize * B;
            let data = rng.bytes(len);
            c.write(off, data)
        }
        1 | 2 => {
            let off = rng.below(DISK_BYTES as u64 - 10_000) as usize;
            let len = 1 + rng.below(9_000) as usize;
            let data = rng.bytes(len);
            c.write(off, data)
        }
        3 => {
            let off = rng.below(DISK_BLOCKS as u64 - 2) as usize * B;
            c.zero(off, B * (1 + rng.below(2)) as usize)
        }
        4 => {
            let off = rng.below(DISK_BYTES as u64 - 10_000) as usize;
            c.zero(off, 1 + rng.below(9_000) as usize)
        }
        _ => {
            let off = rng.below(DISK_BYTES as u64 - 100) as usize;
            let len = 1 + rng.below(99) as usize;
            let data = rng.bytes(len);
            c.submit(
                SourceOp::Write {
                    offset: off as u64,
                    data,
                },
                true,
            )
        }
    }
}

/// The encodings of the batches the master target received, in order.
pub fn forwarded_encodings(c: &Cluster) -> Vec<Encoding> {
    c.delivered
        .iter()
        .filter_map(|(n, m)| match (n, m) {
            (Node::Mt, Message::Batch(h)) => Some(h.encoding),
            _ => None,
        })
        .collect()
}

/// Writes `n` compressible batches (one block each) while the master target holds its journal,
/// so that batches queue for the process server's window; then lets everything drain.
pub fn write_through_a_stalled_master_target(c: &mut Cluster, n: usize) {
    c.hold_journal = true;
    for i in 0..n {
        c.write((i % DISK_BLOCKS) * B, vec![i as u8 + 1; B]);
        c.run();
    }
    c.advance(50);
    c.hold_journal = false;
    c.persist_journal(usize::MAX);
    c.settle();
}
