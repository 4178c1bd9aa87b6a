//! Upstreams: a named group of endpoints, the balancer that orders them for
//! each new connection, and the connector that reaches one of them. Every
//! protocol handler reaches its upstream through [`Upstream::connect`].

mod balancer;
mod connector;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attache_config::Endpoint as EndpointAddress;
use rustls::pki_types::ServerName;

use crate::reload::SharedClientConfig;
use crate::tcp::stream::UpstreamStream;
use crate::telemetry::metrics::{EndpointMetrics, Metrics};
use balancer::Balancer;
pub(crate) use connector::Origination;

/// A named group of endpoints that listeners forward to.
pub(crate) struct Upstream {
    name: String,
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
    connect_timeout: Duration,
    /// Present when attache originates TLS to this upstream; swapped on reload.
    tls: Option<SharedClientConfig>,
}

/// One place an upstream runs.
struct Endpoint {
    address: EndpointAddress,
    /// Sent as SNI and verified, with TLS origination.
    server_name: Option<ServerName<'static>>,
    /// Connections handed out and still open (for least-connections).
    active: AtomicUsize,
    metrics: EndpointMetrics,
}

/// No endpoint of an upstream could be connected.
#[derive(Debug, thiserror::Error)]
#[error(
    "no endpoint of upstream {upstream:?} could be connected ({attempts} attempts; last: {last_error})"
)]
pub(crate) struct UpstreamUnavailable {
    upstream: String,
    attempts: usize,
    last_error: connector::ConnectError,
}

/// A connected upstream stream; the endpoint counts it as active until drop.
pub(crate) struct UpstreamConnection {
    pub(crate) stream: UpstreamStream,
    upstream: Arc<Upstream>,
    endpoint: usize,
}

impl UpstreamConnection {
    /// The endpoint this connection reached, as configured.
    pub(crate) fn endpoint(&self) -> &EndpointAddress {
        &self.upstream.endpoints[self.endpoint].address
    }
}

impl Drop for UpstreamConnection {
    fn drop(&mut self) {
        self.upstream.endpoints[self.endpoint]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// # Errors
    /// When TLS origination is configured and its files cannot be used, or an
    /// endpoint's server name is not valid.
    pub(crate) fn new(
        config: &attache_config::Upstream,
        tls: Option<SharedClientConfig>,
        metrics: &Metrics,
    ) -> Result<Self, attache_certs::tls::TlsError> {
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
                Ok(Endpoint {
                    metrics: metrics.endpoint(&config.name, &address.to_string()),
                    address: address.clone(),
                    server_name,
                    active: AtomicUsize::new(0),
                })
            })
            .collect::<Result<_, attache_certs::tls::TlsError>>()?;
        Ok(Self {
            name: config.name.clone(),
            endpoints,
            balancer: Balancer::new(config.balance),
            connect_timeout: config.connect_timeout,
            tls,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Connects to one endpoint. Endpoints are tried in the balancer's order,
    /// each at most once, each attempt bounded by the connect timeout; a
    /// failed connect sent nothing upstream, so trying the next is always safe.
    ///
    /// # Errors
    /// [`UpstreamUnavailable`] when every endpoint failed.
    pub(crate) async fn connect(
        self: &Arc<Self>,
    ) -> Result<UpstreamConnection, UpstreamUnavailable> {
        let count = self.endpoints.len();
        let first = self.balancer.pick(count, |index| {
            self.endpoints[index].active.load(Ordering::Relaxed)
        });
        let mut last_error = match self.connect_endpoint(first).await {
            Ok(connection) => return Ok(connection),
            Err(error) => error,
        };
        for offset in 1..count {
            match self.connect_endpoint((first + offset) % count).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = error,
            }
        }
        Err(UpstreamUnavailable {
            upstream: self.name.clone(),
            attempts: count,
            last_error,
        })
    }

    async fn connect_endpoint(
        self: &Arc<Self>,
        index: usize,
    ) -> Result<UpstreamConnection, connector::ConnectError> {
        let endpoint = &self.endpoints[index];
        let connector = self
            .tls
            .as_ref()
            .map(|config| tokio_rustls::TlsConnector::from(config.load_full()));
        let origination = connector.as_ref().zip(endpoint.server_name.as_ref()).map(
            |(connector, server_name)| Origination {
                connector,
                server_name,
            },
        );
        let stream = connector::connect(&endpoint.address, self.connect_timeout, &endpoint.metrics, origination)
            .await
            .inspect_err(|error| {
                tracing::debug!(upstream = %self.name, endpoint = %endpoint.address, %error, "upstream connect failed");
            })?;
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        Ok(UpstreamConnection {
            stream,
            upstream: self.clone(),
            endpoint: index,
        })
    }
}
