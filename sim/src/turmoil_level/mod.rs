//! The second level of the simulation: the real runtime drivers (the same code as production:
//! network layer, NBD server, stores, redb metadata) on turmoil hosts, over turmoil's simulated
//! TCP, with crash-faithful disks (`crate::storage`). Fewer seeds than the in-process level, but
//! it exercises the drivers themselves: framing, reconnects, group commit, recovery on reopen.
//!
//! A run: the hosts of a `topology::Topology` (one of each role, `cs`, `ps`, `mt`, `agent`, in
//! the named tests; drawn in the swarm), a workload client per disk that writes through its
//! agent's NBD export exactly as qemu would and keeps a model of the disk, faults applied by the
//! test between simulation steps (host crash and restart with the unsynced part of its disk
//! dropped, partitions, holds), then a check that every disk's newest recovery point, read back
//! through its master target's API, equals its model byte for byte.

pub mod cluster;
pub mod durability;
pub mod faults;
pub mod nbd_client;
pub mod tap;
pub mod topology;
pub mod transport;
pub mod workload;
