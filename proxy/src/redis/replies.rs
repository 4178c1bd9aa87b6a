//! One client's replies, in the order of its commands. Only the oldest
//! reply is ever waited for (Redis and attache answer in order), so one
//! timer serves the whole queue, and every reply that is already there
//! when the oldest arrives goes out in the same write.

use std::collections::VecDeque;
use std::time::Duration;

use attache_resp::encode;
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::cache::AfterReply;
use super::shared::Answer;
use crate::telemetry::metrics::{RedisMetrics, RedisResult};
use crate::telemetry::traces;
use opentelemetry_sdk::trace::{Span, Tracer};
use std::sync::Arc;

enum Pending {
    /// Known already (a local answer).
    Ready(Bytes),
    /// Forwarded on a shared connection.
    Waiting {
        receiver: oneshot::Receiver<Answer>,
        /// Its label in the command count.
        label: usize,
        sent: Instant,
        /// Boxed: large, and only there with span export on; every
        /// command's entry is moved into the queue and out of it.
        span: Option<Box<Span>>,
        /// What the cache does with the reply (boxed, as the span).
        after: Option<Box<AfterReply>>,
    },
    /// Its answer came while the queue waited for it.
    Answered {
        answer: Result<Answer, oneshot::error::RecvError>,
        label: usize,
        sent: Instant,
        span: Option<Box<Span>>,
        after: Option<Box<AfterReply>>,
    },
}

/// The queue, the command timeout and the metrics its answers count in.
pub(super) struct Replies {
    queue: VecDeque<Pending>,
    timeout: Duration,
    metrics: RedisMetrics,
    /// With span export on: the tracer and the listener's name.
    tracing: Option<(Tracer, Arc<str>)>,
}

