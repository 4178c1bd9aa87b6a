//! One endpoint of an upstream and everything that decides whether it gets
//! traffic: its circuit breaker, its health, its share of the upstream's
//! ejections. Client connects, warm-pool refills and health probes all
//! reach the endpoint through here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use attache_config::Endpoint as EndpointAddress;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::balancer::PeakEwma;
use super::connector::{self, ConnectError, Origination, StartTls};
use crate::net::UpstreamStream;
use crate::reload::SharedClientConfig;
use crate::resilience::breaker::{self, Breaker, Permit};
use crate::telemetry::metrics::EndpointMetrics;

/// What active health checks last concluded about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// No health check is configured, or none has finished yet: routable.
    Unknown = 0,
    Healthy = 1,
    /// Out of the balancer until enough checks pass.
    Unhealthy = 2,
}

impl Health {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// How many endpoints of one upstream are ejected, against the most that may be.
#[derive(Debug)]
pub(super) struct Ejections {
    ejected: AtomicUsize,
    max: usize,
}

impl Ejections {
    /// At most `percent`% of `endpoints`, and always at least one, so that a
    /// single-endpoint upstream can fail fast.
    pub(super) fn new(endpoints: usize, percent: u32) -> Self {
        let share = endpoints * percent as usize / 100;
        Self {
            ejected: AtomicUsize::new(0),
            max: share.max(1),
        }
    }

    fn try_eject(&self) -> bool {
        self.ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ejected| {
                (ejected < self.max).then_some(ejected + 1)
            })
            .is_ok()
    }

