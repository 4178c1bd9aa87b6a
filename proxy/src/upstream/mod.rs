//! Upstreams: a named group of endpoints, the balancer that orders them for
//! each new connection, and the connector that reaches one of them. Every
//! protocol handler reaches its upstream through [`Upstream::connect`].

mod balancer;
mod connector;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attache_config::Endpoint as EndpointAddress;
use tokio::net::TcpStream;

use crate::telemetry::metrics::{EndpointMetrics, Metrics};
use balancer::Balancer;

/// A named group of endpoints that listeners forward to.
pub(crate) struct Upstream {
    name: String,
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
    connect_timeout: Duration,
}

/// One place an upstream runs.
struct Endpoint {
    address: EndpointAddress,
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
    pub(crate) stream: TcpStream,
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
    pub(crate) fn new(config: &attache_config::Upstream, metrics: &Metrics) -> Self {
        let endpoints = config
            .endpoints
            .iter()
            .map(|address| Endpoint {
                metrics: metrics.endpoint(&config.name, &address.to_string()),
                address: address.clone(),
                active: AtomicUsize::new(0),
            })
            .collect();
        Self {
            name: config.name.clone(),
            endpoints,
            balancer: Balancer::new(config.balance),
            connect_timeout: config.connect_timeout,
        }
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
        let stream = connector::connect(&endpoint.address, self.connect_timeout, &endpoint.metrics)
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
