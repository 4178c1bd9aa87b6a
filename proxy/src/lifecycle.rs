//! Process lifecycle state shared by the runtime, the listeners and the admin
//! server: the start-up latch behind `/startup`, the drain phase behind
//! `/ready`, the count of open client connections, and shutdown requests.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// Where the process is between start and exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Normal operation.
    Serving,
    /// Shutdown began: not ready, listeners still accept (the drain's minimum delay).
    Draining,
    /// Listeners stopped accepting (except those told to keep serving loopback).
    Closing,
}

/// Shared lifecycle state; one per process.
pub(crate) struct Lifecycle {
    started: AtomicBool,
    phase: watch::Sender<Phase>,
    connections: AtomicUsize,
    no_connections: Notify,
    shutdown_requested: Notify,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Self {
            started: AtomicBool::new(false),
            phase: watch::Sender::new(Phase::Serving),
            connections: AtomicUsize::new(0),
            no_connections: Notify::new(),
            shutdown_requested: Notify::new(),
        }
    }

    /// Opens the start-up latch: every listener is bound.
    pub(crate) fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Whether start-up finished (`/startup`).
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether the process should receive new work (`/ready`).
    pub(crate) fn is_ready(&self) -> bool {
        self.is_started() && *self.phase.borrow() == Phase::Serving
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// A receiver that sees every phase change (listeners watch it).
    pub(crate) fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Asks the runtime to drain and exit, as SIGTERM does (`POST /shutdown`).
    pub(crate) fn request_shutdown(&self) {
        self.shutdown_requested.notify_one();
    }

    /// Resolves when [`Self::request_shutdown`] was called.
    pub(crate) async fn shutdown_requested(&self) {
        self.shutdown_requested.notified().await;
    }

    /// Counts a client connection until the guard drops.
    pub(crate) fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            lifecycle: self.clone(),
        }
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Resolves once no client connection is open.
    pub(crate) async fn all_connections_closed(&self) {
        loop {
            // # Concurrency note
            // Register interest before reading the count: a guard dropping
            // between the read and the await would otherwise be missed.
            let mut notified = pin!(self.no_connections.notified());
            notified.as_mut().enable();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps one client connection counted as open.
pub(crate) struct ConnectionGuard {
    lifecycle: Arc<Lifecycle>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.lifecycle.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lifecycle.no_connections.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_connections_ends_when_the_last_guard_drops() {
        let lifecycle = Arc::new(Lifecycle::new());
        let first = lifecycle.track_connection();
        let second = lifecycle.track_connection();
        let waiter = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.all_connections_closed().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
        assert_eq!(lifecycle.open_connections(), 0);
    }

    #[test]
    fn ready_only_after_start_and_before_drain() {
        let lifecycle = Lifecycle::new();
        assert!(!lifecycle.is_ready());
        lifecycle.mark_started();
        assert!(lifecycle.is_ready());
        lifecycle.set_phase(Phase::Draining);
        assert!(!lifecycle.is_ready());
        assert!(lifecycle.is_started());
    }
}
