//! Time as core sees it: a value passed in by the driver. Core never reads a clock.

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, as read by the driver (tokio's clock in production,
/// the simulated clock in the simulation).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn from_millis(ms: u64) -> Self {
        Timestamp(ms.saturating_mul(1000))
    }
    pub fn as_micros(self) -> u64 {
        self.0
    }
    pub fn as_millis(self) -> u64 {
        self.0 / 1000
    }
    pub fn plus_millis(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms.saturating_mul(1000)))
    }
    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
}

/// The earliest of two optional deadlines.
pub fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_and_saturate() {
        let t = Timestamp::from_millis(1_234);
        assert_eq!(t, Timestamp(1_234_000));
        assert_eq!(t.as_micros(), 1_234_000);
        assert_eq!(Timestamp(1_234_999).as_millis(), 1_234);
        assert_eq!(Timestamp::from_millis(u64::MAX), Timestamp(u64::MAX));
        assert_eq!(t.plus_millis(6).as_millis(), 1_240);
        assert_eq!(t.millis_since(Timestamp::from_millis(1_000)), 234);
        assert_eq!(Timestamp::ZERO.millis_since(t), 0);
    }

    #[test]
    fn earliest_takes_the_sooner_deadline_or_the_only_one() {
        let (a, b) = (Some(Timestamp(5)), Some(Timestamp(9)));
        assert_eq!(earliest(a, b), a);
        assert_eq!(earliest(b, a), a);
        assert_eq!(earliest(None, b), b);
        assert_eq!(earliest(b, None), b);
        assert_eq!(earliest(None, None), None);
    }
}
