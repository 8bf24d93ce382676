//! The one face every role shows its driver (quinn-proto's `Connection`, str0m's `Rtc`).
//!
//! A driver, the tokio runtime or the simulation, owns a `Machine` and loops: feed an input with
//! `handle`, drain `poll_output` until it returns `None`, carry the outputs out in order, and call
//! `handle(now, Self::tick())` no later than `poll_timeout`. Nothing in a machine reads a clock:
//! `now` is an argument, and an early or repeated tick is harmless.

use crate::net::NetEvent;
use crate::time::Timestamp;

pub trait Machine {
    /// Everything the machine can be told: network events, requests, completions, commands.
    type Input;
    /// Everything it asks for: sends, storage work, completions, answers to commands.
    type Output;

    fn handle(&mut self, now: Timestamp, input: Self::Input);
    fn poll_output(&mut self) -> Option<Self::Output>;
    /// The latest instant at which the driver must call `handle(now, Self::tick())`.
    fn poll_timeout(&self) -> Option<Timestamp>;

    /// The input that says "timers may have expired".
    fn tick() -> Self::Input;
    /// The input that carries a network event.
    fn net(ev: NetEvent) -> Self::Input;
}

/// Ticks `m` if its deadline is due at `now`; true when it did.
pub fn tick_if_due<M: Machine>(m: &mut M, now: Timestamp) -> bool {
    let due = m.poll_timeout().is_some_and(|t| t <= now);
    if due {
        m.handle(now, M::tick());
    }
    due
}
