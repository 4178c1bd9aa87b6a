//! A tower retry [`Policy`] that any protocol can use: it asks a
//! protocol-specific [`RetryClass`] whether an outcome is worth another try
//! and whether the request can be replayed, and bounds retries three ways:
//! attempts per request, retries in flight per upstream, and the upstream's
//! retry budget, so that retries cannot multiply an outage. Each retry
//! waits a jittered exponential backoff first.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::retry::Policy;

use super::backoff::Backoff;
use super::budget::RetryBudget;

/// What a protocol knows about its requests and outcomes.
pub(crate) trait RetryClass<Request, Response, Error> {
    /// A copy of `request` for a later try, when it can be replayed.
    fn replay(&self, request: &Request) -> Option<Request>;
    /// Whether `result` of sending `request` calls for another try.
    fn should_retry(&self, request: &Request, result: &Result<Response, Error>) -> bool;
}

/// Retry limits and counters shared by every request to one upstream.
pub(crate) struct RetryLimits {
    /// Tries per request, the first included.
    pub(crate) attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Arc<RetryBudget>,
    /// Retries that may be in flight at once.
    pub(crate) max_in_flight: usize,
    in_flight: AtomicUsize,
    pub(crate) metrics: RetryMetrics,
}

/// Counters of retries made and not made.
#[derive(Clone)]
pub(crate) struct RetryMetrics {
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) overflow: Counter,
}

impl RetryLimits {
    pub(crate) fn new(
        attempts: u32,
        backoff: Backoff,
        budget: Arc<RetryBudget>,
        max_in_flight: usize,
        metrics: RetryMetrics,
    ) -> Self {
        Self {
            attempts,
            backoff,
            budget,
            max_in_flight,
            in_flight: AtomicUsize::new(0),
            metrics,
        }
    }
}

/// One retry in flight; counted until the next decision or the request's end.
struct InFlight(Arc<RetryLimits>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The policy; cloned for every request (tower's `Retry` keeps one per
/// response future), so its counters are per request.
pub(crate) struct RetryPolicy<C> {
    limits: Arc<RetryLimits>,
    class: C,
    retries: u32,
    deposited: bool,
    in_flight: Option<InFlight>,
}

impl<C: Clone> Clone for RetryPolicy<C> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits.clone(),
            class: self.class.clone(),
            retries: self.retries,
            deposited: self.deposited,
            // A retry in flight belongs to the request that made it.
            in_flight: None,
        }
    }
}

impl<C> RetryPolicy<C> {
    pub(crate) fn new(limits: Arc<RetryLimits>, class: C) -> Self {
        Self {
            limits,
            class,
            retries: 0,
            deposited: false,
            in_flight: None,
        }
    }
}

