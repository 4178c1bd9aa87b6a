//! A concurrency limit with a bounded queue (Envoy's `max_connections` and
//! `max_pending_requests`, HAProxy's `maxconn` and `maxqueue`): up to `max`
//! holders at once; up to `max_pending` more wait, in arrival order, for at
//! most the queue timeout; anyone beyond that is refused at once.
//!
//! The upstream room takes slots for connections directly; `layer` makes
//! the same limit a tower layer for HTTP requests.

mod layer;

pub(crate) use layer::LimitLayer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(crate) struct ConcurrencyLimit {
    max: usize,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_pending: usize,
    queue_timeout: Duration,
}

/// Why a caller did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("every slot is taken and the queue is full")]
    Overflow,
    #[error("no slot freed up within the queue timeout")]
    QueueTimeout,
}

/// A held slot, and whether the caller had to queue for it.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    pub(crate) queued_for: Duration,
}

/// Restores the waiting count however the wait ends (also when cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConcurrencyLimit {
    pub(crate) fn new(max: usize, max_pending: usize, queue_timeout: Duration) -> Self {
        Self {
            max,
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicUsize::new(0),
            max_pending,
            queue_timeout,
        }
    }

    /// Slots held now.
    pub(crate) fn in_use(&self) -> usize {
        self.max.min(Semaphore::MAX_PERMITS) - self.slots.available_permits()
    }

    /// Callers waiting in the queue now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot now, without queueing, when one is free.
    pub(crate) fn try_acquire(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _permit: permit,
            queued_for: Duration::ZERO,
        })
    }

    /// A slot now, or after queueing.
    ///
    /// # Errors
    /// [`Refusal::Overflow`] at once when the queue is full, and
    /// [`Refusal::QueueTimeout`] when no slot frees up in time.
    pub(crate) async fn acquire(&self) -> Result<Slot, Refusal> {
        if let Some(slot) = self.try_acquire() {
            return Ok(slot);
        }
        let admitted = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting < self.max_pending).then_some(waiting + 1)
            });
        if admitted.is_err() {
            return Err(Refusal::Overflow);
        }
        let _waiting = Waiting(&self.waiting);
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot {
                _permit: permit,
                queued_for: started.elapsed(),
            }),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(Refusal::QueueTimeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn full_slots_queue_then_overflow_then_time_out() {
        let limit = Arc::new(ConcurrencyLimit::new(2, 1, Duration::from_secs(3)));
        let first = limit.acquire().await.unwrap();
        let _second = limit.acquire().await.unwrap();
        assert_eq!(limit.in_use(), 2);

        let queued = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(limit.waiting(), 1);
        assert_eq!(limit.acquire().await.unwrap_err(), Refusal::Overflow);

        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        let third = queued.await.unwrap().unwrap();
        assert_eq!(third.queued_for, Duration::from_secs(1));
        assert_eq!(limit.waiting(), 0);

        assert_eq!(limit.acquire().await.unwrap_err(), Refusal::QueueTimeout);
        assert_eq!(limit.waiting(), 0);
    }
}
