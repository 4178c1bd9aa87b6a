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

/// Delegates the tokio I/O traits to the variant, so L7 handlers (hyper)
/// can run over either kind of stream.
macro_rules! delegate_io {
    ($stream:ident) => {
        impl AsyncRead for $stream {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
                    Self::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $stream {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(stream) => std::pin::Pin::new(stream).poll_write(cx, buf),
                    Self::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(stream) => std::pin::Pin::new(stream).poll_write_vectored(cx, bufs),
                    Self::Tls(stream) => {
                        std::pin::Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs)
                    }
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(stream) => stream.is_write_vectored(),
                    Self::Tls(stream) => stream.is_write_vectored(),
                }
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(stream) => std::pin::Pin::new(stream).poll_flush(cx),
                    Self::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(stream) => std::pin::Pin::new(stream).poll_shutdown(cx),
                    Self::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(ClientStream);
delegate_io!(UpstreamStream);

impl UpstreamStream {
    /// Whether TLS origination negotiated HTTP/2 through ALPN.
    pub(crate) fn negotiated_h2(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(stream) => stream.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl Stream for ClientStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(stream) => Stream::poll_read_ready(stream, cx),
            Self::Tls(stream) => stream.as_mut().poll_read_ready(cx),
        }
    }
}