impl<C, Request, Response, Error> Policy<Request, Response, Error> for RetryPolicy<C>
where
    C: RetryClass<Request, Response, Error>,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request,
        result: &mut Result<Response, Error>,
    ) -> Option<Self::Future> {
        // The previous retry, if any, has finished.
        self.in_flight = None;
        if !self.class.should_retry(request, result) || self.retries + 1 >= self.limits.attempts {
            return None;
        }
        let limits = &self.limits;
        let admitted =
            limits
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |in_flight| {
                    (in_flight < limits.max_in_flight).then_some(in_flight + 1)
                });
        if admitted.is_err() {
            limits.metrics.overflow.inc();
            return None;
        }
        let in_flight = InFlight(limits.clone());
        if !limits.budget.withdraw(Instant::now()) {
            limits.metrics.budget_exhausted.inc();
            return None;
        }
        self.in_flight = Some(in_flight);
        self.retries += 1;
        limits.metrics.retries.inc();
        Some(tokio::time::sleep(limits.backoff.delay(self.retries - 1)))
    }

    fn clone_request(&mut self, request: &Request) -> Option<Request> {
        // Called before every try; the first one earns the budget its share.
        if !self.deposited {
            self.deposited = true;
            self.limits.budget.deposit(Instant::now());
        }
        self.class.replay(request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tower::{Service, ServiceExt, service_fn};

    use super::*;

    /// Requests are numbers and always replayable; odd ones are never retried.
    #[derive(Clone)]
    struct RetryEven;

    impl RetryClass<u32, &'static str, &'static str> for RetryEven {
        fn replay(&self, request: &u32) -> Option<u32> {
            Some(*request)
        }
        fn should_retry(&self, request: &u32, result: &Result<&'static str, &'static str>) -> bool {
            request.is_multiple_of(2) && result.is_err()
        }
    }

    fn limits(attempts: u32, budget_min_per_second: u32) -> Arc<RetryLimits> {
        Arc::new(RetryLimits::new(
            attempts,
            Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            Arc::new(RetryBudget::new(0, budget_min_per_second)),
            16,
            RetryMetrics {
                retries: Counter::default(),
                budget_exhausted: Counter::default(),
                overflow: Counter::default(),
            },
        ))
    }

    /// A service failing the first `failures` calls, counting every call.
    fn flaky(
        failures: u32,
    ) -> (
        Arc<Mutex<u32>>,
        impl Service<u32, Response = &'static str, Error = &'static str, Future: Send> + Clone,
    ) {
        let calls = Arc::new(Mutex::new(0));
        let counted = calls.clone();
        let service = service_fn(move |_request: u32| {
            let mut calls = counted.lock().unwrap();
            *calls += 1;
            let outcome = if *calls <= failures {
                Err("down")
            } else {
                Ok("up")
            };
            std::future::ready(outcome)
        });
        (calls, service)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_within_the_attempts() {
        let limits = limits(3, 10);
        let (calls, service) = flaky(2);
        let retry = tower::retry::Retry::new(RetryPolicy::new(limits.clone(), RetryEven), service);
        assert_eq!(retry.oneshot(2).await, Ok("up"));
        assert_eq!(*calls.lock().unwrap(), 3);
        assert_eq!(limits.metrics.retries.get(), 2);
        assert_eq!(limits.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_attempts_and_skips_what_the_class_refuses() {
        let limits = limits(2, 10);
        let (calls, service) = flaky(5);
        let retry = tower::retry::Retry::new(RetryPolicy::new(limits.clone(), RetryEven), service);
        assert_eq!(retry.clone().oneshot(2).await, Err("down"));
        assert_eq!(*calls.lock().unwrap(), 2);
        assert_eq!(retry.oneshot(3).await, Err("down"));
        assert_eq!(*calls.lock().unwrap(), 3);
        assert_eq!(limits.metrics.retries.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_beyond_the_in_flight_limit_are_not_made() {
        let limits = limits(3, 100);
        let mut first = RetryPolicy::new(limits.clone(), RetryEven);
        let mut second = RetryPolicy::new(limits.clone(), RetryEven);
        let one_at_a_time = Arc::new(RetryLimits::new(
            3,
            limits.backoff,
            limits.budget.clone(),
            1,
            limits.metrics.clone(),
        ));
        let mut third = RetryPolicy::new(one_at_a_time, RetryEven);
        let mut failed: Result<&'static str, &'static str> = Err("down");
        // Two policies sharing a limit of 16 both retry.
        assert!(first.retry(&mut 2, &mut failed).is_some());
        assert!(second.retry(&mut 2, &mut failed).is_some());
        assert_eq!(limits.in_flight.load(Ordering::Relaxed), 2);
        // With a limit of one, a retry in flight blocks the next policy's.
        let shared = third.limits.clone();
        let mut fourth = RetryPolicy::new(shared.clone(), RetryEven);
        assert!(third.retry(&mut 2, &mut failed).is_some());
        assert!(fourth.retry(&mut 2, &mut failed).is_none());
        assert_eq!(shared.metrics.overflow.get(), 1);
        // The retry in flight ends with its policy's next decision or its end.
        drop(third);
        assert!(fourth.retry(&mut 2, &mut failed).is_some());
        drop((first, second));
        assert_eq!(limits.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_retries_across_requests() {
        // No percentage and one retry per second: ten retries over the 10 s
        // window. Ten failing requests with 3 attempts each: the first five
        // spend two retries each, the other five get none.
        let limits = limits(3, 1);
        let (calls, service) = flaky(u32::MAX);
        let retry = tower::retry::Retry::new(RetryPolicy::new(limits.clone(), RetryEven), service);
        for _ in 0..10 {
            assert_eq!(retry.clone().oneshot(2).await, Err("down"));
        }
        assert_eq!(*calls.lock().unwrap(), 20);
        assert_eq!(limits.metrics.retries.get(), 10);
        assert_eq!(limits.metrics.budget_exhausted.get(), 5);
    }
}
