//! rustls configurations for termination (listeners) and origination
//! (upstreams), built from the configuration's TLS sections with the `ring`
//! provider. Peer identity allow-lists are enforced inside the certificate
//! verifiers, so a refused peer fails the handshake with an alert.

use std::path::Path;
use std::sync::Arc;

use attache_config::{ClientAuth, ListenerTls, TlsVersion, UpstreamTls};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};

use crate::identity::{AllowList, PeerIdentity};
use crate::pem::{self, PemError};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be used.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A CA bundle holds no usable certificate.
    #[error("{path}: no usable CA certificate: {reason}")]
    CaBundle {
        /// The bundle.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the material (for example, a key that does not match its certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// A server name is not a valid DNS name or IP address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// A certificate is outside its validity period now.
    #[error("{path}: {}", validity(*not_before, *not_after, *expired))]
    NotValidNow {
        /// The certificate file.
        path: String,
        /// Start of validity, Unix seconds.
        not_before: i64,
        /// End of validity, Unix seconds.
        not_after: i64,
        /// Past `not_after` (else before `not_before`).
        expired: bool,
    },
    /// A private key that is not the certificate's.
    #[error("{context}: {key} is not the private key of {cert} (they do not match)")]
    KeyMismatch {
        /// Whose material it is.
        context: String,
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// A certificate cannot be parsed.
    #[error("{path}: cannot parse the certificate")]
    Unparsable {
        /// The certificate file.
        path: String,
    },
}

/// A loaded configuration and when its own certificate expires.
pub struct Loaded<T> {
    /// The rustls configuration.
    pub config: Arc<T>,
    /// The leaf certificate's `notAfter`, Unix seconds; `None` without one
    /// (an upstream without a client certificate).
    pub expires_at: Option<i64>,
}

/// Loads a chain and refuses it unless its leaf is valid now; returns the
/// chain and the leaf's `notAfter` in Unix seconds.
fn load_valid_chain(path: &Path) -> Result<(Vec<CertificateDer<'static>>, i64), TlsError> {
    let chain = pem::load_certificates(path)?;
    let unparsable = || TlsError::Unparsable {
        path: path.display().to_string(),
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|_| unparsable())?;
    let validity = leaf.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    if now < not_before || now > not_after {
        return Err(TlsError::NotValidNow {
            path: path.display().to_string(),
            not_before,
            not_after,
            expired: now > not_after,
        });
    }
    Ok((chain, not_after))
}

/// What the admin status page shows of a certificate file: its leaf's
/// subject, names and expiry.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    /// The subject as OpenSSL prints it (`CN=web`).
    pub subject: String,
    /// The names it carries (URI and DNS SANs, common name).
    pub identity: PeerIdentity,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// Reads the leaf certificate of the chain at `path`.
///
/// # Errors
/// When the file cannot be read or its first certificate parsed.
pub fn summarize(path: &Path) -> Result<CertificateSummary, TlsError> {
    let chain = pem::load_certificates(path)?;
    let unparsable = || TlsError::Unparsable {
        path: path.display().to_string(),
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|_| unparsable())?;
    Ok(CertificateSummary {
        subject: leaf.subject().to_string(),
        identity: PeerIdentity::from_certificate(&chain[0]).map_err(|_| unparsable())?,
        not_after: leaf.validity().not_after.timestamp(),
    })
}

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(minimum: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match minimum {
        TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in pem::load_certificates(path)? {
        roots.add(certificate).map_err(|error| TlsError::CaBundle {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn rustls_error(context: String) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { context, source }
}

/// The error for a certificate and key rustls refused together: a plain
/// mismatch said plainly, anything else as rustls says it.
fn pair_error(context: String, cert: &Path, key: &Path) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| match source {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            context,
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        },
        source => TlsError::Rustls {
            context: format!(
                "{context}: certificate {} with key {}",
                cert.display(),
                key.display()
            ),
            source,
        },
    }
}

/// "expired on 2026-11-30 12:00 UTC" / "not valid before ...".
fn validity(not_before: i64, not_after: i64, expired: bool) -> String {
    let date = |seconds: i64| {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
        // RFC 3339 (2026-11-30T12:00:00Z) read as a date and a time of day.
        let text = humantime::format_rfc3339_seconds(when).to_string();
        match text.split_once('T') {
            Some((day, time)) => format!("{day} {} UTC", &time[..5]),
            None => text,
        }
    };
    if expired {
        format!("the certificate expired on {}", date(not_after))
    } else {
        format!("the certificate is not valid before {}", date(not_before))
    }
}

/// The server configuration of a TLS listener called `listener`.
///
/// # Errors
/// When a file cannot be loaded or rustls refuses the material.
pub fn server_config(tls: &ListenerTls, listener: &str) -> Result<Loaded<ServerConfig>, TlsError> {
    let provider = provider();
    let (chain, expires_at) = load_valid_chain(&tls.cert)?;
    let key = pem::load_private_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(rustls_error(format!("listener {listener:?}")))?;
    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(client_ca), ClientAuth::Required | ClientAuth::Optional) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider.clone());
            let verifier = if tls.client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let inner = verifier.build().map_err(|error| TlsError::CaBundle {
                path: client_ca.display().to_string(),
                reason: error.to_string(),
            })?;
            builder.with_client_cert_verifier(Arc::new(AllowListClientVerifier {
                inner,
                allow: AllowList::new(tls.allow.clone()),
                listener: listener.to_owned(),
            }))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(pair_error(
        format!("listener {listener:?}"),
        &tls.cert,
        &tls.key,
    ))?;
    config.alpn_protocols = tls
        .alpn
        .iter()
        .map(|protocol| protocol.as_bytes().to_vec())
        .collect();
    Ok(Loaded {
        config: Arc::new(config),
        expires_at: Some(expires_at),
    })
}

/// The client configuration for originating TLS to `upstream`.
///
/// # Errors
/// When a file cannot be loaded or rustls refuses the material.
pub fn client_config(tls: &UpstreamTls, upstream: &str) -> Result<Loaded<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = roots(&tls.ca)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| TlsError::CaBundle {
            path: tls.ca.display().to_string(),
            reason: error.to_string(),
        })?;
    let verifier = Arc::new(PinnedServerVerifier {
        roots,
        webpki,
        algorithms: provider.signature_verification_algorithms,
        allow: AllowList::new(tls.allow.clone()),
        upstream: upstream.to_owned(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls.min_version))
        .map_err(rustls_error(format!("upstream {upstream:?}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let (mut config, expires_at) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let (chain, expires_at) = load_valid_chain(cert)?;
            let config = builder
                .with_client_auth_cert(chain, pem::load_private_key(key)?)
                .map_err(pair_error(
                    format!("upstream {upstream:?}: client certificate"),
                    cert,
                    key,
                ))?;
            (config, Some(expires_at))
        }
        _ => (builder.with_no_client_auth(), None),
    };
    config.alpn_protocols = tls
        .alpn
        .iter()
        .map(|protocol| protocol.as_bytes().to_vec())
        .collect();
    Ok(Loaded {
        config: Arc::new(config),
        expires_at,
    })
}

/// The name to send as SNI and to verify: the configured one, or the host.
///
/// # Errors
/// When the name is neither a DNS name nor an IP address.
pub fn server_name(configured: Option<&str>, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = configured.unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// Verifies client chains with webpki, then the allow-list.
#[derive(Debug)]
struct AllowListClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
    listener: String,
}

impl ClientCertVerifier for AllowListClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(&self.allow, end_entity, "client", &self.listener)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies server chains, then either the server name (the usual check)
/// or, when URIs or CNs are pinned, the allow-list instead: SPIFFE SVIDs
/// carry no DNS name to match.
#[derive(Debug)]
struct PinnedServerVerifier {
    roots: Arc<RootCertStore>,
    webpki: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    allow: AllowList,
    upstream: String,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.allow.names_beyond_dns() {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        } else {
            self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?;
        }
        check_identity(&self.allow, end_entity, "server", &self.upstream)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Refuses a verified peer whose identity is not allowed, logging who it was.
fn check_identity(
    allow: &AllowList,
    end_entity: &CertificateDer<'_>,
    role: &str,
    place: &str,
) -> Result<(), rustls::Error> {
    if allow.is_empty() {
        return Ok(());
    }
    let identity = PeerIdentity::from_certificate(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if allow.allows(&identity) {
        Ok(())
    } else {
        tracing::warn!(%identity, role, place, "peer identity not allowed");
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// A client configuration that accepts any server certificate, for health
/// probes only: a probe completes the handshake (so the server logs no
/// aborted handshake), sends no data and closes. Signatures are still
/// checked, so the handshake is a real one.
pub fn probe_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(ProbeOnlyVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the ring provider supports every rustls protocol version")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts any certificate; see [`probe_client_config`].
#[derive(Debug)]
struct ProbeOnlyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ProbeOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn validity_errors_name_the_date_in_words() {
        // 2026-11-30 12:00:00 UTC.
        assert_eq!(
            super::validity(0, 1_796_040_000, true),
            "the certificate expired on 2026-11-30 12:00 UTC"
        );
        assert_eq!(
            super::validity(1_796_040_000, 1_900_000_000, false),
            "the certificate is not valid before 2026-11-30 12:00 UTC"
        );
    }
}
