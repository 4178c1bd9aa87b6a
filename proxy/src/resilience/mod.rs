//! Protocol-agnostic resilience pieces, each small and clock-driven so it
//! can be unit-tested without sockets: backoff with full jitter, a retry
//! budget, a circuit breaker, a concurrency limit with a bounded queue (also
//! a tower layer whose readiness is holding a slot), the per-try timeout
//! layer and a tower retry policy. The upstream room combines them for
//! connects; the HTTP stack (`http::proxy::HttpUpstream::stack`) composes
//! the tower ones per request.

pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod limit;
pub(crate) mod per_try_timeout;
pub(crate) mod retry;
