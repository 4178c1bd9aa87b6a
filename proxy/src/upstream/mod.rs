//! Upstreams: a named group of endpoints and everything between a client
//! and one of them. Every protocol handler reaches its upstream through
//! [`Upstream::connect`], which
//! 1. takes a connection slot (`limits`: at most `max_connections` at once,
//!    up to `max_pending` clients queued for `queue_timeout`, the rest
//!    refused at once),
//! 2. picks endpoints in the balancer's order, skipping those whose breaker
//!    is open or that health checks took out (none left: fail fast). When
//!    health checks took out every endpoint, they are ignored (Envoy's panic
//!    routing): a misconfigured probe must not take the whole upstream down,
//!    and the breakers still stop traffic to endpoints that really fail,
//! 3. hands out a warm connection when the endpoint has one, or connects,
//! 4. retries a failed connect on the next endpoint after a jittered
//!    backoff, within `retry.attempts`, the client's `retry.deadline` and the
//!    upstream's retry budget.
//!
//! # Layout
//! - `balancer`: the first endpoint to try.
//! - `connector`: one TCP (+TLS) connect attempt.
//! - `endpoint`: one endpoint's breaker, health and counters.
//! - `warm`: the per-endpoint warm pool (bb8).
//! - `health`: active health checks.
//! - `status`: the snapshot behind `/upstreams` and the state gauges.

pub(crate) mod balancer;
pub(crate) mod connector;
mod endpoint;
mod health;
pub(crate) mod status;
mod warm;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use attache_config::{Endpoint as EndpointAddress, HealthCheck, ProxyProtocolSend};
use attache_proxy_protocol::{encode_v1, encode_v2};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::net::UpstreamStream;
use crate::reload::SharedClientConfig;
use crate::resilience::backoff::Backoff;
use crate::resilience::breaker::{self, Permit};
use crate::resilience::budget::RetryBudget;
use crate::resilience::limit::{ConcurrencyLimit, Refusal, Slot};
use crate::resilience::retry::{RetryLimits, RetryMetrics};
use crate::telemetry::metrics::{Metrics, UpstreamMetrics, UpstreamRefusal};
use balancer::Balancer;
use connector::{ConnectError, StartTls};
pub(crate) use endpoint::EndpointState;
pub(crate) use endpoint::Health;
use endpoint::{Ejections, EndpointSettings};
use warm::{WarmCheckout, WarmConnector, WarmPool};

/// A named group of endpoints that listeners forward to.
pub(crate) struct Upstream {
    name: Arc<str>,
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
    limit: ConcurrencyLimit,
    attempts: u32,
    backoff: Backoff,
    deadline: Duration,
    budget: Arc<RetryBudget>,
    max_retries: usize,
    health_check: Option<HealthCheck>,
    warm_size: usize,
    /// The PROXY protocol header each new connection starts with.
    proxy_protocol: Option<ProxyProtocolSend>,
    /// Every endpoint is unhealthy, so health is being ignored.
    panicking: AtomicBool,
    metrics: UpstreamMetrics,
    /// Stops the health checks when the upstream is dropped (a config
    /// reload replaced it and its last connection closed).
    health_checks: DropGuard,
}

struct Endpoint {
    state: Arc<EndpointState>,
    warm: Option<WarmPool>,
}

/// The PROXY protocol v2 TLV carrying the client's verified identity (its
/// certificate's first URI SAN, else DNS SAN, else CN), in the range the
/// specification leaves to applications (`PP2_TYPE_MIN_CUSTOM`).
pub(crate) const PP2_TYPE_ATTACHE_IDENTITY: u8 = 0xE0;

/// Who an upstream connection is for, for the PROXY protocol header an
/// upstream may ask for.
pub(crate) struct ClientOrigin<'a> {
    /// The client's address.
    pub(crate) source: std::net::SocketAddr,
    /// The address the client connected to.
    pub(crate) destination: std::net::SocketAddr,
    /// The client's verified TLS identity, on a TLS listener.
    pub(crate) identity: Option<&'a str>,
}

/// Why a client got no upstream connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unavailable {
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("every endpoint is ejected by its circuit breaker or unhealthy; failing fast")]
    NoEndpoint,
    #[error("{attempts} connect attempt(s) failed, then {stopped}; last error: {}", last.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string))]
    Failed {
        attempts: u32,
        stopped: Stop,
        last: Option<ConnectError>,
    },
}

/// Why retrying stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum Stop {
    #[error("no attempts left")]
    Attempts,
    #[error("the retry budget was spent")]
    Budget,
    #[error("the connect deadline passed")]
    Deadline,
    #[error("no endpoint was left to try")]
    NoEndpoint,
    #[error("every endpoint tried refused on its certificate, which a retry cannot change")]
    CertificateRefused,
}

