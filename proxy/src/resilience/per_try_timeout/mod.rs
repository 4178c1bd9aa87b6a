//! The per-try timeout as a tower layer: each call to the inner service
//! (one try on one endpoint) fails with [`PerTryTimeout`] when it has no
//! response within the limit; the try's future is dropped, which abandons
//! the request on that connection. Readiness is the inner service's. With
//! no limit the layer adds nothing but a branch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower::BoxError;

/// One try ran out of its per-try timeout.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint did not answer within the per-try timeout ({0:?})")]
pub(crate) struct PerTryTimeout(pub(crate) Duration);

/// Bounds each call of the wrapped service by `limit` (none: unbounded).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PerTryTimeoutLayer {
    limit: Option<Duration>,
}

impl PerTryTimeoutLayer {
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for PerTryTimeoutLayer {
    type Service = TryTimeout<S>;

    fn layer(&self, inner: S) -> TryTimeout<S> {
        TryTimeout {
            inner,
            limit: self.limit,
        }
    }
}

/// A service whose calls each get at most `limit`.
#[derive(Debug, Clone)]
pub(crate) struct TryTimeout<S> {
    inner: S,
    limit: Option<Duration>,
}

impl<S, Request> tower::Service<Request> for TryTimeout<S>
where
    S: tower::Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Bounded<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(context).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Bounded {
            response: self.inner.call(request),
            deadline: self.limit.map(tokio::time::sleep),
            limit: self.limit.unwrap_or_default(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A try's response, or [`PerTryTimeout`] when its deadline comes first.
    pub(crate) struct Bounded<F> {
        #[pin]
        response: F,
        #[pin]
        deadline: Option<Sleep>,
        limit: Duration,
    }
}

impl<F, Response, Error> Future for Bounded<F>
where
    F: Future<Output = Result<Response, Error>>,
    Error: Into<BoxError>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.response.poll(context) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this
            .deadline
            .as_pin_mut()
            .map(|deadline| deadline.poll(context))
        {
            Some(Poll::Ready(())) => Poll::Ready(Err(PerTryTimeout(*this.limit).into())),
            Some(Poll::Pending) | None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower_test::{assert_request_eq, mock};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_try_without_a_response_in_time_fails_with_the_limit() {
        let layer = PerTryTimeoutLayer::new(Some(Duration::from_millis(300)));
        let (mut service, mut handle) = mock::spawn_layer::<&str, &str, _>(layer);
        assert_ready_ok!(service.poll_ready());
        let slow = service.call("slow");
        let _unanswered = assert_request_eq!(handle, "slow");
        let error = slow.await.unwrap_err();
        let timeout = error.downcast_ref::<PerTryTimeout>().unwrap();
        assert_eq!(timeout.0, Duration::from_millis(300));

        assert_ready_ok!(service.poll_ready());
        let fast = service.call("fast");
        assert_request_eq!(handle, "fast").send_response("ok");
        assert_eq!(fast.await.unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_the_inner_services_and_no_limit_waits_forever() {
        let (mut service, mut handle) =
            mock::spawn_layer::<&str, &str, _>(PerTryTimeoutLayer::new(None));
        handle.allow(0);
        assert_pending!(service.poll_ready());
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let waiting = tokio::spawn(service.call("patient"));
        let answer = assert_request_eq!(handle, "patient");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished());
        answer.send_response("at last");
        assert_eq!(waiting.await.unwrap().unwrap(), "at last");
    }
}
