//! Active health checks: every `interval`, each endpoint gets a probe
//! bounded by `timeout`. The first result decides at once; after that,
//! `unhealthy_threshold` consecutive failures take the endpoint out of the
//! balancer and `healthy_threshold` consecutive passes bring it back.
//! Probes are not counted as client connect attempts and do not feed the
//! breaker. Readiness never depends on them.
//!
//! | probe | passes when |
//! |---|---|
//! | `tcp` | the connect (and TLS handshake, with origination) succeeds |
//! | `redis` | `PING` is answered `+PONG`, or `-NOAUTH` (up, needs a password) |
//! | `mariadb` | the server greeting arrives (protocol 10), not an error packet |
//! | `postgres` | an `SSLRequest` is answered `S` or `N` |

use std::sync::Arc;

use attache_config::{HealthCheck, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::endpoint::{EndpointState, Health};
use crate::tcp::stream::UpstreamStream;

/// Postgres' `SSLRequest`: length 8, code 80877103.
const POSTGRES_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// MySQL/MariaDB protocol version 10, the first byte of every greeting since 3.21.
const MARIADB_PROTOCOL_10: u8 = 0x0a;

/// Checks `endpoint` forever; the task is dropped with the runtime.
pub(super) async fn run(endpoint: Arc<EndpointState>, check: HealthCheck) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    loop {
        ticks.tick().await;
        let outcome = match tokio::time::timeout(check.timeout, probe(&endpoint, check.probe)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "{} probe: no answer within {:?}",
                check.probe.as_str(),
                check.timeout
            )),
        };
        endpoint.metrics.health_check(outcome.is_ok());
        let Some(health) = streak.record(outcome.is_ok(), endpoint.health(), &check) else {
            continue;
        };
        endpoint.set_health(health);
        match outcome {
            Err(reason) => tracing::warn!(
                upstream = %endpoint.upstream,
                endpoint = %endpoint.address,
                probe = check.probe.as_str(),
                %reason,
                "health check: endpoint unhealthy, out of rotation"
            ),
            Ok(()) => tracing::info!(
                upstream = %endpoint.upstream,
                endpoint = %endpoint.address,
                probe = check.probe.as_str(),
                "health check: endpoint healthy"
            ),
        }
    }
}

/// Consecutive results of one kind.
#[derive(Default)]
struct Streak {
    passing: bool,
    length: u32,
}

impl Streak {
    /// Counts a result; returns the endpoint's new health when it changes.
    fn record(&mut self, passed: bool, current: Health, check: &HealthCheck) -> Option<Health> {
        if passed == self.passing {
            self.length = self.length.saturating_add(1);
        } else {
            self.passing = passed;
            self.length = 1;
        }
        let (target, threshold) = if passed {
            (Health::Healthy, check.healthy_threshold)
        } else {
            (Health::Unhealthy, check.unhealthy_threshold)
        };
        let decides = current == Health::Unknown || self.length >= threshold;
        (decides && current != target).then_some(target)
    }
}

/// One probe; the error says what went wrong.
async fn probe(endpoint: &EndpointState, probe: Probe) -> Result<(), String> {
    let connected = endpoint
        .connect_uncounted(None)
        .await
        .map_err(|error| error.to_string())?;
    let mut stream = connected.stream;
    let answer = match probe {
        Probe::Tcp => return Ok(()),
        Probe::Redis => exchange(&mut stream, b"PING\r\n", Answer::Line).await,
        Probe::Postgres => exchange(&mut stream, &POSTGRES_SSL_REQUEST, Answer::Bytes(1)).await,
        Probe::Mariadb => exchange(&mut stream, b"", Answer::Bytes(5)).await,
    }
    .map_err(|error| format!("{} probe: {error}", probe.as_str()))?;
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Redis if answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH") => Ok(()),
        Probe::Postgres if answer == b"S" || answer == b"N" => Ok(()),
        // 3-byte length, sequence 0, then the protocol version (0xff: error packet).
        Probe::Mariadb
            if answer.len() == 5 && answer[3] == 0 && answer[4] == MARIADB_PROTOCOL_10 =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{} probe: unexpected answer {:?}",
            probe.as_str(),
            String::from_utf8_lossy(&answer)
        )),
    }
}

/// How much of an answer a probe reads.
#[derive(Clone, Copy)]
enum Answer {
    /// Exactly this many bytes.
    Bytes(usize),
    /// Up to a CRLF (at most 64 bytes).
    Line,
}

/// Writes `request` (if any) and reads the answer.
async fn exchange(
    stream: &mut UpstreamStream,
    request: &[u8],
    answer: Answer,
) -> std::io::Result<Vec<u8>> {
    let expected = match answer {
        Answer::Bytes(count) => count,
        Answer::Line => 64,
    };
    if !request.is_empty() {
        match stream {
            UpstreamStream::Plain(tcp) => tcp.write_all(request).await?,
            UpstreamStream::Tls(tls) => {
                tls.write_all(request).await?;
                tls.flush().await?;
            }
        }
    }
    let mut received = vec![0u8; expected];
    let mut filled = 0;
    while filled < expected {
        let read = match stream {
            UpstreamStream::Plain(tcp) => tcp.read(&mut received[filled..]).await?,
            UpstreamStream::Tls(tls) => tls.read(&mut received[filled..]).await?,
        };
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before answering",
            ));
        }
        filled += read;
        if matches!(answer, Answer::Line) && received[..filled].ends_with(b"\r\n") {
            break;
        }
    }
    received.truncate(filled);
    Ok(received)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn the_first_result_decides_then_thresholds_apply() {
        let check = check();
        let mut streak = Streak::default();
        assert_eq!(
            streak.record(true, Health::Unknown, &check),
            Some(Health::Healthy)
        );
        let mut health = Health::Healthy;
        let mut changes = Vec::new();
        for passed in [false, false, true, false, false, false, true, true] {
            if let Some(changed) = streak.record(passed, health, &check) {
                health = changed;
                changes.push(changed);
            }
        }
        assert_eq!(changes, vec![Health::Unhealthy, Health::Healthy]);
    }

    #[test]
    fn a_failing_first_check_takes_the_endpoint_out_at_once() {
        let mut streak = Streak::default();
        assert_eq!(
            streak.record(false, Health::Unknown, &check()),
            Some(Health::Unhealthy)
        );
    }
}