impl Replies {
    pub(super) fn new(
        timeout: Duration,
        metrics: RedisMetrics,
        tracing: Option<(Tracer, Arc<str>)>,
    ) -> Self {
        Self {
            queue: VecDeque::new(),
            timeout,
            metrics,
            tracing,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Lets go of the queue's room when nothing is owed: a client between
    /// commands (most of its life) keeps none.
    pub(super) fn release_room(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }

    /// A reply attache has already.
    pub(super) fn push_ready(&mut self, reply: Bytes) {
        self.queue.push_back(Pending::Ready(reply));
    }

    /// A command `name` (counted under `label`) forwarded at `sent` on
    /// `database`, its reply to come through `receiver`, then handed to
    /// the cache's `after`.
    pub(super) fn push_waiting(
        &mut self,
        receiver: oneshot::Receiver<Answer>,
        (name, label): (&[u8], usize),
        sent: Instant,
        database: u32,
        after: Option<AfterReply>,
    ) {
        let span = self.tracing.as_ref().map(|(tracer, listener)| {
            let cache_hit = after
                .as_ref()
                .filter(|after| after.is_fill())
                .map(|_| false);
            Box::new(traces::start_redis_span(
                tracer, listener, name, database, cache_hit,
            ))
        });
        self.queue.push_back(Pending::Waiting {
            receiver,
            label,
            sent,
            span,
            after: after.map(Box::new),
        });
    }

    /// A read answered from the cache (counted and traced as a command
    /// that took no time).
    pub(super) fn push_hit(&mut self, reply: Bytes, (name, label): (&[u8], usize), database: u32) {
        self.metrics.command_labelled(label, RedisResult::Ok);
        self.metrics.duration.observe(0.0);
        if let Some((tracer, listener)) = &self.tracing {
            let span = traces::start_redis_span(tracer, listener, name, database, Some(true));
            traces::end_redis_span(span, None);
        }
        self.queue.push_back(Pending::Ready(reply));
    }

    /// Waits for the oldest reply (or its timeout), then takes it and every
    /// reply after it that is already there. `None` when nothing is queued.
    ///
    /// Cancel-safe: a reply is taken off the queue in the same poll that
    /// finds it.
    pub(super) async fn next_batch(&mut self) -> Option<BytesMut> {
        let head = self.queue.front_mut()?;
        if let Pending::Waiting {
            receiver,
            label,
            sent,
            span,
            after,
        } = head
        {
            let deadline = *sent + self.timeout;
            let answer = tokio::select! {
                answer = receiver => Some(answer),
                () = tokio::time::sleep_until(deadline) => None,
            };
            if let Some(answer) = answer {
                *head = Pending::Answered {
                    answer,
                    label: *label,
                    sent: *sent,
                    span: span.take(),
                    after: after.take(),
                };
            }
        }
        // One clock reading for the whole batch: its replies all leave now.
        let now = Instant::now();
        let mut batch = BytesMut::new();
        while let Some(pending) = self.queue.front_mut() {
            let reply = match pending {
                Pending::Ready(reply) => reply.clone(),
                Pending::Answered {
                    answer,
                    label,
                    sent,
                    span,
                    after,
                } => {
                    let (reply, result) = classify(answer.clone().map_err(|_| ()));
                    answered(after.take(), &reply, result);
                    self.metrics.command_labelled(*label, result);
                    self.metrics
                        .duration
                        .observe(now.saturating_duration_since(*sent).as_secs_f64());
                    end_span(span.take(), result);
                    reply
                }
                Pending::Waiting {
                    receiver,
                    label,
                    sent,
                    span,
                    after,
                } => {
                    let (reply, result) = match receiver.try_recv() {
                        Ok(answer) => classify(Ok(answer)),
                        Err(oneshot::error::TryRecvError::Closed) => classify(Err(())),
                        Err(oneshot::error::TryRecvError::Empty)
                            if now.saturating_duration_since(*sent) >= self.timeout =>
                        {
                            // Dropping the receiver makes the shared
                            // connection discard the late reply in order.
                            (
                                encode::error(&format!(
                                    "ERR attache: no reply within the command timeout ({:?})",
                                    self.timeout
                                )),
                                RedisResult::Failed,
                            )
                        }
                        Err(oneshot::error::TryRecvError::Empty) => break,
                    };
                    answered(after.take(), &reply, result);
                    self.metrics.command_labelled(*label, result);
                    self.metrics
                        .duration
                        .observe(now.saturating_duration_since(*sent).as_secs_f64());
                    end_span(span.take(), result);
                    reply
                }
            };
            batch.extend_from_slice(&reply);
            self.queue.pop_front();
        }
        Some(batch)
    }
}

/// Hands Redis' reply to the cache before it goes to the client (a write's
/// keys are dropped then); a failed command's is just dropped.
fn answered(after: Option<Box<AfterReply>>, reply: &Bytes, result: RedisResult) {
    if let Some(after) = after {
        if result == RedisResult::Failed {
            drop(after);
        } else {
            after.answered(reply);
        }
    }
}

fn end_span(span: Option<Box<Span>>, result: RedisResult) {
    if let Some(span) = span {
        let error = match result {
            RedisResult::Ok => None,
            RedisResult::Error => Some("redis_error"),
            RedisResult::Failed => Some("attache_failure"),
        };
        traces::end_redis_span(*span, error);
    }
}

/// The reply a client gets for an answer, and how to count it; `Err` when
/// the shared connection went away without answering.
fn classify(answer: Result<Answer, ()>) -> (Bytes, RedisResult) {
    match answer {
        Ok(Ok(reply)) => {
            let result = if reply.first() == Some(&b'-') {
                RedisResult::Error
            } else {
                RedisResult::Ok
            };
            (reply, result)
        }
        Ok(Err(reply)) => (reply, RedisResult::Failed),
        Err(()) => (
            encode::error("ERR attache: the upstream connection closed"),
            RedisResult::Failed,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_reply_is_small_enough_to_move_per_command() {
        // Every command's entry is moved into the queue and out of it; a
        // span and the cache's follow-up live behind pointers.
        assert!(std::mem::size_of::<Pending>() <= 96);
    }
}
