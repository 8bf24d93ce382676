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

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose only deadline is `due`; it counts its ticks.
    struct Alarm {
        due: Option<Timestamp>,
        ticks: u32,
    }

    impl Machine for Alarm {
        type Input = ();
        type Output = ();
        fn handle(&mut self, _now: Timestamp, _input: ()) {
            self.ticks += 1;
        }
        fn poll_output(&mut self) -> Option<()> {
            None
        }
        fn poll_timeout(&self) -> Option<Timestamp> {
            self.due
        }
        fn tick() {}
        fn net(_ev: NetEvent) {}
    }

    #[test]
    fn a_machine_is_ticked_once_its_deadline_is_reached() {
        let mut m = Alarm {
            due: Some(Timestamp(10)),
            ticks: 0,
        };
        assert!(!tick_if_due(&mut m, Timestamp(9)));
        assert_eq!(m.ticks, 0, "not before the deadline");
        assert!(tick_if_due(&mut m, Timestamp(10)));
        assert_eq!(m.ticks, 1, "at the deadline");
        m.due = None;
        assert!(!tick_if_due(&mut m, Timestamp(u64::MAX)));
        assert_eq!(m.ticks, 1, "no deadline, no tick");
    }
}
