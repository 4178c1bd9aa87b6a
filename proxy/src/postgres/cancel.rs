//! Cancel requests in a pooled session. Each client gets a cancel key of
//! attache's own (`BackendKeyData`); a `CancelRequest` with it reaches the
//! server connection that client holds at that moment, under that
//! connection's own key, over TLS when the upstream has it. Without a connection lent (between
//! transactions) there is nothing to cancel and nothing is sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt as _;

use crate::upstream::EndpointState;

/// A server backend to cancel: the server (reached as its endpoint is, TLS
/// included, at the very address it runs on) and the backend's key.
#[derive(Clone)]
pub(super) struct Destination {
    pub(super) endpoint: Arc<EndpointState>,
    pub(super) server: SocketAddr,
    pub(super) process_id: u32,
    pub(super) secret: u32,
}

/// Where a client's cancel request goes now.
#[derive(Default)]
pub(super) struct CancelTarget(Mutex<Option<Destination>>);

impl CancelTarget {
    pub(super) fn set(&self, destination: Destination) {
        *self.lock() = Some(destination);
    }

    pub(super) fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Destination>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The cancel keys attache gave its clients.
#[derive(Default)]
pub(super) struct CancelKeys(Mutex<HashMap<(u32, u32), Arc<CancelTarget>>>);

/// A client's registered key; unregistered when dropped.
pub(super) struct CancelKey<'a> {
    keys: &'a CancelKeys,
    pub(super) process_id: u32,
    pub(super) secret: u32,
    pub(super) target: Arc<CancelTarget>,
}

impl Drop for CancelKey<'_> {
    fn drop(&mut self) {
        self.keys.lock().remove(&(self.process_id, self.secret));
    }
}

impl CancelKeys {
    /// A fresh key (random, unused) for a new client.
    pub(super) fn register(&self) -> CancelKey<'_> {
        let target = Arc::new(CancelTarget::default());
        let mut keys = self.lock();
        let key = loop {
            let key = (fastrand::u32(1..), fastrand::u32(..));
            if !keys.contains_key(&key) {
                break key;
            }
        };
        keys.insert(key, target.clone());
        CancelKey {
            keys: self,
            process_id: key.0,
            secret: key.1,
            target,
        }
    }

    /// The backend to cancel for a client's `CancelRequest` packet (16
    /// bytes: length, code, process id, secret).
    pub(super) fn target(&self, packet: &[u8]) -> Option<Destination> {
        let word = |at: usize| {
            packet
                .get(at..at + 4)
                .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        let key = (word(8)?, word(12)?);
        let target = self.lock().get(&key)?.clone();
        target.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u32), Arc<CancelTarget>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends a `CancelRequest` for the backend on a connection of its own, as
/// Postgres expects (inside TLS when the upstream has it, so the key never
/// crosses the network in the clear); the server answers with nothing but
/// a close.
pub(super) async fn send(destination: Destination) {
    const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    let mut packet = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(
        destination.process_id as i32,
        destination.secret as i32,
        &mut packet,
    );
    let sent = tokio::time::timeout(CANCEL_TIMEOUT, async {
        let mut stream = destination
            .endpoint
            .side_connection(destination.server)
            .await
            .map_err(std::io::Error::other)?;
        stream.write_all(&packet).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!(server = %destination.server, "a Postgres cancel request could not be delivered");
    }
}
