//! One connect attempt to one endpoint: resolve the hostname now (Kubernetes
//! service IPs change), try its addresses in order, send a PROXY protocol
//! header when the upstream wants one, then originate TLS when configured,
//! all within the connect timeout; count the attempt and its
//! outcome (health probes connect the same way, uncounted).

use std::io;
use std::time::Duration;

use attache_config::Endpoint;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::net;
use crate::net::UpstreamStream;
use crate::telemetry::metrics::{ConnectFailure, EndpointMetrics, HandshakeResult};
use crate::tls::{self, HandshakeFailed};

/// TLS to originate on a connected socket.
pub(crate) struct Origination<'a> {
    pub(crate) connector: &'a tokio_rustls::TlsConnector,
    pub(crate) server_name: &'a ServerName<'static>,
    pub(crate) start: Option<StartTls>,
}

/// TLS that starts inside the upstream's protocol instead of at its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartTls {
    /// Postgres' `SSLRequest`, answered `S` (TLS follows) or `N`;
    /// `required`: `N` fails the connect, else the connection stays plaintext.
    Postgres { required: bool },
    /// MySQL: the server's greeting (kept for the login), then an
    /// SSLRequest packet with `capabilities` (which include SSL), then TLS.
    /// A server that does not offer TLS fails the connect.
    Mysql { capabilities: u32 },
}

/// MySQL's `CLIENT_SSL` capability.
const MYSQL_SSL: u32 = 0x0800;

/// The largest MySQL greeting read before TLS.
const MYSQL_GREETING_LIMIT: usize = 64 << 10;

/// Postgres' `SSLRequest`: length 8, code 80877103.
const POSTGRES_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

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
    #[error("connect to {endpoint} failed for lack of local resources: {source}")]
    LocalResources { endpoint: String, source: io::Error },
    #[error("{endpoint} does not accept TLS (it answered {answer:?} to SSLRequest)")]
    TlsDeclined { endpoint: String, answer: char },
    #[error("{endpoint} does not offer TLS in its MySQL greeting: {reason}")]
    MysqlGreeting { endpoint: String, reason: String },
    #[error("{endpoint}: {source}")]
    Tls {
        endpoint: String,
        source: HandshakeFailed,
    },
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
            Self::LocalResources { .. } => ConnectFailure::LocalResources,
            Self::Tls { .. } | Self::TlsDeclined { .. } | Self::MysqlGreeting { .. } => {
                ConnectFailure::Tls
            }
        }
    }

    /// attache, not the endpoint, ran out of something: never counted
    /// against the endpoint's breaker.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Self::LocalResources { .. })
    }

    /// The endpoint's certificate was refused (unknown CA, wrong name,
    /// expired...): trying the same endpoint again cannot succeed.
    pub(crate) fn is_certificate_refusal(&self) -> bool {
        matches!(self, Self::Tls { source, .. } if source.result.is_certificate_refusal())
    }
}

