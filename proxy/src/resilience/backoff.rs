//! Exponential backoff with full jitter (AWS Architecture Blog, "Exponential
//! Backoff and Jitter"): the wait before retry `n` is uniform in
//! `[0, min(max, base * 2^n))`, so clients that failed together do not retry
//! together.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry number `retry` (0 for the first).
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random wait before retry number `retry`, below [`Self::ceiling`].
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_maximum() {
        let backoff = Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(150),
        };
        let ceilings: Vec<_> = (0..5)
            .map(|retry| backoff.ceiling(retry).as_millis())
            .collect();
        assert_eq!(ceilings, vec![25, 50, 100, 150, 150]);
        assert_eq!(backoff.ceiling(200), Duration::from_millis(150));
    }

    #[test]
    fn delays_stay_below_the_ceiling_and_spread() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<_> = (0..200).map(|_| backoff.delay(1)).collect();
        assert!(
            delays
                .iter()
                .all(|delay| *delay <= Duration::from_millis(200))
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "full jitter spreads the waits");
    }
}
