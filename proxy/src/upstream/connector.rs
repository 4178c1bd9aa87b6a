//! One connect attempt to one endpoint: resolve the hostname now (Kubernetes
//! service IPs change), try its addresses in order, all within the connect
//! timeout; count the attempt and its outcome.

use std::io;
use std::time::Duration;

use attache_config::Endpoint;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::tcp;
use crate::telemetry::metrics::{ConnectFailure, EndpointMetrics};

/// Why one connect attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve { endpoint: String, source: io::Error },
    #[error("{endpoint} resolved to no address")]
    NoAddress { endpoint: String },
    #[error("connect to {endpoint} failed: {source}")]
    Io { endpoint: String, source: io::Error },
}

impl ConnectError {
    fn kind(&self) -> ConnectFailure {
        match self {
            Self::Timeout { .. } => ConnectFailure::Timeout,
            Self::Resolve { .. } | Self::NoAddress { .. } => ConnectFailure::Resolve,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
                ConnectFailure::Refused
            }
            Self::Io { .. } => ConnectFailure::Error,
        }
    }
}

pub(super) async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
    metrics: &EndpointMetrics,
) -> Result<TcpStream, ConnectError> {
    metrics.attempts.inc();
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, resolve_and_connect(endpoint)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ConnectError::Timeout {
            endpoint: endpoint.to_string(),
            timeout,
        }),
    };
    match &result {
        Ok(stream) => {
            metrics.duration.observe(started.elapsed().as_secs_f64());
            tcp::tune(socket2::SockRef::from(stream));
        }
        Err(error) => metrics.failed(error.kind()),
    }
    result
}

async fn resolve_and_connect(endpoint: &Endpoint) -> Result<TcpStream, ConnectError> {
    let addresses = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| ConnectError::Resolve {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let mut last_error = ConnectError::NoAddress {
        endpoint: endpoint.to_string(),
    };
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(source) => {
                last_error = ConnectError::Io {
                    endpoint: endpoint.to_string(),
                    source,
                }
            }
        }
    }
    Err(last_error)
}
