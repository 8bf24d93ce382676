//! The second level of the simulation: the real runtime drivers (the same code as production:
//! network layer, NBD server, stores, redb metadata) on turmoil hosts, over turmoil's simulated
//! TCP, with crash-faithful disks (`crate::storage`). Fewer seeds than the in-process level, but
//! it exercises the drivers themselves: framing, reconnects, group commit, recovery on reopen.
//!
//! A run: four hosts (`cs`, `ps`, `mt`, `agent`), a workload client that writes through the
//! agent's NBD export exactly as qemu would and keeps a model of the disk, faults applied by the
//! test between simulation steps (host crash and restart with the unsynced part of its disk
//! dropped, partitions, holds), then a check that the newest recovery point, read back through
//! the master target's API, equals the model byte for byte.

pub mod cluster;
pub mod durability;
pub mod faults;
pub mod nbd_client;
pub mod tap;
pub mod transport;
pub mod workload;