/// No endpoint of an upstream could be connected.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream:?}: {reason}")]
pub(crate) struct UpstreamUnavailable {
    upstream: Arc<str>,
    reason: Unavailable,
}

impl UpstreamUnavailable {
    /// Whether the last attempt failed for lack of local resources (file
    /// descriptors, buffers): attache's limit, not the upstream's failure.
    pub(crate) fn out_of_local_resources(&self) -> bool {
        matches!(&self.reason, Unavailable::Failed { last: Some(error), .. } if error.is_local())
    }
}

/// How the upstream leg was obtained.
enum Leg {
    /// A new connection, with the MySQL greeting read before its in-band
    /// TLS, if any.
    Fresh(UpstreamStream, Option<Vec<u8>>),
    Warm(Box<WarmCheckout>),
}

/// A connected upstream stream. It holds its connection slot and counts as
/// active on its endpoint until dropped.
pub(crate) struct UpstreamConnection {
    leg: Leg,
    endpoint: Arc<EndpointState>,
    _slot: Slot,
}

impl UpstreamConnection {
    pub(crate) fn stream(&mut self) -> &mut UpstreamStream {
        match &mut self.leg {
            Leg::Fresh(stream, _) => stream,
            Leg::Warm(checkout) => &mut checkout.stream,
        }
    }

    /// The MySQL greeting the connect read before starting TLS in-band
    /// (whole, header included), once.
    pub(crate) fn take_greeting(&mut self) -> Option<Vec<u8>> {
        match &mut self.leg {
            Leg::Fresh(_, greeting) => greeting.take(),
            Leg::Warm(_) => None,
        }
    }

    /// The endpoint this connection reached, as configured.
    pub(crate) fn endpoint(&self) -> &EndpointAddress {
        &self.endpoint.address
    }

