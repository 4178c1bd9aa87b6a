//! `attache wait`: block until every target accepts a TCP connection, for
//! init containers that must not let the app start before its database.

use std::time::Duration;

use attache_config::Endpoint;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A `tcp://host:port` target.
#[derive(Debug, Clone)]
pub(crate) struct Target(Endpoint);

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let address = match text.split_once("://") {
            Some(("tcp", address)) => address,
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme {scheme:?}: only tcp:// targets can be awaited"
                ));
            }
            None => text,
        };
        address
            .parse()
            .map(Target)
            .map_err(|error| error.to_string())
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp://{}", self.0)
    }
}

/// Every target is not reachable yet and the time is up.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {}", describe(.pending))]
pub(crate) struct WaitTimeout {
    timeout: Duration,
    pending: Vec<(Target, String)>,
}

fn describe(pending: &[(Target, String)]) -> String {
    let described: Vec<_> = pending
        .iter()
        .map(|(target, error)| format!("{target} (last error: {error})"))
        .collect();
    described.join(", ")
}

/// Polls the targets every `interval` until all have accepted a connection
/// once; a target that accepted is not polled again.
///
/// # Errors
/// [`WaitTimeout`] naming each target still unreachable and its last error.
pub(crate) async fn wait(
    targets: Vec<Target>,
    timeout: Duration,
    interval: Duration,
) -> Result<(), WaitTimeout> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(Target, String)> = targets
        .into_iter()
        .map(|target| (target, "not tried".into()))
        .collect();
    loop {
        for (target, last_error) in &mut pending {
            let attempt = tokio::time::timeout_at(
                deadline,
                TcpStream::connect((target.0.host.as_str(), target.0.port)),
            );
            match attempt.await {
                Ok(Ok(_connected)) => {
                    tracing::info!(target = %target, "target accepts connections");
                    last_error.clear();
                }
                Ok(Err(error)) => *last_error = error.to_string(),
                Err(_elapsed) => *last_error = "connect still in progress at the deadline".into(),
            }
        }
        pending.retain(|(_, last_error)| !last_error.is_empty());
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() + interval > deadline {
            return Err(WaitTimeout { timeout, pending });
        }
        tracing::info!(waiting_for = %describe(&pending), "not reachable yet; retrying in {interval:?}");
        tokio::time::sleep(interval).await;
    }
}
