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
//! | `mariadb` | the server greeting arrives (protocol 10), not an error packet; with `user`, that user also logs in (no password) and quits |
//! | `postgres` | an `SSLRequest` is answered `N`, or `S` and a TLS handshake (then a clean close) |

use std::sync::Arc;

use attache_config::{HealthCheck, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::endpoint::{EndpointState, Health};
use crate::net::UpstreamStream;

/// Postgres' `SSLRequest`: length 8, code 80877103.
const POSTGRES_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// MySQL/MariaDB protocol version 10, the first byte of every greeting since 3.21.
const MARIADB_PROTOCOL_10: u8 = 0x0a;

/// Checks `endpoint` until the upstream is dropped or the runtime ends.
pub(super) async fn run(endpoint: Arc<EndpointState>, check: HealthCheck) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    loop {
        ticks.tick().await;
        let outcome = match tokio::time::timeout(check.timeout, probe(&endpoint, &check)).await {
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
async fn probe(endpoint: &EndpointState, check: &HealthCheck) -> Result<(), String> {
    let connected = endpoint
        .establish(None, None)
        .await
        .map_err(|error| error.to_string())?;
    let mut stream = connected.stream;
    let outcome = match check.probe {
        Probe::Tcp => Ok(()),
        Probe::Redis => redis(&mut stream).await,
        Probe::Postgres => postgres(stream).await,
        Probe::Mariadb => mariadb(&mut stream, check.user.as_deref()).await,
    };
    outcome.map_err(|reason| format!("{} probe: {reason}", check.probe.as_str()))
}

async fn redis(stream: &mut UpstreamStream) -> Result<(), String> {
    write(stream, b"PING\r\n").await?;
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n") && answer.len() < 64 {
        answer.push(read_exact::<1>(stream).await?[0]);
    }
    if answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH") {
        Ok(())
    } else {
        Err(unexpected(&answer))
    }
}

/// `S` is followed by a TLS handshake (with a verifier that accepts any
/// certificate: nothing is sent) and a clean close, so the server logs
/// nothing; `N` needs nothing more.
async fn postgres(stream: UpstreamStream) -> Result<(), String> {
    let UpstreamStream::Plain(mut tcp) = stream else {
        return Err("cannot send an SSLRequest inside TLS".into());
    };
    tcp.write_all(&POSTGRES_SSL_REQUEST)
        .await
        .map_err(|error| error.to_string())?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|error| format!("no answer to SSLRequest: {error}"))?;
    match &answer {
        b"N" => Ok(()),
        b"S" => {
            let connector =
                tokio_rustls::TlsConnector::from(attache_certs::tls::probe_client_config());
            let name = rustls::pki_types::ServerName::try_from("postgres")
                .map_err(|error| error.to_string())?;
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|error| format!("answered S, then the TLS handshake failed: {error}"))?;
            // close_notify: the server sees an orderly end before any startup packet.
            let _ = tls.shutdown().await;
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// MySQL protocol capability flags the login sends.
const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
/// utf8mb3_general_ci.
const CHARSET_UTF8: u8 = 0x21;

/// Reads the greeting; with a `user`, logs in without a password and sends
/// `COM_QUIT`, as HAProxy's `mysql-check user` does, so the server counts
/// neither an aborted connection nor a handshake error (which would, from
/// a non-loopback address, count towards `max_connect_errors`).
async fn mariadb(stream: &mut UpstreamStream, user: Option<&str>) -> Result<(), String> {
    let greeting = read_packet(stream).await?;
    match greeting.first() {
        Some(&MARIADB_PROTOCOL_10) => {}
        Some(0xff) => return Err(format!("the server refused: {}", error_message(&greeting))),
        _ => return Err(unexpected(&greeting)),
    }
    let Some(user) = user else {
        return Ok(());
    };
    let capabilities =
        CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let mut login = Vec::with_capacity(64 + user.len());
    login.extend_from_slice(&capabilities.to_le_bytes());
    login.extend_from_slice(&(16u32 << 20).to_le_bytes());
    login.push(CHARSET_UTF8);
    login.extend_from_slice(&[0; 23]);
    login.extend_from_slice(user.as_bytes());
    login.push(0);
    // An empty auth response: no password.
    login.push(0);
    login.extend_from_slice(b"mysql_native_password\0");
    write_packet(stream, 1, &login).await?;
    let answer = read_packet(stream).await?;
    let result = match answer.first() {
        Some(0x00) => Ok(()),
        Some(0xff) => Err(format!(
            "login as {user:?} refused: {}",
            error_message(&answer)
        )),
        Some(0xfe) => Err(format!(
            "the server asked {user:?} for another authentication method: the user does not exist, has a password, or uses another plugin (create it with no password)"
        )),
        _ => Err(unexpected(&answer)),
    };
    if result.is_ok() {
        // COM_QUIT; the server closes without logging an aborted connection.
        write_packet(stream, 0, &[0x01]).await?;
    }
    result
}

async fn read_packet(stream: &mut UpstreamStream) -> Result<Vec<u8>, String> {
    let header = read_exact::<4>(stream).await?;
    let length =
        usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0u8; length];
    read_into(stream, &mut payload).await?;
    Ok(payload)
}

async fn write_packet(
    stream: &mut UpstreamStream,
    sequence: u8,
    payload: &[u8],
) -> Result<(), String> {
    let length = u32::try_from(payload.len()).map_err(|_| "packet too long".to_owned())?;
    let mut packet = length.to_le_bytes()[..3].to_vec();
    packet.push(sequence);
    packet.extend_from_slice(payload);
    write(stream, &packet).await
}

/// The message of an ERR packet: code, optional `#` + SQL state, text.
fn error_message(packet: &[u8]) -> String {
    let text = packet.get(3..).unwrap_or_default();
    let text = match text.first() {
        Some(b'#') => text.get(6..).unwrap_or_default(),
        _ => text,
    };
    String::from_utf8_lossy(text).into_owned()
}

fn unexpected(answer: &[u8]) -> String {
    format!("unexpected answer {:?}", String::from_utf8_lossy(answer))
}

async fn write(stream: &mut UpstreamStream, bytes: &[u8]) -> Result<(), String> {
    let written = match stream {
        UpstreamStream::Plain(tcp) => tcp.write_all(bytes).await,
        UpstreamStream::Tls(tls) => match tls.write_all(bytes).await {
            Ok(()) => tls.flush().await,
            Err(error) => Err(error),
        },
    };
    written.map_err(|error| error.to_string())
}

async fn read_exact<const N: usize>(stream: &mut UpstreamStream) -> Result<[u8; N], String> {
    let mut buffer = [0u8; N];
    read_into(stream, &mut buffer).await?;
    Ok(buffer)
}

async fn read_into(stream: &mut UpstreamStream, buffer: &mut [u8]) -> Result<(), String> {
    let read = match stream {
        UpstreamStream::Plain(tcp) => tcp.read_exact(buffer).await,
        UpstreamStream::Tls(tls) => tls.read_exact(buffer).await,
    };
    read.map(|_| ()).map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => "closed before answering".to_owned(),
        _ => error.to_string(),
    })
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
            user: None,
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
