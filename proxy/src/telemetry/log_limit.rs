//! Rate limits for log lines that clients or upstreams can cause once per
//! connection (a failed handshake, an unreachable upstream, garbage on the
//! wire): a flood of them must not become a flood of log lines. Each reason
//! gets a few lines per second; the next line written after a quiet spell
//! says how many were left out. Metrics count every event exactly; only the
//! lines are limited.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines written per reason and window.
const LINES_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

/// Limits for one listener's (or one room's) lines, by reason.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    windows: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    /// Lines left out since the last one written.
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line for `reason` may be written now; when it may,
    /// `Some(n)` where `n` lines for the same reason were left out before
    /// it (write `n` into the line, as `suppressed`).
    pub(crate) fn admit(&self, reason: &'static str) -> Option<u64> {
        self.admit_at(reason, Instant::now())
    }

    fn admit_at(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows.entry(reason).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            window.started = now;
            window.written = 0;
        }
        if window.written < LINES_PER_WINDOW {
            window.written += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

/// Writes a `tracing` event at `$level` when `$limit` admits `$reason`,
/// with a `suppressed` field counting the lines left out before it.
macro_rules! limited {
    ($limit:expr, $reason:expr, $level:ident!($($event:tt)*)) => {
        if let Some(suppressed) = $limit.admit($reason) {
            tracing::$level!(suppressed, $($event)*);
        }
    };
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_per_window_then_the_next_one_counts_the_rest() {
        let limit = LogLimit::default();
        let start = Instant::now();
        let admitted: Vec<Option<u64>> = (0..20).map(|_| limit.admit_at("tls", start)).collect();
        assert_eq!(admitted.iter().filter(|line| line.is_some()).count(), 5);
        assert!(admitted[..5].iter().all(|line| *line == Some(0)));
        // Another reason has its own window.
        assert_eq!(limit.admit_at("upstream", start), Some(0));
        let later = start + WINDOW;
        assert_eq!(limit.admit_at("tls", later), Some(15));
        assert_eq!(limit.admit_at("tls", later), Some(0));
    }
}