    /// The endpoint this connection reached, for side connections to it.
    pub(crate) fn endpoint_state(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
}

impl Drop for UpstreamConnection {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Builds the upstream and starts its warm pools filling (so this runs
    /// inside the Tokio runtime).
    ///
    /// # Errors
    /// When an endpoint's TLS server name is not valid.
    pub(crate) fn new(
        config: &attache_config::Upstream,
        tls: Option<SharedClientConfig>,
        start_tls: Option<StartTls>,
        metrics: &Metrics,
    ) -> Result<Self, attache_certs::tls::TlsError> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let ejections = Arc::new(Ejections::new(
            config.endpoints.len(),
            config.breaker.max_ejected_percent,
        ));
        let breaker = breaker::Settings {
            consecutive_failures: config.breaker.consecutive_failures,
            open_for: config.breaker.open_for,
            max_open_for: config.breaker.max_open_for,
        };
        let endpoints = config
            .endpoints
            .iter()
            .map(|address| {
                let server_name = config
                    .tls
                    .as_ref()
                    .map(|tls| {
                        attache_certs::tls::server_name(tls.server_name.as_deref(), &address.host)
                    })
                    .transpose()?;
                let state = Arc::new(EndpointState::new(EndpointSettings {
                    upstream: name.clone(),
                    address: address.clone(),
                    server_name,
                    tls: tls.clone(),
                    start_tls,
                    connect_timeout: config.connect_timeout,
                    breaker,
                    ejections: ejections.clone(),
                    metrics: metrics.endpoint(&config.name, &address.to_string()),
                }));
                let warm = config.warm_pool.as_ref().map(|warm| {
                    WarmConnector::pool(
                        state.clone(),
                        warm.size,
                        warm.max_age,
                        config.limits.max_connections,
                    )
                });
                Ok(Endpoint { state, warm })
            })
            .collect::<Result<_, attache_certs::tls::TlsError>>()?;
        let retry = &config.retry;
        Ok(Self {
            endpoints,
            balancer: Balancer::new(config.balance),
            limit: ConcurrencyLimit::new(
                config.limits.max_connections,
                config.limits.max_pending,
                config.limits.queue_timeout,
            ),
            attempts: retry.attempts,
            backoff: Backoff {
                base: retry.backoff,
                max: retry.max_backoff,
            },
            deadline: retry.deadline,
            budget: Arc::new(RetryBudget::new(
                retry.budget_percent,
                retry.budget_min_per_second,
            )),
            max_retries: config.limits.max_retries,
            health_check: config.health_check.clone(),
            warm_size: config.warm_pool.as_ref().map_or(0, |warm| warm.size),
            proxy_protocol: config.proxy_protocol,
            panicking: AtomicBool::new(false),
            metrics: metrics.upstream(&config.name),
            health_checks: CancellationToken::new().drop_guard(),
            name,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared (kept per request without a copy).
    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }

    /// Starts the health checks, then waits until every warm pool is full,
    /// or for at most the connect timeout (an upstream that is down must not
    /// hold up start-up: its pool keeps refilling in the background).
    pub(crate) async fn start(&self) {
        if let Some(check) = &self.health_check {
            let stop = self.health_checks.token();
            for endpoint in &self.endpoints {
                let checks = health::run(endpoint.state.clone(), check.clone());
                tokio::spawn(stop.clone().run_until_cancelled_owned(checks));
            }
        }
        let wait = self
            .endpoints
            .first()
            .map_or(Duration::ZERO, |endpoint| endpoint.state.connect_timeout);
        let deadline = Instant::now() + wait;
        let filled = || {
            self.endpoints.iter().all(|endpoint| {
                endpoint
                    .warm
                    .as_ref()
                    .is_none_or(|pool| pool.state().idle_connections as usize >= self.warm_size)
            })
        };
        while !filled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !filled() {
            tracing::warn!(upstream = %self.name, "warm pool not full at start-up; it keeps refilling");
        }
    }

    /// Connects a client to one endpoint (see the module documentation).
    ///
    /// # Errors
    /// [`UpstreamUnavailable`] saying why no connection was made.
    pub(crate) async fn connect(&self) -> Result<UpstreamConnection, UpstreamUnavailable> {
        self.connect_with(None).await
    }

    /// Connects `origin`'s client, sending the PROXY protocol header this
    /// upstream asks for (`proxy_protocol`) first on the new connection.
    ///
    /// # Errors
    /// [`UpstreamUnavailable`] saying why no connection was made.
    pub(crate) async fn connect_for(
        &self,
        origin: &ClientOrigin<'_>,
    ) -> Result<UpstreamConnection, UpstreamUnavailable> {
        let preface = self.proxy_protocol.map(|version| match version {
            ProxyProtocolSend::V1 => encode_v1(origin.source, origin.destination),
            ProxyProtocolSend::V2 => {
                let identity = origin
                    .identity
                    .map(|identity| (PP2_TYPE_ATTACHE_IDENTITY, identity.as_bytes()));
                encode_v2(origin.source, origin.destination, identity.as_slice())
            }
        });
        self.connect_with(preface).await
    }

    async fn connect_with(
        &self,
        preface: Option<Vec<u8>>,
    ) -> Result<UpstreamConnection, UpstreamUnavailable> {
        let slot = self.limit.acquire().await.map_err(|refusal| {
            self.metrics.refused(match refusal {
                Refusal::Overflow => UpstreamRefusal::Overflow,
                Refusal::QueueTimeout => UpstreamRefusal::QueueTimeout,
            });
            self.unavailable(Unavailable::Refused(refusal))
        })?;
        self.metrics
            .queue_wait
            .observe(slot.queued_for.as_secs_f64());
        let deadline = Instant::now() + self.deadline;
        let count = self.endpoints.len();
        let mut next = self.pick();
        let mut attempts = 0;
        let mut last = None;
        // Endpoints whose certificate was refused: not tried again.
        let mut refused_certificates = Vec::new();
        let stopped = loop {
            if attempts == self.attempts {
                break Stop::Attempts;
            }
            if refused_certificates.len() == count {
                break Stop::CertificateRefused;
            }
            if attempts == 0 {
                self.budget.deposit(Instant::now());
            } else {
                if !self.budget.withdraw(Instant::now()) {
                    self.metrics.budget_exhausted.inc();
                    break Stop::Budget;
                }
                let wake = Instant::now() + self.backoff.delay(attempts - 1);
                if wake >= deadline {
                    break Stop::Deadline;
                }
                tokio::time::sleep_until(wake).await;
                self.metrics.retries.inc();
            }
            let Some((index, permit)) = self.admit_from(next) else {
                if attempts == 0 {
                    self.metrics.refused(UpstreamRefusal::NoEndpoint);
                    return Err(self.unavailable(Unavailable::NoEndpoint));
                }
                break Stop::NoEndpoint;
            };
            if refused_certificates.contains(&index) {
                // Unsettled: this endpoint is not tried, so nothing is learned.
                drop(permit);
                break Stop::CertificateRefused;
            }
            next = (index + 1) % count;
            attempts += 1;
            let endpoint = &self.endpoints[index];
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, endpoint.attempt(permit, preface.as_deref()))
                .await
            {
                Ok(Ok(leg)) => {
                    endpoint
                        .state
                        .latency
                        .observe(started.elapsed(), Instant::now());
                    endpoint.state.active.fetch_add(1, Ordering::Relaxed);
                    return Ok(UpstreamConnection {
                        leg,
                        endpoint: endpoint.state.clone(),
                        _slot: slot,
                    });
                }
                Ok(Err(error)) => {
                    if error.is_certificate_refusal() {
                        refused_certificates.push(index);
                    }
                    last = Some(error);
                }
                Err(_) => break Stop::Deadline,
            }
        };
        Err(self.unavailable(Unavailable::Failed {
            attempts,
            stopped,
            last,
        }))
    }

    /// The balancer's first choice.
    fn pick(&self) -> usize {
        let state = |index: usize| &self.endpoints[index].state;
        self.balancer.pick(
            self.endpoints.len(),
            |index| state(index).active.load(Ordering::Relaxed),
            |index| state(index).latency.seconds(),
        )
    }

    /// The first endpoint from `start` on (wrapping) that may be tried now.
    fn admit_from(&self, start: usize) -> Option<(usize, Permit<'_>)> {
        self.admit_avoiding(start, None)
    }

    /// Like [`Self::admit_from`], trying `avoid` only when no other endpoint
    /// may be tried.
    fn admit_avoiding(&self, start: usize, avoid: Option<usize>) -> Option<(usize, Permit<'_>)> {
        let ignore_health = self.all_unhealthy();
        let count = self.endpoints.len();
        let admit = |index: usize| Some((index, self.endpoints[index].state.admit(ignore_health)?));
        (0..count)
            .map(|offset| (start + offset) % count)
            .filter(|index| Some(*index) != avoid)
            .find_map(admit)
            .or_else(|| avoid.and_then(admit))
    }

    /// An endpoint for one request (HTTP): the balancer's choice for a
    /// first try; for a retry, the endpoints after `avoid` (the one the
    /// previous try failed on) in order, so retries take no balancer turn.
    /// Either way the first that may be tried now, `avoid` only as a last
    /// resort. The caller reports the outcome with [`Self::settle`].
    pub(crate) fn choose(&self, avoid: Option<usize>) -> Option<(usize, Permit<'_>)> {
        let start = match avoid {
            Some(index) => (index + 1) % self.endpoints.len(),
            None => self.pick(),
        };
        self.admit_avoiding(start, avoid)
    }

    /// Feeds one request's outcome on endpoint `index` to its breaker (a
    /// failure may eject it) and, with its duration, to its latency estimate.
    pub(crate) fn settle(&self, index: usize, permit: Permit<'_>, succeeded: bool, took: Duration) {
        let state = &self.endpoints[index].state;
        state.latency.observe(took, Instant::now());
        state.settle(permit, succeeded);
    }

    /// Endpoint `index`'s shared state (for protocol-specific connectors).
    pub(crate) fn endpoint(&self, index: usize) -> &Arc<EndpointState> {
        &self.endpoints[index].state
    }

    /// How many endpoints there are.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Retry limits for protocol-level retries (HTTP), sharing this
    /// upstream's attempts, backoff and budget with its connect retries.
    pub(crate) fn retry_limits(&self) -> RetryLimits {
        RetryLimits::new(
            self.attempts,
            self.backoff,
            self.budget.clone(),
            self.max_retries,
            RetryMetrics {
                retries: self.metrics.retries.clone(),
                budget_exhausted: self.metrics.budget_exhausted.clone(),
                overflow: self.metrics.retry_overflow.clone(),
            },
        )
    }

    /// Handles for the upstream's metrics.
    pub(crate) fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Whether health checks took out every endpoint; logs when that starts and ends.
    fn all_unhealthy(&self) -> bool {
        let all = self
            .endpoints
            .iter()
            .all(|endpoint| endpoint.state.health() == Health::Unhealthy);
        // Read first: the common case (no change) writes nothing shared.
        if self.panicking.load(Ordering::Relaxed) != all
            && self.panicking.swap(all, Ordering::Relaxed) != all
        {
            if all {
                tracing::warn!(upstream = %self.name, "every endpoint failed its health checks; ignoring them until one passes (breakers still apply)");
            } else {
                tracing::info!(upstream = %self.name, "an endpoint passes its health checks again; unhealthy endpoints are skipped");
            }
        }
        all
    }

    fn unavailable(&self, reason: Unavailable) -> UpstreamUnavailable {
        UpstreamUnavailable {
            upstream: self.name.clone(),
            reason,
        }
    }
}

impl Endpoint {
    /// A warm connection when one is idle (a half-open probe always
    /// connects: it has to prove the endpoint is back), else a new one.
    async fn attempt(
        &self,
        permit: Permit<'_>,
        preface: Option<&[u8]>,
    ) -> Result<Leg, ConnectError> {
        if let Some(pool) = &self.warm
            && preface.is_none()
            && !permit.is_probe()
            && pool.state().idle_connections > 0
            && let Ok(checkout) = pool.get_owned().await
        {
            self.state.metrics.warm_used.inc();
            return Ok(Leg::Warm(Box::new(checkout)));
        }
        let connected = self.state.connect(permit, preface).await?;
        Ok(Leg::Fresh(connected.stream, connected.greeting))
    }
}
