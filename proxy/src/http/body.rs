//! The bodies attache moves: a request body that is either held whole (so
//! the request can be retried) or streamed once, and a response body that
//! counts what it sends and reports when it has finished (for the request
//! metrics and the access log).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body on its way upstream.
pub(crate) enum RequestBody {
    /// Held whole (`None` once sent, or when empty): the request may be replayed.
    Buffered(Option<Bytes>),
    /// Streamed from the client as it arrives; it can be sent only once.
    Streaming(Incoming, Arc<BodyProgress>),
}

/// What a request body has done so far: the bytes that went through, and
/// whether it ended or the client's side of it failed (a malformed chunk, an
/// upload the client aborted). A try that fails because of the client's
/// body is never held against the endpoint.
#[derive(Debug, Default)]
pub(crate) struct BodyProgress {
    received: AtomicU64,
    ended: AtomicBool,
    client_failed: AtomicBool,
}

impl BodyProgress {
    /// Bytes of the body received from the client so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether reading the body from the client failed.
    pub(crate) fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Acquire)
    }

    /// Whether the whole body arrived from the client.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

impl RequestBody {
    /// A body held in memory.
    pub(crate) fn buffered(bytes: Bytes) -> Self {
        Self::Buffered((!bytes.is_empty()).then_some(bytes))
    }

    /// A copy for another try, when the body is held whole.
    pub(crate) fn replay(&self) -> Option<Self> {
        match self {
            Self::Buffered(bytes) => Some(Self::Buffered(bytes.clone())),
            Self::Streaming(..) => None,
        }
    }

    /// The progress of a streamed body; `None` for one held whole (which
    /// the client has already sent completely).
    pub(crate) fn progress(&self) -> Option<Arc<BodyProgress>> {
        match self {
            Self::Buffered(_) => None,
            Self::Streaming(_, progress) => Some(progress.clone()),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Buffered(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Self::Streaming(body, progress) => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            progress.add(data.len() as u64);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        progress.client_failed.store(true, Ordering::Release)
                    }
                    Poll::Ready(None) => progress.ended.store(true, Ordering::Release),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered(bytes) => bytes.is_none(),
            Self::Streaming(body, progress) => {
                let ended = body.is_end_stream();
                if ended {
                    progress.ended.store(true, Ordering::Release);
                }
                ended
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Streaming(body, _) => body.size_hint(),
        }
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Sent whole.
    Complete,
    /// The upstream's body failed before its end (a connection closed short
    /// of the declared length, a reset): the client got a truncated body.
    UpstreamCut,
    /// The client left before the end.
    ClientLeft,
}

/// Told once when a response body has been sent, or abandoned.
pub(crate) trait OnFinish: Send + Sync {
    /// `sent` bytes went out, and the body ended as `ending` says.
    fn finish(self: Box<Self>, sent: u64, ending: Ending);
}

/// A response body on its way to the client.
pub(crate) struct ResponseBody {
    inner: ResponseInner,
    sent: u64,
    on_finish: Option<Box<dyn OnFinish>>,
}

enum ResponseInner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// The upstream's body, streamed through.
    pub(crate) fn upstream(body: Incoming, on_finish: Box<dyn OnFinish>) -> Self {
        Self {
            inner: ResponseInner::Upstream(body),
            sent: 0,
            on_finish: Some(on_finish),
        }
    }

    /// A body attache writes itself.
    pub(crate) fn full(bytes: Bytes, on_finish: Box<dyn OnFinish>) -> Self {
        Self {
            inner: ResponseInner::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            on_finish: Some(on_finish),
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(on_finish) = self.on_finish.take() {
            on_finish.finish(self.sent, ending);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 304) end here; so do abandoned ones.
        let ending = if self.is_end_stream() {
            Ending::Complete
        } else {
            Ending::ClientLeft
        };
        self.finish(ending);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            ResponseInner::Full(bytes) => {
                Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))))
            }
            ResponseInner::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Ending::UpstreamCut),
            Poll::Ready(None) => this.finish(Ending::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Full(bytes) => bytes.is_none(),
            ResponseInner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseInner::Upstream(body) => body.size_hint(),
        }
    }
}
