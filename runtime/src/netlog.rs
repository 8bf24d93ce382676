//! What the network layer tells the operator, and how often.
//!
//! A peer that cannot be reached is retried every `reconnect_delay_ms`, and a refused component
//! (a duplicate id, a role clash) keeps trying as well: logging every attempt would bury
//! everything else. So the first failure to reach an address is a WARN, the repeats are DEBUG,
//! and reaching it again is a WARN that closes the story; a refusal, sent or heard, is logged
//! (WARN or ERROR) when its text is new or a minute after it was last logged, DEBUG otherwise.
//! A lost connection to a process server, master target or configuration server is a WARN (an
//! agent's is INFO: agents come and go with their machines); a connection this side closed on
//! purpose is not reported at all.

use haven_core::protocol::{Hello, Role};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A refusal with the same text is logged loudly again at most this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses whose failures are counted at once; past it the table starts afresh (it only
/// shapes log levels).
const UNREACHABLE_MAX: usize = 4096;

/// "process-server ps1" (or just "config-server" when that is also its id), for log lines.
pub fn peer_name(peer: &Hello) -> String {
    let role = peer.role.name();
    if peer.component.as_str() == role {
        role.to_string()
    } else {
        format!("{role} {}", peer.component)
    }
}

/// Roles whose loss stops or stalls replication, so that losing one is a warning.
pub fn loss_matters(role: Role) -> bool {
    role != Role::Agent
}

/// Addresses that could not be reached, with the count of failed attempts since the last
/// success. Shared by the connect tasks of one driver.
#[derive(Clone, Default)]
pub struct Unreachable(Arc<Mutex<BTreeMap<String, u64>>>);

impl Unreachable {
    /// Counts a failed attempt; true for the first since `addr` was last reached.
    pub fn failed(&self, addr: &str) -> bool {
        let mut t = self.0.lock().expect("unreachable table");
        if t.len() >= UNREACHABLE_MAX && !t.contains_key(addr) {
            t.clear();
        }
        let n = t.entry(addr.to_string()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// `addr` was reached: the failed attempts before it, if any.
    pub fn reached(&self, addr: &str) -> Option<u64> {
        self.0.lock().expect("unreachable table").remove(addr)
    }

    /// Logs a failed connect attempt: WARN the first time, DEBUG for the repeats.
    pub fn log_failure(&self, addr: &str, reason: &str) {
        let reason = reason
            .strip_prefix(&format!("connect to {addr}: "))
            .unwrap_or(reason);
        if self.failed(addr) {
            tracing::warn!("cannot reach {addr}: {reason}; retrying (repeats are logged at debug)");
        } else {
            tracing::debug!("still cannot reach {addr}: {reason}");
        }
    }

    /// Logs a successful connect after failures.
    pub fn log_success(&self, addr: &str, peer: &Hello) {
        if let Some(n) = self.reached(addr) {
            let who = peer_name(peer);
            let attempts = if n == 1 { "attempt" } else { "attempts" };
            tracing::warn!("reached {who} at {addr} again, after {n} failed {attempts}");
        }
    }
}

/// Keeps a repeated message from flooding the log: `fresh` says whether to log it loudly.
#[derive(Default)]
pub struct Repeats {
    /// When each text was last logged loudly.
    last: BTreeMap<String, Instant>,
}

/// Texts remembered by one `Repeats`; past it the table starts afresh.
const REPEATS_MAX: usize = 256;

impl Repeats {
    /// True when `text` was not logged loudly in the last `REFUSAL_LOG_INTERVAL`.
    pub fn fresh(&mut self, text: &str, now: Instant) -> bool {
        if let Some(at) = self.last.get(text) {
            if now.duration_since(*at) < REFUSAL_LOG_INTERVAL {
                return false;
            }
        }
        if self.last.len() >= REPEATS_MAX {
            self.last.clear();
        }
        self.last.insert(text.to_string(), now);
        true
    }
}

/// A `Repeats` shared by the tasks of one driver.
pub type SharedRepeats = Arc<Mutex<Repeats>>;

/// `fresh` on a shared `Repeats`.
pub fn fresh(r: &SharedRepeats, text: &str) -> bool {
    r.lock().expect("repeats").fresh(text, Instant::now())
}

#[cfg(test)]
mod tests;
