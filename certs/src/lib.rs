//! attache-certs: certificates for attache's TLS termination and origination.
//!
//! Today it holds the development CA behind `attache certs ca` and
//! `attache certs issue`, and PEM loading; rustls configurations, peer
//! identity checks and hot reload land here with the rest of the mutual-TLS
//! work. It knows nothing about listeners.
//!
//! # Layout
//! - [`dev_ca`]: a local CA and the leaf certificates it signs, for trying
//!   mTLS in a minute and for tests. Production certificates come from
//!   cert-manager, SPIRE or a company CA.
//! - [`pem`]: certificate chains, CA bundles and private keys from PEM files,
//!   with errors that name the file.

pub mod dev_ca;
pub mod pem;
