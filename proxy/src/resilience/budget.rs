//! A retry budget (Finagle's and linkerd's): retries may add a percentage of
//! the first attempts seen in the last ten seconds, plus a small floor per
//! second so a quiet upstream can still be retried. During an outage every
//! first attempt fails, and the budget keeps the retries from multiplying
//! the load on whatever is left.

use std::sync::Mutex;

use tokio::time::Instant;

/// The window is this many one-second buckets.
const WINDOW_SECONDS: usize = 10;

/// Counts first attempts and retries per second over a sliding window.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    started: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The second (since `started`) that `buckets[second % len]` counts.
    seconds: [u64; WINDOW_SECONDS],
    first_attempts: [u64; WINDOW_SECONDS],
    retries: [u64; WINDOW_SECONDS],
}

impl Window {
    /// The bucket for `second`, emptied if it last counted an older second.
    fn bucket(&mut self, second: u64) -> usize {
        let index = (second % WINDOW_SECONDS as u64) as usize;
        if self.seconds[index] != second {
            self.seconds[index] = second;
            self.first_attempts[index] = 0;
            self.retries[index] = 0;
        }
        index
    }

    /// First attempts and retries counted within the window ending at `second`.
    fn totals(&self, second: u64) -> (u64, u64) {
        let oldest = second.saturating_sub(WINDOW_SECONDS as u64 - 1);
        (0..WINDOW_SECONDS)
            .filter(|index| (oldest..=second).contains(&self.seconds[*index]))
            .fold((0, 0), |(first, retries), index| {
                (
                    first + self.first_attempts[index],
                    retries + self.retries[index],
                )
            })
    }
}

impl RetryBudget {
    pub(crate) fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: percent.into(),
            min_per_second: min_per_second.into(),
            started: Instant::now(),
            // Second 0 is the current one; the others start empty.
            window: Mutex::new(Window {
                seconds: [u64::MAX; WINDOW_SECONDS],
                ..Window::default()
            }),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while counting leaves consistent counts behind.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a first attempt; each one earns `percent`% of a retry.
    pub(crate) fn deposit(&self, now: Instant) {
        let second = self.second(now);
        let mut window = self.lock();
        let bucket = window.bucket(second);
        window.first_attempts[bucket] += 1;
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut window = self.lock();
        let (first_attempts, retries) = window.totals(second);
        let floor = self.min_per_second * WINDOW_SECONDS as u64;
        // retries / first_attempts <= percent / 100, in integers.
        let allowed = first_attempts * self.percent / 100 + floor;
        if retries >= allowed {
            return false;
        }
        let bucket = window.bucket(second);
        window.retries[bucket] += 1;
        true
    }
}

/// How long the budget remembers attempts.
#[cfg(test)]
const WINDOW: std::time::Duration = std::time::Duration::from_secs(WINDOW_SECONDS as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_first_attempts() {
        let budget = RetryBudget::new(20, 0);
        let now = Instant::now();
        assert!(!budget.withdraw(now), "no traffic, no floor: no retries");
        for _ in 0..10 {
            budget.deposit(now);
        }
        assert!(budget.withdraw(now));
        assert!(budget.withdraw(now));
        assert!(
            !budget.withdraw(now),
            "20% of 10 first attempts is 2 retries"
        );
    }

    #[test]
    fn the_floor_allows_retries_without_traffic() {
        let budget = RetryBudget::new(20, 1);
        let now = Instant::now();
        let granted = (0..20).filter(|_| budget.withdraw(now)).count();
        assert_eq!(granted, 10, "1 per second over a 10 s window");
    }

    #[test]
    fn old_attempts_leave_the_window() {
        let budget = RetryBudget::new(100, 0);
        let start = Instant::now();
        budget.deposit(start);
        assert!(budget.withdraw(start));
        assert!(!budget.withdraw(start));
        let later = start + WINDOW + std::time::Duration::from_secs(1);
        assert!(
            !budget.withdraw(later),
            "the deposit expired with its retry"
        );
        budget.deposit(later);
        assert!(budget.withdraw(later));
    }
}
