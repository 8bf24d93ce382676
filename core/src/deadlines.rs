//! A deadline index: one deadline per key, the earliest found without a scan.
//!
//! A role keeps its timers in fixed tables (per disk, per link) and files each key's earliest
//! deadline here, so that `poll_timeout` is the index's first entry and a tick visits only the
//! keys that are due, however many disks there are. Both maps hold one entry per key: the index
//! is bounded by the number of keys the role has (its disks).

use crate::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct Deadlines<K: Ord + Clone> {
    by_time: BTreeSet<(Timestamp, K)>,
    of: BTreeMap<K, Timestamp>,
}

impl<K: Ord + Clone> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            by_time: BTreeSet::new(),
            of: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Deadlines<K> {
    /// Sets `key`'s deadline to `at` (replacing the one it had), or clears it with `None`.
    pub fn set(&mut self, key: K, at: Option<Timestamp>) {
        let old = match at {
            Some(t) => self.of.insert(key.clone(), t),
            None => self.of.remove(&key),
        };
        if let Some(old) = old {
            self.by_time.remove(&(old, key.clone()));
        }
        if let Some(t) = at {
            self.by_time.insert((t, key));
        }
    }

    pub fn get(&self, key: &K) -> Option<Timestamp> {
        self.of.get(key).copied()
    }

    /// The earliest deadline of all.
    pub fn next(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// The keys whose deadline is at or before `now`, earliest first (their deadlines stay set
    /// until `set` replaces or clears them).
    pub fn due(&self, now: Timestamp) -> impl Iterator<Item = K> + '_ {
        self.by_time
            .iter()
            .take_while(move |(t, _)| *t <= now)
            .map(|(_, k)| k.clone())
    }

    pub fn len(&self) -> usize {
        self.of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn the_earliest_deadline_and_the_due_keys_follow_every_set_and_clear() {
        let mut d = Deadlines::default();
        assert_eq!((d.next(), d.len(), d.is_empty()), (None, 0, true));
        d.set(1usize, Some(t(30)));
        d.set(2, Some(t(10)));
        d.set(3, Some(t(20)));
        assert_eq!(d.next(), Some(t(10)));
        assert!(!d.is_empty());
        assert_eq!(d.due(t(20)).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(d.due(t(9)).count(), 0);
        // Replaced: the old deadline is gone, not kept beside the new one.
        d.set(2, Some(t(40)));
        assert_eq!(
            (d.next(), d.get(&2), d.len()),
            (Some(t(20)), Some(t(40)), 3)
        );
        assert_eq!(d.due(t(35)).collect::<Vec<_>>(), [3, 1]);
        d.set(3, None);
        d.set(3, None); // Clearing what is not set changes nothing.
        assert_eq!((d.next(), d.get(&3), d.len()), (Some(t(30)), None, 2));
        assert_eq!(d.due(t(100)).collect::<Vec<_>>(), [1, 2]);
        // Two keys at the same time are both kept.
        d.set(1, Some(t(40)));
        assert_eq!(d.due(t(40)).collect::<Vec<_>>(), [1, 2]);
        d.set(1, None);
        d.set(2, None);
        assert!(d.is_empty() && d.next().is_none());
    }
}
