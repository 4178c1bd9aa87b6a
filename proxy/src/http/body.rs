//! The bodies attache moves: a request body that is either held whole (so
//! the request can be retried) or streamed once, and a response body that
//! counts what it sends and reports when it has finished (for the request
//! metrics and the access log).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body on its way upstream.
pub(crate) enum RequestBody {
    /// Held whole (`None` once sent, or when empty): the request may be replayed.
    Buffered(Option<Bytes>),
    /// Streamed from the client as it arrives; it can be sent only once.
    /// The counter adds up the bytes that went through.
    Streaming(Incoming, Arc<AtomicU64>),
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
            Self::Streaming(body, received) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered(bytes) => bytes.is_none(),
            Self::Streaming(body, _) => body.is_end_stream(),
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

/// Told once when a response body has been sent, or abandoned.
pub(crate) trait OnFinish: Send + Sync {
    /// `sent` bytes went out; `complete` is false when the body failed or
    /// the client left before its end.
    fn finish(self: Box<Self>, sent: u64, complete: bool);
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

    fn finish(&mut self, complete: bool) {
        if let Some(on_finish) = self.on_finish.take() {
            on_finish.finish(self.sent, complete);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 304) end here; so do abandoned ones.
        let complete = self.is_end_stream();
        self.finish(complete);
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
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
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
