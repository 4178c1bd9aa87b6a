//! A circuit breaker for one endpoint. Closed, it counts consecutive
//! failures; at the threshold it opens (the endpoint is ejected) for an
//! interval. When the interval ends, one caller gets a probe permit
//! (half-open): its success closes the breaker, its failure reopens it for
//! twice as long, up to a ceiling. Callers that are refused skip the
//! endpoint. Whether a breaker may open at all is the caller's decision (an
//! upstream never ejects more than a share of its endpoints).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Consecutive failures that open the breaker; 0 never opens it.
    pub(crate) consecutive_failures: u32,
    pub(crate) open_for: Duration,
    pub(crate) max_open_for: Duration,
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub(crate) const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    /// `reopened` counts failed probes since the breaker first opened.
    Open {
        until: Instant,
        reopened: u32,
    },
    HalfOpen {
        reopened: u32,
        probing: bool,
    },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    settings: Settings,
    inner: Mutex<Inner>,
}

/// Leave to use the endpoint once; report the outcome through it.
#[must_use = "report the outcome with succeeded() or failed()"]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// Whether this is the half-open breaker's single probe.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// The attempt worked; returns the new state if it changed.
    pub(crate) fn succeeded(mut self) -> Option<State> {
        self.settled = true;
        let mut inner = self.breaker.lock();
        match *inner {
            Inner::Closed { .. } => {
                *inner = Inner::Closed { failures: 0 };
                None
            }
            Inner::HalfOpen { .. } if self.probe => {
                *inner = Inner::Closed { failures: 0 };
                Some(State::Closed)
            }
            // A late result from before the breaker opened changes nothing.
            _ => None,
        }
    }

    /// The attempt failed at `now`; `may_open` is asked before a closed
    /// breaker opens. Returns the new state if it changed.
    pub(crate) fn failed(mut self, now: Instant, may_open: impl FnOnce() -> bool) -> Option<State> {
        self.settled = true;
        let settings = self.breaker.settings;
        let mut inner = self.breaker.lock();
        match *inner {
            Inner::Closed { failures } => {
                let failures = failures.saturating_add(1);
                let threshold = settings.consecutive_failures;
                if threshold > 0 && failures >= threshold && may_open() {
                    *inner = Inner::Open {
                        until: now + settings.open_for,
                        reopened: 0,
                    };
                    Some(State::Open)
                } else {
                    *inner = Inner::Closed { failures };
                    None
                }
            }
            Inner::HalfOpen { reopened, .. } if self.probe => {
                let reopened = reopened.saturating_add(1);
                *inner = Inner::Open {
                    until: now + self.breaker.open_interval(reopened),
                    reopened,
                };
                Some(State::Open)
            }
            _ => None,
        }
    }
}

impl Drop for Permit<'_> {
    /// An abandoned probe (its client left) lets the next caller probe.
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut inner = self.breaker.lock();
            if let Inner::HalfOpen { probing, .. } = &mut *inner {
                *probing = false;
            }
        }
    }
}

impl Breaker {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_interval(&self, reopened: u32) -> Duration {
        let factor = 1u32.checked_shl(reopened.min(31)).unwrap_or(u32::MAX);
        self.settings
            .open_for
            .saturating_mul(factor)
            .min(self.settings.max_open_for)
    }

    pub(crate) fn state(&self) -> State {
        match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Leave to try the endpoint at `now`, or `None` while it is ejected (or
    /// its single probe is out). Also returns the new state when this call
    /// turned an open breaker half-open.
    pub(crate) fn try_acquire(&self, now: Instant) -> (Option<Permit<'_>>, Option<State>) {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            settled: false,
        };
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Closed { .. } => (Some(permit(false)), None),
            Inner::Open { until, reopened } if now >= *until => {
                *inner = Inner::HalfOpen {
                    reopened: *reopened,
                    probing: true,
                };
                (Some(permit(true)), Some(State::HalfOpen))
            }
            Inner::Open { .. } => (None, None),
            Inner::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                (Some(permit(true)), None)
            }
            Inner::HalfOpen { .. } => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(Settings {
            consecutive_failures: 3,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(15),
        })
    }

    fn fail(breaker: &Breaker, now: Instant) -> Option<State> {
        breaker
            .try_acquire(now)
            .0
            .expect("admitted")
            .failed(now, || true)
    }

    #[test]
    fn consecutive_failures_open_and_a_success_resets_the_count() {
        let breaker = breaker();
        let now = Instant::now();
        assert_eq!(fail(&breaker, now), None);
        assert_eq!(fail(&breaker, now), None);
        assert_eq!(breaker.try_acquire(now).0.unwrap().succeeded(), None);
        assert_eq!(fail(&breaker, now), None);
        assert_eq!(fail(&breaker, now), None);
        assert_eq!(fail(&breaker, now), Some(State::Open));
        assert!(breaker.try_acquire(now).0.is_none());
        assert!(
            breaker
                .try_acquire(now + Duration::from_secs(4))
                .0
                .is_none()
        );
    }

    #[test]
    fn one_probe_after_the_interval_and_its_success_closes() {
        let breaker = breaker();
        let now = Instant::now();
        (0..3).for_each(|_| {
            fail(&breaker, now);
        });
        let later = now + Duration::from_secs(5);
        let (probe, changed) = breaker.try_acquire(later);
        let probe = probe.expect("the interval ended: one probe");
        assert!(probe.is_probe());
        assert_eq!(changed, Some(State::HalfOpen));
        assert!(
            breaker.try_acquire(later).0.is_none(),
            "only one probe at a time"
        );
        assert_eq!(probe.succeeded(), Some(State::Closed));
        assert!(!breaker.try_acquire(later).0.unwrap().is_probe());
    }

    #[test]
    fn failed_probes_double_the_interval_up_to_the_ceiling() {
        let breaker = breaker();
        let mut now = Instant::now();
        (0..3).for_each(|_| {
            fail(&breaker, now);
        });
        for expected in [10, 15, 15] {
            now += Duration::from_secs(20);
            assert_eq!(fail(&breaker, now), Some(State::Open));
            let just_before = now + Duration::from_secs(expected) - Duration::from_millis(1);
            assert!(breaker.try_acquire(just_before).0.is_none());
            assert!(
                breaker
                    .try_acquire(now + Duration::from_secs(expected))
                    .0
                    .is_some()
            );
            now += Duration::from_secs(expected);
            // The probe taken above is dropped unsettled; the next round probes again.
        }
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let breaker = breaker();
        let now = Instant::now();
        (0..3).for_each(|_| {
            fail(&breaker, now);
        });
        let later = now + Duration::from_secs(5);
        drop(breaker.try_acquire(later).0);
        assert!(
            breaker
                .try_acquire(later)
                .0
                .is_some_and(|permit| permit.is_probe())
        );
    }

    #[test]
    fn a_refused_opening_keeps_the_breaker_closed() {
        let breaker = breaker();
        let now = Instant::now();
        for _ in 0..5 {
            let permit = breaker.try_acquire(now).0.unwrap();
            assert_eq!(permit.failed(now, || false), None);
        }
        assert_eq!(breaker.state(), State::Closed);
    }
}
