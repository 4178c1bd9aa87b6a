//! The relay: both directions of one connection copied in a single
//! hand-polled loop (a few hundred bytes of task state), with an idle timer
//! re-armed only when it fires. Generic over [`Stream`], so plain TCP and
//! TLS legs share it.
//!
//! Memory: a direction takes a copy buffer only when its source turns
//! readable and gives it back once a short read shows it drained, so an
//! idle connection holds none.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use crate::net::Stream;
use crate::telemetry::metrics::{CloseResult, ListenerMetrics};

/// Largest chunk read from one side before it is written to the other.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Copies both ways until both directions finished, one failed, or neither
/// moved a byte for `idle_timeout`. A direction that reads end-of-stream
/// shuts down the write side of the other socket and the opposite direction
/// carries on: a client that half-closes still receives the whole reply.
///
/// One hand-polled loop over both directions, rather than a future per
/// direction, keeps a connection's task small (a few hundred bytes).
pub(super) async fn relay<C: Stream, U: Stream>(
    client: &mut C,
    upstream: &mut U,
    idle_timeout: Duration,
    metrics: &ListenerMetrics,
) -> Relayed {
    let mut to_upstream = Direction::new(&metrics.to_upstream_bytes);
    let mut to_client = Direction::new(&metrics.to_client_bytes);
    let result = copy_both(
        client,
        upstream,
        idle_timeout,
        &mut to_upstream,
        &mut to_client,
    )
    .await;
    Relayed {
        result,
        to_upstream: to_upstream.total,
        to_client: to_client.total,
    }
}

/// How a relay ended, and the bytes it moved each way.
pub(super) struct Relayed {
    pub(super) result: io::Result<CloseResult>,
    pub(super) to_upstream: u64,
    pub(super) to_client: u64,
}

async fn copy_both<C: Stream, U: Stream>(
    client: &mut C,
    upstream: &mut U,
    idle_timeout: Duration,
    to_upstream: &mut Direction<'_>,
    to_client: &mut Direction<'_>,
) -> io::Result<CloseResult> {
    let mut last_activity = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    let mut idle = pin!(idle);
    poll_fn(|cx| {
        let other_done = to_client.is_done();
        let upward = to_upstream.poll_copy(cx, client, upstream, other_done, &mut last_activity)?;
        let other_done = to_upstream.is_done();
        let downward = to_client.poll_copy(cx, upstream, client, other_done, &mut last_activity)?;
        if upward.is_ready() && downward.is_ready() {
            return Poll::Ready(Ok(CloseResult::Ok));
        }
        // The timer is re-armed from the last activity only when it fires,
        // not on every read.
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(Ok(CloseResult::IdleTimeout));
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Where one direction of a relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Copying,
    ShuttingDown,
    Done,
}

/// One direction of a relay: reads from one socket, writes to the other.
struct Direction<'a> {
    /// Held only while a burst is being copied: an idle connection holds no
    /// copy buffer.
    buffer: Option<BytesMut>,
    /// Bytes of `buffer` already written.
    written: usize,
    stage: Stage,
    bytes: &'a Counter,
    /// Bytes this direction has copied.
    total: u64,
}

impl<'a> Direction<'a> {
    fn new(bytes: &'a Counter) -> Self {
        Self {
            buffer: None,
            written: 0,
            stage: Stage::Copying,
            bytes,
            total: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Copies until `reader` ends, then shuts `writer` down, unless the other
    /// direction is already done (the sockets close next, which sends the FIN
    /// anyway).
    fn poll_copy<R: Stream, W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        other_done: bool,
        last_activity: &mut Instant,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.stage = Stage::Done;
                }
                Stage::Copying => {
                    if let Some(buffer) = &mut self.buffer {
                        while self.written < buffer.len() {
                            let wrote = ready!(
                                Pin::new(&mut *writer).poll_write(cx, &buffer[self.written..])
                            )?;
                            if wrote == 0 {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                            }
                            self.written += wrote;
                        }
                        // TLS keeps records it could not send yet; plain TCP
                        // has nothing to flush.
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        // A short read means the socket was drained (tokio
                        // cleared its readiness): give the buffer back until
                        // more arrives. A full one means more is likely queued.
                        let drained = buffer.len() < COPY_BUFFER_BYTES;
                        buffer.clear();
                        self.written = 0;
                        if drained {
                            self.buffer = None;
                        }
                    }
                    if self.buffer.is_none() {
                        ready!(reader.poll_read_ready(cx))?;
                    }
                    let buffer = self
                        .buffer
                        .get_or_insert_with(|| BytesMut::with_capacity(COPY_BUFFER_BYTES));
                    let read =
                        match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, buffer) {
                            Poll::Ready(read) => read?,
                            Poll::Pending => {
                                // Readiness was spurious: wait without the buffer.
                                self.buffer = None;
                                return Poll::Pending;
                            }
                        };
                    if read == 0 {
                        self.buffer = None;
                        self.stage = if other_done {
                            Stage::Done
                        } else {
                            Stage::ShuttingDown
                        };
                    } else {
                        self.bytes.inc_by(read as u64);
                        self.total += read as u64;
                        *last_activity = Instant::now();
                    }
                }
            }
        }
    }
}
