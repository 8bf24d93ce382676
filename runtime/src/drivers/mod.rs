//! The tokio drivers of the four roles. All four run the one loop of [`round`] (quinn's
//! `ConnectionDriver` shape): wait for an event or the core's timeout, take every ready input,
//! feed each to `handle`, drain `poll_output` and carry every output out, in order, then one
//! group commit per round whose completions are fed back. Each role supplies only its
//! [`round::Effects`]: how its outputs are carried out and what its commit is.
//!
//! Time is read only through `tokio::time` (plus one wall-clock reading at start, to stamp
//! recovery points), so that the simulation's clock applies.

pub mod agent;
mod agent_stop;
pub mod config_server;
pub mod master_target;
pub mod process_server;
pub mod round;

use crate::meta::{MetaError, MetaStore};
use crate::transport::{Tcp, Transport};
use crate::vfs::{StdVfs, Vfs};
use axum::Router;
use haven_core::time::Timestamp;
use std::path::Path;
use std::sync::Arc;
use tokio::time::Instant;

/// Most events taken from a channel in one loop turn before outputs are carried out; keeps
/// group commits large under load without starving timers.
pub const EVENTS_PER_TURN_MAX: usize = 256;
/// Depth of a driver's network event channel: readers wait (TCP backpressure) past it.
pub const EVENT_CHANNEL_DEPTH: usize = 1024;

/// Runs a round of blocking file work (appends, fsyncs) on the calling task. On a multi-thread
/// runtime the worker hands its other tasks to another thread first (`block_in_place`), so that
/// the network and the other roles keep running while this one waits for the disk; on a
/// current-thread runtime (the simulation) it simply runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Opens a role's metadata store at a path.
pub type OpenMeta = Arc<dyn Fn(&Path) -> Result<MetaStore, MetaError> + Send + Sync>;

/// What a role runs on: a transport, a file system, a way to open its metadata store, and the
/// wall-clock base of its timestamps. Production uses `Host::real()`; the simulation passes
/// turmoil's network, a crash-faithful disk and a fixed clock base.
#[derive(Clone)]
pub struct Host<T: Transport, V: Vfs + Clone> {
    pub transport: T,
    pub vfs: V,
    /// Opens the metadata store at a path (the simulation maps it to a crash-faithful backend).
    pub open_meta: OpenMeta,
    /// Microseconds since the Unix epoch at start; None reads the system clock once.
    pub clock_base_us: Option<u64>,
}

impl Host<Tcp, StdVfs> {
    /// Real TCP, real files, redb files.
    pub fn real() -> Self {
        Host {
            transport: Tcp,
            vfs: StdVfs,
            open_meta: Arc::new(|p: &Path| MetaStore::open(p)),
            clock_base_us: None,
        }
    }
}

impl<T: Transport, V: Vfs + Clone> Host<T, V> {
    pub fn clock(&self) -> Clock {
        match self.clock_base_us {
            Some(base) => Clock::with_base(base),
            None => Clock::new(),
        }
    }
}

/// Accepts connections on a transport listener and serves each with `serve` in its own task.
pub fn spawn_accept_loop<T, F, Fut>(listener: T::Listener, what: &'static str, serve: F)
where
    T: Transport,
    F: Fn(T::Stream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match T::accept(&listener).await {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve(stream));
                }
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// The driver's clock: wall time at start plus tokio's monotonic elapsed time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_us: u64,
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let base_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            base_us,
            start: Instant::now(),
        }
    }

    pub fn with_base(base_us: u64) -> Clock {
        Clock {
            base_us,
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(self.base_us + self.start.elapsed().as_micros() as u64)
    }

    /// The tokio instant at which `t` falls.
    pub fn instant(&self, t: Timestamp) -> Instant {
        self.start + std::time::Duration::from_micros(t.0.saturating_sub(self.base_us))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Sleeps until `deadline`, or forever if there is none.
pub async fn sleep_until(clock: &Clock, deadline: Option<Timestamp>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
        None => std::future::pending().await,
    }
}

/// A fatal storage or setup error of a role: it stops, loudly.
#[derive(Debug, thiserror::Error)]
#[error("{role}: {message}")]
pub struct RoleError {
    pub role: &'static str,
    pub message: String,
}

impl RoleError {
    pub fn new(role: &'static str, message: impl std::fmt::Display) -> Self {
        RoleError {
            role,
            message: message.to_string(),
        }
    }
}

/// Whether a stats snapshot last refreshed at `at` is due again at `now` (and marks it done).
pub fn stats_due(
    at: &mut Option<haven_core::time::Timestamp>,
    now: haven_core::time::Timestamp,
) -> bool {
    let due = at.is_none_or(|t| now.millis_since(t) >= crate::api::stats::STATS_PUBLISH_MS);
    if due {
        *at = Some(now);
    }
    due
}

/// Binds `addr` on the host's transport; the error names what the address was for.
pub async fn bind<T: Transport>(
    transport: &T,
    addr: &str,
    what: &str,
) -> Result<(T::Listener, String), String> {
    let listener = transport
        .bind(addr)
        .await
        .map_err(|e| format!("{what} listen on {addr}: {e}"))?;
    let local = T::local_addr(&listener).map_err(|e| format!("{what} listen on {addr}: {e}"))?;
    Ok((listener, local))
}

/// Serves an HTTP API on `listener`, one task per connection.
pub fn spawn_http_api<T: Transport>(listener: T::Listener, what: &'static str, router: Router) {
    spawn_accept_loop::<T, _, _>(listener, what, move |stream| {
        let router = router.clone();
        async move {
            if let Err(e) = crate::http::serve_connection(stream, router).await {
                tracing::debug!("{what} connection: {e}");
            }
        }
    });
}
