//! TLS handshakes on both legs: accepting on a TLS listener and connecting
//! to a TLS upstream, each bounded in time, and the one classifier that turns
//! a handshake failure into the result label of logs and metrics.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{
    AlertDescription, CertificateError, Error as TlsError, InvalidMessage, PeerIncompatible,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::net::ClientStream;
use crate::reload::SharedServerConfig;
use crate::telemetry::log_limit::limited;
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
            limited!(
                metrics.log_limit,
                failed.result.label(),
                info!(listener = %listener, client = %client_address, error = %failed, "client TLS handshake failed")
            );
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
        // No rustls error: the socket ended or failed under the handshake.
        return match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => HandshakeResult::Eof,
            _ => HandshakeResult::Error,
        };
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
            // Bad encoding, a wrong key usage, a CA certificate presented as
            // a leaf (webpki's CaUsedAsEndEntity arrives as `Other`), an
            // unsupported signature algorithm: the certificate itself is unfit.
            _ => HandshakeResult::BadCertificate,
        },
        TlsError::PeerIncompatible(incompatible) => match incompatible {
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::SupportedVersionsExtensionRequired
            // The extension TLS 1.2 introduced: a TLS 1.0 or 1.1 client.
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic => HandshakeResult::ProtocolVersion,
            _ => HandshakeResult::NoCommonParameters,
        },
        TlsError::AlertReceived(AlertDescription::ProtocolVersion) => {
            HandshakeResult::ProtocolVersion
        }
        TlsError::AlertReceived(AlertDescription::HandshakeFailure) => {
            HandshakeResult::NoCommonParameters
        }
        TlsError::AlertReceived(_) => HandshakeResult::PeerAlert,
        TlsError::DecryptError
        | TlsError::InvalidMessage(InvalidMessage::MessageTooLarge)
        | TlsError::InvalidMessage(InvalidMessage::MessageTooShort) => HandshakeResult::BadRecord,
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::PeerMisbehaved(_) => HandshakeResult::ProtocolError,
        _ => HandshakeResult::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(error: TlsError) -> HandshakeResult {
        classify(&io::Error::new(io::ErrorKind::InvalidData, error))
    }

    #[test]
    fn each_failure_gets_its_own_class() {
        assert_eq!(
            class(TlsError::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon
            )),
            HandshakeResult::NoCommonParameters
        );
        assert_eq!(
            class(TlsError::PeerIncompatible(
                PeerIncompatible::NoSignatureSchemesInCommon
            )),
            HandshakeResult::NoCommonParameters
        );
        assert_eq!(
            class(TlsError::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
            )),
            HandshakeResult::ProtocolVersion
        );
        assert_eq!(class(TlsError::DecryptError), HandshakeResult::BadRecord);
        assert_eq!(
            class(TlsError::InvalidMessage(InvalidMessage::MessageTooLarge)),
            HandshakeResult::BadRecord
        );
        assert_eq!(
            class(TlsError::InvalidCertificate(CertificateError::BadEncoding)),
            HandshakeResult::BadCertificate
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            HandshakeResult::Eof
        );
        assert_eq!(
            class(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            HandshakeResult::UnknownCa
        );
    }
}