/// A connection to `endpoint` (or to `exact`, one of its addresses) within
/// `timeout`: the PROXY header first when given, then TLS when originated;
/// with a MySQL greeting read before TLS, that greeting (a whole packet).
pub(super) async fn connect(
    endpoint: &Endpoint,
    exact: Option<std::net::SocketAddr>,
    timeout: Duration,
    metrics: Option<&EndpointMetrics>,
    origination: Option<Origination<'_>>,
    preface: Option<&[u8]>,
) -> Result<(UpstreamStream, Option<Vec<u8>>), ConnectError> {
    if let Some(metrics) = metrics {
        metrics.attempts.inc();
    }
    let started = Instant::now();
    let attempt = async {
        let mut stream = match exact {
            Some(address) => {
                TcpStream::connect(address)
                    .await
                    .map_err(|source| ConnectError::Io {
                        endpoint: endpoint.to_string(),
                        source,
                    })?
            }
            None => resolve_and_connect(endpoint).await?,
        };
        net::tune(socket2::SockRef::from(&stream));
        if let Some(preface) = preface {
            // A PROXY protocol header goes first, before any TLS record.
            tokio::io::AsyncWriteExt::write_all(&mut stream, preface)
                .await
                .map_err(|source| ConnectError::Io {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
        }
        let Some(origination) = origination else {
            return Ok((UpstreamStream::Plain(stream), None));
        };
        let mut greeting = None;
        if let Some(StartTls::Mysql { capabilities }) = origination.start {
            greeting = Some(mysql_ssl_request(&mut stream, endpoint, capabilities).await?);
        }
        if let Some(StartTls::Postgres { required }) = origination.start {
            let io = |source| ConnectError::Io {
                endpoint: endpoint.to_string(),
                source,
            };
            tokio::io::AsyncWriteExt::write_all(&mut stream, &POSTGRES_SSL_REQUEST)
                .await
                .map_err(io)?;
            // Exactly one byte: what follows an `S` is the server's TLS.
            let mut answer = [0];
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer)
                .await
                .map_err(io)?;
            match answer[0] {
                b'S' => {}
                b'N' if !required => return Ok((UpstreamStream::Plain(stream), None)),
                other => {
                    return Err(ConnectError::TlsDeclined {
                        endpoint: endpoint.to_string(),
                        answer: char::from(other),
                    });
                }
            }
        }
        // Boxed: a plain connect does not allocate the handshake's state.
        let handshake = tls::connect(
            origination.connector,
            origination.server_name.clone(),
            stream,
        );
        match Box::pin(handshake).await {
            Ok(stream) => {
                if let Some(metrics) = metrics {
                    metrics.handshake(HandshakeResult::Ok);
                    if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        metrics.resumptions.inc();
                    }
                }
                Ok((UpstreamStream::Tls(Box::new(stream)), greeting))
            }
            Err(source) => {
                if let Some(metrics) = metrics {
                    metrics.handshake(source.result);
                }
                Err(ConnectError::Tls {
                    endpoint: endpoint.to_string(),
                    source,
                })
            }
        }
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ConnectError::Timeout {
            endpoint: endpoint.to_string(),
            timeout,
        }),
    };
    match (&result, metrics) {
        (Ok(_), Some(metrics)) => metrics.duration.observe(started.elapsed().as_secs_f64()),
        (Err(error), Some(metrics)) => metrics.failed(error.kind()),
        (_, None) => {}
    }
    result
}

/// Reads a MySQL server's greeting exactly (what follows is TLS), checks
/// that it offers TLS and sends the SSLRequest packet; the greeting,
/// header included, is the login's.
async fn mysql_ssl_request(
    stream: &mut TcpStream,
    endpoint: &Endpoint,
    capabilities: u32,
) -> Result<Vec<u8>, ConnectError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let io = |source| ConnectError::Io {
        endpoint: endpoint.to_string(),
        source,
    };
    let refused = |reason: &str| ConnectError::MysqlGreeting {
        endpoint: endpoint.to_string(),
        reason: reason.to_owned(),
    };
    let mut packet = vec![0; 4];
    stream.read_exact(&mut packet).await.map_err(io)?;
    let length =
        usize::from(packet[0]) | usize::from(packet[1]) << 8 | usize::from(packet[2]) << 16;
    if length > MYSQL_GREETING_LIMIT {
        return Err(refused("a greeting over 64 KiB"));
    }
    packet.resize(4 + length, 0);
    stream.read_exact(&mut packet[4..]).await.map_err(io)?;
    let payload = &packet[4..];
    match payload.first() {
        Some(10) => {}
        Some(0xff) => {
            let message = String::from_utf8_lossy(payload.get(9..).unwrap_or_default());
            return Err(refused(&format!("the server refused: {message}")));
        }
        _ => return Err(refused("not a protocol 10 greeting")),
    }
    // Version (NUL-terminated), thread id, 8 scramble bytes, a filler, then
    // the capabilities' lower half.
    let version_end = payload[1..]
        .iter()
        .position(|byte| *byte == 0)
        .ok_or_else(|| refused("a malformed greeting"))?;
    let at = 1 + version_end + 1 + 4 + 8 + 1;
    let offered = payload
        .get(at..at + 2)
        .map(|flags| u32::from(u16::from_le_bytes([flags[0], flags[1]])))
        .ok_or_else(|| refused("a malformed greeting"))?;
    if offered & MYSQL_SSL == 0 {
        return Err(refused("the server has no TLS configured"));
    }
    let mut request = Vec::with_capacity(36);
    request.extend_from_slice(&[32, 0, 0, packet[3].wrapping_add(1)]);
    request.extend_from_slice(&(capabilities | MYSQL_SSL).to_le_bytes());
    request.extend_from_slice(&(16_u32 << 20).to_le_bytes());
    // utf8mb4_general_ci, then 23 reserved bytes.
    request.push(45);
    request.extend_from_slice(&[0; 23]);
    stream.write_all(&request).await.map_err(io)?;
    Ok(packet)
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
            Err(source) if net::out_of_local_resources(&source) => {
                // Another address would fail alike.
                return Err(ConnectError::LocalResources {
                    endpoint: endpoint.to_string(),
                    source,
                });
            }
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
