//! A clean stop of the agent: the driver waits until every seq it assigned is cached at the
//! process server, persists each disk's next seq, and ends its loop before it takes another
//! input, so that the next start resumes every stream where it was (no gap, no resync). A stop
//! that cannot drain in time (the process server is away) ends without the marks: the next
//! start then begins past the reservation, as after a crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often a stopping driver looks again whether it has drained.
pub const STOP_POLL: Duration = Duration::from_millis(20);

/// Shared by the agent's handle (which asks) and its driver (which answers).
#[derive(Default)]
pub struct StopRequest {
    requested: AtomicBool,
    done: AtomicBool,
    notify: Notify,
}

impl StopRequest {
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Whether the driver persisted the marks (it takes no more input).
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The driver persisted the marks and takes no more input.
    pub fn set_done(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Asks the agent to stop cleanly and waits up to `within`; true when it did (every stream
/// resumes where it was at the next start).
pub async fn stop(req: &Arc<StopRequest>, within: Duration) -> bool {
    req.requested.store(true, Ordering::Release);
    let wait = async {
        loop {
            let notified = req.notify.notified();
            if req.done() {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(within, wait).await.is_ok()
}
