//! File-backed stores of the roles: the agent's source disk, the process server's cache and the
//! master target's replicas. All go through the `Vfs` trait so the simulation can swap in a
//! crash-faithful disk.

pub mod cache;
pub mod replica;
pub mod source;
