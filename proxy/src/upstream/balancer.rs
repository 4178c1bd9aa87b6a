//! Picks the first endpoint to try for a new connection; the others follow
//! in order after it.

use std::sync::atomic::{AtomicUsize, Ordering};

use attache_config::Balance;

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

    /// The index of the first endpoint to try among `count` (at least one);
    /// `active` reports an endpoint's open connections.
    pub(super) fn pick(&self, count: usize, active: impl Fn(usize) -> usize) -> usize {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
        match self.policy {
            Balance::RoundRobin => turn,
            // Scanning from the rotating start breaks ties in turn, so equal
            // endpoints share new connections evenly.
            Balance::LeastConnections => (0..count)
                .map(|offset| (turn + offset) % count)
                .min_by_key(|index| active(*index))
                .unwrap_or(turn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_each_endpoint_in_turn() {
        let balancer = Balancer::new(Balance::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| balancer.pick(3, |_| 0)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_and_rotates_ties() {
        let balancer = Balancer::new(Balance::LeastConnections);
        let active = [5, 1, 1];
        let picks: Vec<_> = (0..4)
            .map(|_| balancer.pick(3, |index| active[index]))
            .collect();
        assert_eq!(picks, vec![1, 1, 2, 1]);
    }
}
