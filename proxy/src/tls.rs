//! TLS handshakes on both legs: accepting on a TLS listener and connecting
//! to a TLS upstream, each bounded in time, and the one classifier that turns
//! a handshake failure into the result label of logs and metrics.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, Error as TlsError};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::reload::SharedServerConfig;
use crate::tcp::stream::ClientStream;
use crate::telemetry::metrics::{CloseResult, HandshakeResult, ListenerMetrics};

/// Limit on a client's TLS handshake on a listener.
pub(crate) const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handshake that did not complete, and why.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({}): {error}", result.label())]
pub(crate) struct HandshakeFailed {
    pub(crate) result: HandshakeResult,
    error: io::Error,
}

impl HandshakeFailed {
    fn new(error: io::Error) -> Self {
        Self {
            result: classify(&error),
            error,
        }
    }

    fn timeout(limit: Duration) -> Self {
        Self {
            result: HandshakeResult::Timeout,
            error: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handshake within {limit:?}"),
            ),
        }
    }
}

/// Terminates TLS on an accepted connection.
///
/// # Errors
/// [`HandshakeFailed`] with the failure's class.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, HandshakeFailed> {
    match tokio::time::timeout(ACCEPT_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(HandshakeFailed::new(error)),
        Err(_elapsed) => Err(HandshakeFailed::timeout(ACCEPT_HANDSHAKE_TIMEOUT)),
    }
}

/// Terminates TLS on an accepted connection when the listener has a
/// config (counting the handshake; a failure is logged and counted as a
/// closed connection), or passes the plain stream through.
pub(crate) async fn terminate(
    config: Option<&SharedServerConfig>,
    client: TcpStream,
    client_address: std::net::SocketAddr,
    listener: &str,
    metrics: &ListenerMetrics,
) -> Option<ClientStream> {
    let Some(config) = config else {
        return Some(ClientStream::Plain(client));
    };
    let acceptor = TlsAcceptor::from(config.load_full());
    // Boxed: once connected, a connection's task does not carry the
    // handshake's state.
    match Box::pin(accept(&acceptor, client)).await {
        Ok(stream) => {
            metrics.handshake(HandshakeResult::Ok);
            Some(ClientStream::Tls(Box::new(stream)))
        }
        Err(failed) => {
            metrics.handshake(failed.result);
            metrics.closed(CloseResult::TlsHandshakeFailed);
            tracing::info!(listener = %listener, client = %client_address, error = %failed, "client TLS handshake failed");
            None
        }
    }
}

/// Originates TLS on a connected upstream socket (the caller bounds the time).
///
/// # Errors
/// [`HandshakeFailed`] with the failure's class.
pub(crate) async fn connect(
    connector: &TlsConnector,
    server_name: ServerName<'static>,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HandshakeFailed> {
    connector
        .connect(server_name, stream)
        .await
        .map_err(HandshakeFailed::new)
}

/// The class of a handshake error, from the rustls error inside it.
fn classify(error: &io::Error) -> HandshakeResult {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        return HandshakeResult::Error;
    };
    match tls {
        TlsError::NoCertificatesPresented => HandshakeResult::NoClientCert,
        TlsError::InvalidCertificate(certificate) => match certificate {
            // A signature the trusted CA did not make, under its name, is
            // just as much "not from our CA".
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                HandshakeResult::UnknownCa
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                HandshakeResult::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                HandshakeResult::NotYetValid
            }
            CertificateError::ApplicationVerificationFailure
            | CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. } => HandshakeResult::IdentityRefused,
            _ => HandshakeResult::Error,
        },
        TlsError::PeerIncompatible(_)
        | TlsError::AlertReceived(AlertDescription::ProtocolVersion) => {
            HandshakeResult::ProtocolVersion
        }
        TlsError::AlertReceived(_) => HandshakeResult::PeerAlert,
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::PeerMisbehaved(_) => HandshakeResult::ProtocolError,
        _ => HandshakeResult::Error,
    }
}
