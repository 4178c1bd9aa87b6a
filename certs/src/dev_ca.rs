//! A development CA: `ca.crt` / `ca.key` in a directory, and leaf
//! certificates it signs (`NAME.crt` / `NAME.key`) that serve both as server
//! and as client certificates. Keys are ECDSA P-256, written with mode 0600;
//! every file is written to a temporary name and renamed into place, so a
//! process watching the directory never reads half a file.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The CA certificate's file name inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Certificates are valid from a little before their creation, so clocks a
/// few minutes apart agree that they are valid.
const BACKDATE: Duration = Duration::minutes(5);

/// Why a development certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA directory already holds a key; replacing it would orphan every
    /// certificate it signed.
    #[error(
        "{0} exists; refusing to replace a CA key (certificates it signed would stop verifying). Use --force to replace it"
    )]
    CaExists(PathBuf),
    /// A name cannot go into a certificate (for example, non-ASCII).
    #[error("{kind} {value:?} cannot go into a certificate: {reason}")]
    InvalidName {
        /// `DNS name` or `URI`.
        kind: &'static str,
        /// The value as given.
        value: String,
        /// What rcgen said.
        reason: rcgen::Error,
    },
    /// The CA files could not be parsed, or signing failed.
    #[error("{context}: {source}")]
    Certificate {
        /// What was being done.
        context: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
}

/// What a leaf certificate should say.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// File stem and subject common name.
    pub name: String,
    /// DNS subject alternative names; when no SAN of any kind is given, `name` is used.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// URI SANs, such as SPIFFE IDs (`spiffe://cluster.local/ns/default/sa/web`).
    pub uris: Vec<String>,
    /// Validity in days from now.
    pub days: u32,
}

/// Creates `ca.crt` and `ca.key` in `directory` (created if missing), valid
/// for `days`. Returns the certificate's path.
///
/// # Errors
/// [`DevCaError::CaExists`] when `ca.key` exists and `force` is false, and
/// I/O or signing errors.
pub fn create_ca(directory: &Path, days: u32, force: bool) -> Result<PathBuf, DevCaError> {
    let key_path = directory.join(CA_KEY_FILE);
    if key_path.exists() && !force {
        return Err(DevCaError::CaExists(key_path));
    }
    fs::create_dir_all(directory).map_err(|source| io_error(directory, source))?;
    let key = KeyPair::generate().map_err(|source| signing_error("generate the CA key", source))?;
    // A name of its own (from its key), so verifiers never confuse two
    // development CAs by name.
    let fingerprint: String = key
        .public_key_raw()
        .iter()
        .rev()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut params = CertificateParams::default();
    params.distinguished_name =
        distinguished_name(&format!("attache development CA {fingerprint}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, days);
    let certificate = params
        .self_signed(&key)
        .map_err(|source| signing_error("self-sign the CA certificate", source))?;
    let cert_path = directory.join(CA_CERT_FILE);
    write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, certificate.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Signs a leaf certificate for `request` with the CA in `ca_directory` and
/// writes `NAME.crt` and `NAME.key` to `out_directory` (created if missing),
/// replacing earlier ones. The certificate carries both the server and the
/// client extended key usage. Returns the certificate's path.
///
/// # Errors
/// When the CA files cannot be read or parsed, a name is not valid in a
/// certificate, or a file cannot be written.
pub fn issue(
    ca_directory: &Path,
    out_directory: &Path,
    request: &LeafRequest,
) -> Result<PathBuf, DevCaError> {
    let ca_cert = read(&ca_directory.join(CA_CERT_FILE))?;
    let ca_key = read(&ca_directory.join(CA_KEY_FILE))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|source| {
        signing_error(
            &format!("parse {}", ca_directory.join(CA_KEY_FILE).display()),
            source,
        )
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(|source| {
        signing_error(
            &format!("parse {}", ca_directory.join(CA_CERT_FILE).display()),
            source,
        )
    })?;

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&request.name);
    params.subject_alt_names = subject_alt_names(request)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, request.days);
    let key = KeyPair::generate().map_err(|source| signing_error("generate the key", source))?;
    let certificate = params.signed_by(&key, &issuer).map_err(|source| {
        signing_error(
            &format!("sign the certificate for {}", request.name),
            source,
        )
    })?;

    fs::create_dir_all(out_directory).map_err(|source| io_error(out_directory, source))?;
    let cert_path = out_directory.join(format!("{}.crt", request.name));
    write_atomically(
        &out_directory.join(format!("{}.key", request.name)),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomically(&cert_path, certificate.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

fn subject_alt_names(request: &LeafRequest) -> Result<Vec<SanType>, DevCaError> {
    let mut names = Vec::new();
    let dns_names: Vec<&str> = if request.dns_names.is_empty()
        && request.ip_addresses.is_empty()
        && request.uris.is_empty()
    {
        vec![request.name.as_str()]
    } else {
        request.dns_names.iter().map(String::as_str).collect()
    };
    for dns_name in dns_names {
        let value = dns_name
            .try_into()
            .map_err(|reason| DevCaError::InvalidName {
                kind: "DNS name",
                value: dns_name.to_owned(),
                reason,
            })?;
        names.push(SanType::DnsName(value));
    }
    names.extend(request.ip_addresses.iter().copied().map(SanType::IpAddress));
    for uri in &request.uris {
        let value = uri
            .as_str()
            .try_into()
            .map_err(|reason| DevCaError::InvalidName {
                kind: "URI",
                value: uri.clone(),
                reason,
            })?;
        names.push(SanType::URI(value));
    }
    Ok(names)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
}

fn read(path: &Path) -> Result<String, DevCaError> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

/// Writes `contents` to a temporary file beside `path` with `mode`, then
/// renames it over `path`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevCaError> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    // A leftover from an interrupted run would keep its old mode.
    match fs::remove_file(&temporary) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(&temporary, source));
        }
        _ => {}
    }
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path));
    written.map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> DevCaError {
    DevCaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn signing_error(context: &str, source: rcgen::Error) -> DevCaError {
    DevCaError::Certificate {
        context: context.to_owned(),
        source,
    }
}