    fn restore(&self) {
        self.ejected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint, shared by the upstream, its warm pool and its health checker.
pub(crate) struct EndpointState {
    pub(super) upstream: Arc<str>,
    pub(crate) address: EndpointAddress,
    /// Sent as SNI and verified, with TLS origination.
    server_name: Option<ServerName<'static>>,
    /// Present when attache originates TLS; swapped on reload.
    pub(super) tls: Option<SharedClientConfig>,
    /// How that TLS starts, when inside the upstream's protocol.
    start_tls: Option<StartTls>,
    pub(super) connect_timeout: Duration,
    breaker: Breaker,
    ejections: Arc<Ejections>,
    health: AtomicU8,
    /// Connections handed to clients and still open, or HTTP requests in
    /// flight (for least-connections and peak EWMA).
    pub(crate) active: AtomicUsize,
    /// Connect times (L4) or response times (HTTP), for `peak_ewma`.
    pub(super) latency: PeakEwma,
    pub(crate) metrics: EndpointMetrics,
}

/// Settings an endpoint is built from.
pub(super) struct EndpointSettings {
    pub(super) upstream: Arc<str>,
    pub(super) address: EndpointAddress,
    pub(super) server_name: Option<ServerName<'static>>,
    pub(super) tls: Option<SharedClientConfig>,
    pub(super) start_tls: Option<StartTls>,
    pub(super) connect_timeout: Duration,
    pub(super) breaker: breaker::Settings,
    pub(super) ejections: Arc<Ejections>,
    pub(super) metrics: EndpointMetrics,
}

impl EndpointState {
    pub(super) fn new(settings: EndpointSettings) -> Self {
        Self {
            upstream: settings.upstream,
            address: settings.address,
            server_name: settings.server_name,
            tls: settings.tls,
            start_tls: settings.start_tls,
            connect_timeout: settings.connect_timeout,
            breaker: Breaker::new(settings.breaker),
            ejections: settings.ejections,
            health: AtomicU8::new(Health::Unknown as u8),
            active: AtomicUsize::new(0),
            latency: PeakEwma::new(),
            metrics: settings.metrics,
        }
    }

    pub(crate) fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub(super) fn set_health(&self, health: Health) {
        self.health.store(health as u8, Ordering::Relaxed);
    }

    pub(crate) fn breaker_state(&self) -> breaker::State {
        self.breaker.state()
    }

    /// Leave for a client to connect now, unless health checks took the
    /// endpoint out (and `ignore_health` is false) or its breaker is open (or
    /// its single half-open probe is out).
    pub(super) fn admit(&self, ignore_health: bool) -> Option<Permit<'_>> {
        if !ignore_health && self.health() == Health::Unhealthy {
            return None;
        }
        let (permit, changed) = self.breaker.try_acquire(Instant::now());
        if let Some(state) = changed {
            self.breaker_changed(state);
        }
        permit
    }

    /// Whether the warm pool may refill now: the endpoint is not unhealthy
    /// and its breaker is closed. Refills take no breaker permit and do not
    /// feed the breaker: a burst of refills failing together at start-up
    /// (the server is not up yet) must not eject the endpoint before any
    /// client has tried it; and while clients have it ejected, refills wait.
    pub(super) fn accepts_refills(&self) -> bool {
        self.health() != Health::Unhealthy && self.breaker.state() == breaker::State::Closed
    }

    /// One client's connect attempt under `permit`: counted, and its outcome
    /// fed to the breaker (a failure for lack of local resources is
    /// attache's, not the endpoint's: the permit goes back unsettled).
    pub(super) async fn connect(
        &self,
        permit: Permit<'_>,
        preface: Option<&[u8]>,
    ) -> Result<Connected, ConnectError> {
        let result = self.establish(Some(&self.metrics), preface).await;
        match &result {
            Err(error) if error.is_local() => drop(permit),
            _ => self.settle(permit, result.is_ok()),
        }
        result
    }

    /// Feeds one use's outcome to the breaker.
    pub(super) fn settle(&self, permit: Permit<'_>, succeeded: bool) {
        let changed = if succeeded {
            permit.succeeded()
        } else {
            permit.failed(Instant::now(), || self.ejections.try_eject())
        };
        if let Some(state) = changed {
            self.breaker_changed(state);
        }
    }

    /// A connect (and TLS handshake, with origination) within the connect
    /// timeout; `metrics` counts it when given (warm-pool refills do, health
    /// probes do not).
    pub(crate) async fn establish(
        &self,
        metrics: Option<&EndpointMetrics>,
        preface: Option<&[u8]>,
    ) -> Result<Connected, ConnectError> {
        self.establish_at(None, metrics, preface).await
    }

    /// A connection of its own to `address`, a server this endpoint
    /// resolved to, with the endpoint's TLS origination (in-band included)
    /// and connect timeout, uncounted: a Postgres cancel request, which
    /// must reach the very server that runs the query.
    ///
    /// # Errors
    /// [`ConnectError`] when the connect or the TLS handshake fails.
    pub(crate) async fn side_connection(
        &self,
        address: std::net::SocketAddr,
    ) -> Result<UpstreamStream, ConnectError> {
        Ok(self.establish_at(Some(address), None, None).await?.stream)
    }

    async fn establish_at(
        &self,
        exact: Option<std::net::SocketAddr>,
        metrics: Option<&EndpointMetrics>,
        preface: Option<&[u8]>,
    ) -> Result<Connected, ConnectError> {
        let tls_config = self.tls.as_ref().map(|config| config.load_full());
        let connector = tls_config.clone().map(tokio_rustls::TlsConnector::from);
        let origination =
            connector
                .as_ref()
                .zip(self.server_name.as_ref())
                .map(|(connector, server_name)| Origination {
                    connector,
                    server_name,
                    start: self.start_tls,
                });
        let (stream, greeting) =
            connector::connect(&self.address, exact, self.connect_timeout, metrics, origination, preface)
                .await
            .inspect_err(|error| {
                tracing::debug!(upstream = %self.upstream, endpoint = %self.address, %error, "upstream connect failed");
            })?;
        Ok(Connected {
            stream,
            tls_config,
            greeting,
        })
    }

    fn breaker_changed(&self, state: breaker::State) {
        self.metrics.breaker_transition(state);
        match state {
            breaker::State::Open => tracing::warn!(
                upstream = %self.upstream,
                endpoint = %self.address,
                "circuit breaker open: endpoint ejected after consecutive failures"
            ),
            breaker::State::HalfOpen => tracing::info!(
                upstream = %self.upstream,
                endpoint = %self.address,
                "circuit breaker half-open: one probe connection allowed"
            ),
            breaker::State::Closed => {
                self.ejections.restore();
                tracing::info!(
                    upstream = %self.upstream,
                    endpoint = %self.address,
                    "circuit breaker closed: endpoint back in rotation"
                );
            }
        }
    }
}

/// A fresh connection and the TLS client configuration it was made with.
pub(crate) struct Connected {
    pub(crate) stream: UpstreamStream,
    pub(super) tls_config: Option<Arc<rustls::ClientConfig>>,
    /// A MySQL server's greeting, read before the TLS that started
    /// in-band ([`StartTls::Mysql`]).
    pub(super) greeting: Option<Vec<u8>>,
}
