//! PEM files: certificate chains and CA bundles (`CERTIFICATE` sections) and
//! private keys (PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`),
//! parsed with `rustls-pki-types`' `PemObject`. Every error names the file.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has no section of the expected kind.
    #[error("{path}: no {expected} found (expected a PEM `-----BEGIN {expected}-----` section)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        expected: &'static str,
    },
    /// The file is not valid PEM.
    #[error("{path}: not valid PEM: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// Every certificate in `path`, in file order (leaf first for a chain).
///
/// # Errors
/// When the file cannot be read, is not valid PEM, or holds no certificate.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| classify(path, error, "CERTIFICATE"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| classify(path, error, "CERTIFICATE"))?;
    if certificates.is_empty() {
        return Err(PemError::Missing {
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certificates)
}

/// The first private key in `path`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
///
/// # Errors
/// When the file cannot be read, is not valid PEM, or holds no private key.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| classify(path, error, "PRIVATE KEY"))
}

fn classify(path: &Path, error: pem::Error, expected: &'static str) -> PemError {
    let path = path.to_path_buf();
    match error {
        pem::Error::Io(source) => PemError::Read { path, source },
        pem::Error::NoItemsFound => PemError::Missing { path, expected },
        other => PemError::Malformed {
            path,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::dev_ca::{self, LeafRequest};

    fn issued(directory: &Path) -> (PathBuf, PathBuf) {
        dev_ca::create_ca(directory, 1, false).unwrap();
        let request = LeafRequest {
            name: "service".into(),
            dns_names: vec![],
            ip_addresses: vec![],
            uris: vec![],
            days: 1,
        };
        let certificate = dev_ca::issue(directory, directory, &request).unwrap();
        (certificate, directory.join("service.key"))
    }

    #[test]
    fn a_chain_file_loads_every_certificate_in_order() {
        let directory = tempfile::tempdir().unwrap();
        let (leaf, _) = issued(directory.path());
        let chain = directory.path().join("chain.pem");
        let mut text = std::fs::read_to_string(&leaf).unwrap();
        text.push_str(&std::fs::read_to_string(directory.path().join("ca.crt")).unwrap());
        std::fs::write(&chain, text).unwrap();

        let loaded = load_certificates(&chain).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded[0],
            load_certificates(&leaf).unwrap()[0],
            "leaf first"
        );
    }

    #[test]
    fn pkcs8_sec1_and_pkcs1_keys_load() {
        let directory = tempfile::tempdir().unwrap();
        let (_, pkcs8) = issued(directory.path());
        assert!(matches!(
            load_private_key(&pkcs8).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));

        let sec1 = directory.path().join("sec1.key");
        let converted = Command::new("openssl")
            .args([
                "ec",
                "-in",
                pkcs8.to_str().unwrap(),
                "-out",
                sec1.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(converted.status.success());
        assert!(
            std::fs::read_to_string(&sec1)
                .unwrap()
                .contains("BEGIN EC PRIVATE KEY")
        );
        assert!(matches!(
            load_private_key(&sec1).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));

        let pkcs1 = directory.path().join("rsa.key");
        let generated = Command::new("openssl")
            .args([
                "genrsa",
                "-traditional",
                "-out",
                pkcs1.to_str().unwrap(),
                "2048",
            ])
            .output()
            .unwrap();
        assert!(generated.status.success());
        assert!(matches!(
            load_private_key(&pkcs1).unwrap(),
            PrivateKeyDer::Pkcs1(_)
        ));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let directory = tempfile::tempdir().unwrap();
        let (certificate, key) = issued(directory.path());

        let missing = directory.path().join("absent.crt");
        let error = load_certificates(&missing).unwrap_err();
        assert!(matches!(error, PemError::Read { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&missing.display().to_string())
        );

        let error = load_private_key(&certificate).unwrap_err();
        assert!(
            matches!(
                error,
                PemError::Missing {
                    expected: "PRIVATE KEY",
                    ..
                }
            ),
            "{error}"
        );
        let error = load_certificates(&key).unwrap_err();
        assert!(
            matches!(
                error,
                PemError::Missing {
                    expected: "CERTIFICATE",
                    ..
                }
            ),
            "{error}"
        );

        let garbage = directory.path().join("garbage.crt");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n%%% not base64 %%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = load_certificates(&garbage).unwrap_err();
        assert!(matches!(error, PemError::Malformed { .. }), "{error}");
    }
}
