//! The concurrency limit as a tower layer. Readiness is getting a slot:
//! `poll_ready` queues for one (or is refused: the queue is full, or the
//! queue timeout passed) and holds it, then asks the inner service; `call`
//! moves the slot into the response future, which keeps it until the
//! response (for HTTP: its headers) is ready. A clone starts without a slot,
//! so each request's `oneshot` queues for its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use sync_wrapper::SyncWrapper;
use tower::BoxError;

use super::{ConcurrencyLimit, Refusal, Slot};

/// Wraps a service in [`Limit`], sharing one [`ConcurrencyLimit`].
#[derive(Clone)]
pub(crate) struct LimitLayer {
    limit: Arc<ConcurrencyLimit>,
}

impl LimitLayer {
    pub(crate) fn new(limit: Arc<ConcurrencyLimit>) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            limit: self.limit.clone(),
            state: State::Idle,
        }
    }
}

/// A service that is ready only while it holds a slot of its limit.
pub(crate) struct Limit<S> {
    inner: S,
    limit: Arc<ConcurrencyLimit>,
    state: State,
}

enum State {
    Idle,
    /// Queued for a slot. `SyncWrapper`: the stack is shared between
    /// connections (`Sync`), the future is only ever polled through `&mut`.
    Queued(SyncWrapper<BoxFuture<'static, Result<Slot, Refusal>>>),
    Holding(Slot),
}

impl<S: Clone> Clone for Limit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limit: self.limit.clone(),
            state: State::Idle,
        }
    }
}

impl<S, Request> tower::Service<Request> for Limit<S>
where
    S: tower::Service<Request>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Holding<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    // The common case, a free slot, allocates nothing.
                    if let Some(slot) = self.limit.try_acquire() {
                        self.state = State::Holding(slot);
                        continue;
                    }
                    let limit = self.limit.clone();
                    let acquire: BoxFuture<'static, _> =
                        Box::pin(async move { limit.acquire().await });
                    self.state = State::Queued(SyncWrapper::new(acquire));
                }
                State::Queued(acquiring) => {
                    let acquired = ready!(acquiring.get_mut().as_mut().poll(context));
                    match acquired {
                        Ok(slot) => self.state = State::Holding(slot),
                        Err(refusal) => {
                            self.state = State::Idle;
                            return Poll::Ready(Err(refusal.into()));
                        }
                    }
                }
                State::Holding(_) => return self.inner.poll_ready(context).map_err(Into::into),
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let State::Holding(slot) = std::mem::replace(&mut self.state, State::Idle) else {
            panic!("Limit::call without poll_ready returning Ready(Ok)");
        };
        Holding {
            response: self.inner.call(request),
            _slot: slot,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future that keeps its slot until it resolves.
    pub(crate) struct Holding<F> {
        #[pin]
        response: F,
        _slot: Slot,
    }
}

impl<F, Response, Error> Future for Holding<F>
where
    F: Future<Output = Result<Response, Error>>,
    Error: Into<BoxError>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().response.poll(context).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
    use tower_test::{assert_request_eq, mock};

    use super::*;

    fn limited(max: usize, max_pending: usize) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::new(
            max,
            max_pending,
            Duration::from_secs(3),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn ready_means_holding_a_slot_until_the_response() {
        let limit = limited(1, 4);
        let (mut first, mut handle) =
            mock::spawn_layer::<&str, &str, _>(LimitLayer::new(limit.clone()));
        let mut second = first.clone();

        assert_ready_ok!(first.poll_ready());
        assert_eq!(limit.in_use(), 1);
        // The only slot is taken: the second waits in the queue, not in call.
        assert_pending!(second.poll_ready());
        assert_eq!(limit.waiting(), 1);

        let response = first.call("one");
        assert_request_eq!(handle, "one").send_response("done");
        assert_eq!(response.await.unwrap(), "done");
        // The slot came back with the response: the second is ready now.
        assert!(second.is_woken());
        assert_ready_ok!(second.poll_ready());
        assert_eq!((limit.in_use(), limit.waiting()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_and_a_queue_timeout_are_refusals_from_poll_ready() {
        let limit = limited(1, 1);
        let (mut holder, _handle) =
            mock::spawn_layer::<&str, &str, _>(LimitLayer::new(limit.clone()));
        let (mut queued, mut refused) = (holder.clone(), holder.clone());
        assert_ready_ok!(holder.poll_ready());
        assert_pending!(queued.poll_ready());
        let overflow = assert_ready_err!(refused.poll_ready());
        assert_eq!(overflow.downcast_ref::<Refusal>(), Some(&Refusal::Overflow));

        tokio::time::sleep(Duration::from_secs(3)).await;
        let timed_out = assert_ready_err!(queued.poll_ready());
        assert_eq!(
            timed_out.downcast_ref::<Refusal>(),
            Some(&Refusal::QueueTimeout)
        );
        assert_eq!(limit.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_service_that_is_not_ready_keeps_the_slot_and_waits() {
        let limit = limited(1, 4);
        let (mut service, mut handle) =
            mock::spawn_layer::<&str, &str, _>(LimitLayer::new(limit.clone()));
        handle.allow(0);
        assert_pending!(service.poll_ready());
        assert_eq!(limit.in_use(), 1);
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        // A dropped service gives its slot back.
        drop(service);
        assert_eq!(limit.in_use(), 0);
    }
}
