//! What every room above uses of the network: the client and upstream
//! streams (plain TCP, or TLS terminated or originated over it), the socket
//! options both legs get (TCP_NODELAY, keepalive), and which I/O errors are
//! our own resource limits. [`Stream::poll_read_ready`] lets a relay wait
//! for data without holding a buffer; [`read_into_room`] lets a session
//! read without keeping one while it waits.

use std::io;
use std::task::{Context, Poll};

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Keepalive probes start after this much silence; dead peers are noticed
/// within about a minute more, long before the idle timeout.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 4;

/// Sets TCP_NODELAY and keepalive on an upstream socket, or on a listening
/// socket (Linux copies both to every socket it accepts, sparing five system
/// calls per connection). Failures are logged and otherwise ignored: the
/// connection still works without them.
pub(crate) fn tune(socket: SockRef<'_>) {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(error) = socket
        .set_tcp_nodelay(true)
        .and_then(|()| socket.set_tcp_keepalive(&keepalive))
    {
        tracing::debug!(%error, "cannot set TCP_NODELAY or keepalive");
    }
}

/// Whether `error` says this process or host ran out of something (file
/// descriptors, socket buffers, memory, local ports): our fault, never the
/// peer's, so it must not count against an upstream endpoint.
pub(crate) fn out_of_local_resources(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ]
        .contains(&Errno::from_raw(code))
    })
}

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
    let processed = connection.process_new_packets();
    send_queued_tls(socket, connection, cx);
    match processed {
        Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
            socket.poll_read_ready(cx)
        }
        // Buffered data, a close, or an error the next read reports.
        _ => Poll::Ready(Ok(())),
    }
}

/// Sends what rustls queued while reading (session tickets, the answer to
/// a KeyUpdate, a `no_renegotiation` warning, the alert for a fatal error)
/// without waiting for the next write: tokio-rustls writes only when the
/// stream is written to or flushed, so a connection that only reads (a
/// client waiting for its first response, a peer asking to renegotiate)
/// would hold them, and a peer waiting for them would hang. Never blocks: a
/// full socket buffer leaves the rest for the next read, and wakes the task
/// when the socket can take more.
fn send_queued_tls<Data>(
    socket: &TcpStream,
    connection: &mut rustls::ConnectionCommon<Data>,
    cx: &mut Context<'_>,
) {
    while connection.wants_write() {
        match connection.write_tls(&mut SocketWriter(socket)) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if socket.poll_write_ready(cx).is_pending() {
                    return;
                }
            }
            // The next read or write reports it.
            Err(_) => return,
        }
    }
}

/// Non-blocking writes to a socket, as `io::Write` for rustls.
struct SocketWriter<'a>(&'a TcpStream);

impl io::Write for SocketWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

    /// The verified client certificate's primary name: its first URI SAN
    /// (SPIFFE ID), else its first DNS SAN, else its common name.
    pub(crate) fn peer_name(&self) -> Option<String> {
        let identity = self.peer_identity()?;
        identity
            .uris
            .into_iter()
            .chain(identity.dns_names)
            .chain(identity.common_name)
            .next()
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
                    Self::Tls(stream) => {
                        let polled = std::pin::Pin::new(stream.as_mut()).poll_read(cx, buf);
                        let (socket, connection) = stream.get_mut();
                        if matches!(&polled, Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::InvalidData)
                        {
                            // A protocol error for which rustls sends no alert
                            // (a record with no content type): close_notify,
                            // so the peer sees TLS end, not a bare TCP close.
                            // A no-op when rustls already sent a fatal alert.
                            connection.send_close_notify();
                        }
                        send_queued_tls(socket, connection, cx);
                        polled
                    }
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

/// What an idle pooled connection holds, looked at without waiting.
pub(crate) enum Liveness {
    /// Nothing to read: still open, as it was left.
    Idle,
    /// Bytes arrived while nobody asked (for TLS, read and so consumed).
    Data,
    /// The peer closed it.
    Closed,
    Failed(io::Error),
}

impl UpstreamStream {
    /// Looks at an idle connection without waiting, before lending it.
    /// Plain sockets are peeked; TLS streams are read, which consumes
    /// session tickets and notices `close_notify`, and application data
    /// (which would then be lost) makes the connection unusable.
    pub(crate) async fn liveness(&mut self) -> Liveness {
        let mut byte = [0u8; 1];
        std::future::poll_fn(|context| {
            let mut buffer = tokio::io::ReadBuf::new(&mut byte);
            let polled = match self {
                Self::Plain(tcp) => tcp.poll_peek(context, &mut buffer).map_ok(|_| ()),
                Self::Tls(tls) => std::pin::Pin::new(tls.as_mut()).poll_read(context, &mut buffer),
            };
            Poll::Ready(match polled {
                Poll::Pending => Liveness::Idle,
                Poll::Ready(Ok(())) if buffer.filled().is_empty() => Liveness::Closed,
                Poll::Ready(Ok(())) => Liveness::Data,
                Poll::Ready(Err(error)) => Liveness::Failed(error),
            })
        })
        .await
    }

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

impl Stream for UpstreamStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(stream) => Stream::poll_read_ready(stream, cx),
            Self::Tls(stream) => stream.as_mut().poll_read_ready(cx),
        }
    }
}

/// Room on the stack for a read with nothing buffered (up to a whole
/// pipeline of statements or a page of rows in one read).
const IDLE_READ: usize = 16 << 10;

/// One read into [`IDLE_READ`] bytes of room on the stack (uninitialized:
/// this runs on every wake-up of the session), appended to `buffer`.
pub(crate) async fn read_into_room<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut bytes::BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut room = [std::mem::MaybeUninit::uninit(); IDLE_READ];
        let mut read = tokio::io::ReadBuf::uninit(&mut room);
        std::task::ready!(AsyncRead::poll_read(
            std::pin::Pin::new(&mut *stream),
            cx,
            &mut read
        ))?;
        buffer.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}
