//! attache-certs: certificates for attache's TLS termination and origination.
//!
//! Today it holds the development CA behind `attache certs ca` and
//! `attache certs issue`, PEM loading, peer identity checks and the rustls
//! configurations; hot reload lands here with the rest of the mutual-TLS
//! work. It knows nothing about listeners.
//!
//! # Layout
//! - [`dev_ca`]: a local CA and the leaf certificates it signs, for trying
//!   mTLS in a minute and for tests. Production certificates come from
//!   cert-manager, SPIRE or a company CA.
//! - [`pem`]: certificate chains, CA bundles and private keys from PEM files,
//!   with errors that name the file.
//! - [`identity`]: peer identity (SPIFFE ID, DNS SAN, CN) and allow-lists.
//! - [`tls`]: rustls server and client configurations, with the allow-lists
//!   enforced inside the certificate verifiers.

pub mod dev_ca;
pub mod identity;
pub mod pem;
pub mod tls;
