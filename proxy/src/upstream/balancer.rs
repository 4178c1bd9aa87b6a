//! Picks the first endpoint to try; the others follow in order after it.
//! Also owns the peak-EWMA latency estimate that `balance: peak_ewma` reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attache_config::Balance;
use tokio::time::Instant;

pub(super) struct Balancer {
    policy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub(super) fn new(policy: Balance) -> Self {
        Self {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// The index of the first endpoint to try among `count` (at least one).
    /// `active` reports an endpoint's open connections (or requests in
    /// flight), `latency` its peak-EWMA estimate.
    pub(super) fn pick(
        &self,
        count: usize,
        active: impl Fn(usize) -> usize,
        latency: impl Fn(usize) -> f64,
    ) -> usize {
        match self.policy {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % count,
            // Scanning from the rotating start breaks ties in turn, so equal
            // endpoints share new connections evenly.
            Balance::LeastConnections => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
                (0..count)
                    .map(|offset| (turn + offset) % count)
                    .min_by_key(|index| active(*index))
                    .unwrap_or(turn)
            }
            // Power of two choices: two distinct random endpoints, the one
            // with less expected wait (latency times work outstanding) wins.
            // Random pairs keep a slow endpoint from being starved of the
            // samples that would show it has recovered.
            Balance::PeakEwma => {
                if count == 1 {
                    return 0;
                }
                let first = fastrand::usize(..count);
                let second = (first + 1 + fastrand::usize(..count - 1)) % count;
                let cost = |index: usize| latency(index) * (active(index) + 1) as f64;
                if cost(second) < cost(first) {
                    second
                } else {
                    first
                }
            }
        }
    }
}

/// A latency estimate that jumps up to any slower sample at once and decays
/// towards faster ones (linkerd's and Finagle's peak EWMA), so an endpoint
/// that turns slow loses traffic immediately and wins it back gradually.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    state: Mutex<(f64, Instant)>,
}

/// The estimate before any sample: optimistic enough that new endpoints get tried.
const DEFAULT_LATENCY: Duration = Duration::from_millis(30);
/// Time constant of the decay towards faster samples.
const DECAY: Duration = Duration::from_secs(10);

impl PeakEwma {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new((DEFAULT_LATENCY.as_secs_f64(), Instant::now())),
        }
    }

    /// Folds in one sample taken at `now`.
    pub(crate) fn observe(&self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let (estimate, at) = *state;
        let next = if sample > estimate {
            sample
        } else {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            let weight = (-elapsed / DECAY.as_secs_f64()).exp();
            estimate * weight + sample * (1.0 - weight)
        };
        *state = (next, now);
    }

    /// The current estimate, in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_each_endpoint_in_turn() {
        let balancer = Balancer::new(Balance::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| balancer.pick(3, |_| 0, |_| 0.0)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_and_rotates_ties() {
        let balancer = Balancer::new(Balance::LeastConnections);
        let active = [5, 1, 1];
        let picks: Vec<_> = (0..4)
            .map(|_| balancer.pick(3, |index| active[index], |_| 0.0))
            .collect();
        assert_eq!(picks, vec![1, 1, 2, 1]);
    }

    #[test]
    fn peak_ewma_never_picks_the_slow_endpoint_of_two() {
        let balancer = Balancer::new(Balance::PeakEwma);
        let latency = [0.100, 0.001];
        for _ in 0..100 {
            assert_eq!(balancer.pick(2, |_| 0, |index| latency[index]), 1);
        }
        // With three, the slow one can only win a pair against... nothing:
        // it loses every pair it is in.
        let latency = [0.001, 0.100, 0.001];
        for _ in 0..100 {
            assert_ne!(balancer.pick(3, |_| 0, |index| latency[index]), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let ewma = PeakEwma::new();
        let now = Instant::now();
        ewma.observe(Duration::from_millis(500), now);
        assert!((ewma.seconds() - 0.5).abs() < 1e-9);
        // One decay constant later a fast sample pulls it most of the way down.
        ewma.observe(Duration::from_millis(1), now + DECAY);
        let expected = 0.5 * (-1.0f64).exp() + 0.001 * (1.0 - (-1.0f64).exp());
        assert!((ewma.seconds() - expected).abs() < 1e-9);
    }
}
