//! Protocol-agnostic resilience pieces, each small and clock-driven so it
//! can be unit-tested without sockets: backoff with full jitter, a retry
//! budget, a circuit breaker, and a concurrency limit with a bounded queue.
//! The upstream room combines them for connects; the HTTP stack will wrap
//! them as tower layers.

pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod limit;
