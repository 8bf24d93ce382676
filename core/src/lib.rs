//! haven-core: the pure state machines of Haven's four roles, the wire protocol, and the block
//! math they share.
//!
//! Nothing in this crate performs I/O or reads a clock: it does not get any relevant timestamps
//! from the operating system, and it owns no sockets, files or threads. Each role is one struct
//! with the same face:
//!
//! ```text
//! handle(&mut self, now, input)      // a message, a completion, a tick
//! poll_output(&mut self) -> Option<Output>   // send, store, complete, ...
//! poll_timeout(&self) -> Option<Timestamp>   // when to call handle(now, Tick) at the latest
//! ```
//!
//! The MUST contract for drivers (the tokio runtime and the simulation):
//! - after every `handle`, drain `poll_output` until it returns `None` before the next input;
//! - carry out outputs in the order they are emitted; storage outputs that ask for an answer
//!   (`SourceWrite`, `CacheAppend`, `JournalAppend`, `Reserve`) are answered in emission order;
//! - report durability only once the bytes are synced: nothing core promises a peer depends on
//!   anything weaker;
//! - call `handle(now, Tick)` no later than `poll_timeout()`; an early or extra tick is harmless;
//! - on a storage error, stop the role loudly; reopening the stores repairs what a crash left.

pub mod agent;
pub mod batch;
pub mod config_server;
pub mod deadlines;
pub mod ids;
pub mod index;
pub mod machine;
pub mod master_target;
pub mod net;
pub mod process_server;
pub mod protocol;
pub mod stats;
pub mod time;

pub use ids::{ComponentId, ConnId, DiskId, Epoch, Seq};
pub use machine::Machine;
pub use time::Timestamp;
