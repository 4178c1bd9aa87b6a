//! Postgres clients (`protocol: postgres`): the packets a Postgres client
//! sends before its session, answered the way a Postgres server answers
//! them, then the session forwarded as it is (the TCP route's relay).
//!
//! - `SSLRequest`: `S` and a TLS handshake on a listener with `tls:` (the
//!   listener's own, through [`TlsAcceptor`]: same certificates, client
//!   certificate checks, identity allow-lists and metrics as TLS up front);
//!   `N` without. A second `SSLRequest` inside TLS is refused.
//! - `GSSENCRequest`: `N` (attache holds no Kerberos credentials); the
//!   client goes on with `SSLRequest` or plaintext, as libpq does.
//! - `CancelRequest`: forwarded on a connection of its own, as Postgres
//!   expects, to the same upstream.
//! - The startup message (protocol 3.x): on a TLS listener only inside TLS
//!   (a plaintext one gets a FATAL error, as `hostssl` does); then the
//!   upstream gets it first, and the rest flows both ways.
//!
//! Every packet is read exactly (no read-ahead), so bytes a client sends
//! after `SSLRequest` but before the handshake are TLS input, never
//! plaintext taken into the session (CVE-2021-23214's buffer stuffing).
//! Packets are bounded as Postgres bounds them (10,000 bytes) and must
//! arrive within [`STARTUP_TIMEOUT`].

mod startup;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::listener::{ConnectionContext, Protocol};
use crate::net::ClientStream;
use crate::tcp::TcpRoute;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CloseResult, ListenerMetrics};
use startup::{Packet, StartupError, read_packet};

/// A client must have sent its startup message within this.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One `postgres` listener: where its sessions go.
pub(crate) struct PostgresFront {
    pub(crate) route: TcpRoute,
}

impl Protocol for PostgresFront {
    fn listener_name(&self) -> &str {
        &self.route.listener
    }

    fn metrics(&self) -> &ListenerMetrics {
        &self.route.metrics
    }

    fn serve(
        self: Arc<Self>,
        client: ClientStream,
        context: ConnectionContext,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(serve(client, context, self))
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn starts_tls_in_band(&self) -> bool {
        true
    }
}

/// What became of the packets before the session.
enum Opening {
    /// Forward the session, starting with this startup message.
    Session(ClientStream, Vec<u8>),
    /// A cancel request, to forward on a connection of its own.
    Cancel(ClientStream, Vec<u8>),
    /// The client was answered (or failed) and the connection is done.
    Done(CloseResult),
}

async fn serve(client: ClientStream, mut context: ConnectionContext, front: Arc<PostgresFront>) {
    let route = &front.route;
    let opening = tokio::time::timeout(STARTUP_TIMEOUT, open(client, &mut context, route)).await;
    match opening {
        Ok(Opening::Session(client, startup)) => {
            crate::tcp::forward(client, context, route, &startup).await;
        }
        Ok(Opening::Cancel(client, cancel)) => {
            // Postgres answers a cancel request with nothing but a close.
            crate::tcp::forward(client, context, route, &cancel).await;
        }
        Ok(Opening::Done(result)) => route.metrics.closed(result),
        Err(_) => {
            tracing::debug!(listener = %route.listener, client = %context.client_address, "closing: no startup message within {STARTUP_TIMEOUT:?}");
            route.metrics.closed(CloseResult::IdleTimeout);
        }
    }
}

/// Reads and answers what the client sends before its startup message.
async fn open(
    mut client: ClientStream,
    context: &mut ConnectionContext,
    route: &TcpRoute,
) -> Opening {
    let address = context.client_address;
    loop {
        let packet = match read_packet(&mut client).await {
            Ok(packet) => packet,
            // A connection that closes before its first byte (a TCP probe).
            Err(StartupError::Read(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Opening::Done(CloseResult::Ok);
            }
            Err(error) => {
                limited!(
                    route.metrics.log_limit,
                    "postgres_startup",
                    info!(listener = %route.listener, client = %address, %error, "closing a Postgres client before its session")
                );
                let reply = startup::fatal("08P01", &format!("attache: {error}"));
                let _ = client.write_all(&reply).await;
                return Opening::Done(CloseResult::Error);
            }
        };
        let in_tls = matches!(client, ClientStream::Tls(_));
        match packet {
            Packet::SslRequest if in_tls => {
                let reply = startup::fatal("08P01", "attache: SSLRequest inside TLS");
                let _ = client.write_all(&reply).await;
                return Opening::Done(CloseResult::Error);
            }
            Packet::SslRequest => match (context.tls.take(), client) {
                (Some(tls), ClientStream::Plain(mut stream)) => {
                    if stream.write_all(b"S").await.is_err() {
                        return Opening::Done(CloseResult::Error);
                    }
                    match tls.accept(stream, address).await {
                        Some(upgraded) => client = upgraded,
                        // Counted and logged as a failed handshake.
                        None => return Opening::Done(CloseResult::TlsHandshakeFailed),
                    }
                }
                (None, mut plain) => {
                    if plain.write_all(b"N").await.is_err() {
                        return Opening::Done(CloseResult::Error);
                    }
                    client = plain;
                }
                (Some(_), tls @ ClientStream::Tls(_)) => client = tls,
            },
            Packet::GssEncRequest => {
                if client.write_all(b"N").await.is_err() {
                    return Opening::Done(CloseResult::Error);
                }
            }
            Packet::Cancel(bytes) => return Opening::Cancel(client, bytes),
            Packet::Startup(_) if context.tls.is_some() && !in_tls => {
                // A TLS listener serves sessions inside TLS only.
                let reply = startup::fatal(
                    "28000",
                    "attache: this listener accepts TLS connections only (sslmode=require)",
                );
                let _ = client.write_all(&reply).await;
                limited!(
                    route.metrics.log_limit,
                    "postgres_plaintext",
                    info!(listener = %route.listener, client = %address, "refused a plaintext Postgres session on a TLS listener")
                );
                return Opening::Done(CloseResult::Error);
            }
            Packet::Startup(bytes) => return Opening::Session(client, bytes),
        }
    }
}
