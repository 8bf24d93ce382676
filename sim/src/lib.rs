//! haven-sim: deterministic simulation of a Haven installation.
//!
//! The in-process level (this crate's root modules) runs the haven-core state machines of all
//! four roles — one configuration server and as many agents (each with several disks), process
//! servers and master targets as the scenario's topology says — with no runtime, no sockets
//! and no clock: a seeded scheduler on a simulated clock, a network model with delay, partitions, slow and lossy links and connection resets
//! ([`net`]), crash-faithful stores that can also fail ([`stores`]), and a workload that writes
//! through the same input as NBD writes and keeps the full source history ([`workload`]).
//! Checkers ([`checker`]) run continuously and at the end of every run. Scenario scripts
//! ([`scenario`], docs/scenarios.md) and swarm runs ([`swarm`]) describe the faults; [`run`]
//! runs one seed. The same seed always gives the same trace digest.

pub mod checker;
pub mod cluster;
mod faults;
mod final_check;
pub mod net;
mod outputs;
pub mod rng;
pub mod run;
pub mod scenario;
mod schedule;
pub mod stores;
pub mod swarm;
pub mod workload;

pub mod storage;
pub mod turmoil_level;

pub use cluster::Cluster;
pub use net::{LinkParams, Node};
pub use rng::{image_digest, Fnv, Rng};
pub use run::{quiet_panics, run, run_with, Outcome};
pub use scenario::{Action, Expect, ReplicaExpect, Scenario, Topology};
pub use workload::WorkloadParams;

/// Runs the default scenario (steady replication, no faults) under `seed`.
pub fn run_default(seed: u64) -> Outcome {
    run(&Scenario::default(), seed)
}
