//! attache-certs: certificates for attache's TLS termination and origination.
//!
//! The L4 foundation runs plaintext on loopback only; this crate is where PEM
//! loading, rustls configurations, peer identity checks, hot reload and the
//! development CA land with the mutual-TLS work. It depends on
//! `attache-config` and knows nothing about listeners.
//!
//! # Layout
//! Empty until the TLS work: nothing here is compiled into the binary yet.
