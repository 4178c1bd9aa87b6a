//! The streams a relay runs over: plain TCP, and TLS terminated or
//! originated over TCP. [`Stream::poll_read_ready`] lets the relay wait for
//! data without holding a buffer.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream the relay can wait on without a buffer.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read would make progress (data, end of stream or an
    /// error); may be spuriously ready.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Stream for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// TLS is ready when rustls already holds decrypted bytes (or the peer's
/// close), else when the socket is.
fn poll_tls_read_ready<Data>(
    socket: &TcpStream,
    connection: &mut rustls::ConnectionCommon<Data>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    match connection.process_new_packets() {
        Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
            socket.poll_read_ready(cx)
        }
        // Buffered data, a close, or an error the next read reports.
        _ => Poll::Ready(Ok(())),
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (socket, connection) = self.get_mut();
        poll_tls_read_ready(socket, connection, cx)
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (socket, connection) = self.get_mut();
        poll_tls_read_ready(socket, connection, cx)
    }
}

/// An accepted client connection: plain, or TLS terminated by attache.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An upstream connection: plain, or TLS originated by attache.
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The verified client certificate's identity, on TLS with a client certificate.
    pub(crate) fn peer_identity(&self) -> Option<attache_certs::identity::PeerIdentity> {
        let Self::Tls(stream) = self else { return None };
        let leaf = stream.get_ref().1.peer_certificates()?.first()?;
        attache_certs::identity::PeerIdentity::from_certificate(leaf).ok()
    }
}
