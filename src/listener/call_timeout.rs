//! `server.call_timeout`: a call whose answer has not started that long after it began is
//! answered CANCELLED ("Timeout expired"), so that a handler stuck on something that never
//! answers can't hold its task, its stream slot and its caller forever.
//!
//! tonic's own server timeout (`Server::timeout`) does the same with a `tokio::time::Sleep`
//! made for every call. Making one reads the clock and takes a reference to the runtime, and
//! dropping one takes the timer driver's lock, which every worker shares, even when the timer
//! was never armed. On the hot path (a cached token, answered on the call's first poll) that
//! was about 1 % of the vault's CPU (docs/performance.md). [`CallTimeout`] makes the timer only
//! when the call has to wait, at its first poll that is not an answer; the deadline then counts
//! from that poll rather than from the request's arrival, which is later by the time the call's
//! task waited to be polled (microseconds, against a timeout of seconds).
//!
//! A caller's own deadline (`grpc-timeout`) is still enforced by tonic, whose layer is always
//! there, outside every layer of ours; with no server timeout set it makes a timer only for the
//! calls that carry one. So a caller that sends a deadline (the project's client always does)
//! still pays for tonic's timer on every call, and a call of its that waits has two timers.
//! The span of a call this layer ends records CANCELLED; one that tonic ends at the caller's
//! deadline records nothing, as before.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Ends every call that has not answered `timeout` after its first wait.
#[derive(Clone, Copy, Debug)]
pub struct CallTimeoutLayer {
    timeout: Duration,
}

impl CallTimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for CallTimeoutLayer {
    type Service = CallTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<http::Request<B>> for CallTimeout<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = UntilTimeout<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        UntilTimeout {
            answer: self.inner.call(request),
            timeout: self.timeout,
            timer: None,
        }
    }
}

pin_project! {
    /// A call's answer, or CANCELLED if `timeout` passes first.
    pub struct UntilTimeout<F> {
        #[pin]
        answer: F,
        timeout: Duration,
        // Armed at the call's first wait.
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<F, E> Future for UntilTimeout<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(answer) = this.answer.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.timeout)));
        }
        if let Some(timer) = this.timer.as_pin_mut() {
            ready!(timer.poll(cx));
        }
        // Dropping `answer` with this future ends the call's work as a caller's cancellation
        // does; what must outlive a call (a refresh, a handed-off read) runs in tasks of its own.
        crate::telemetry::record_status(tonic::Code::Cancelled);
        Poll::Ready(Ok(timed_out().into_http()))
    }
}

/// What tonic's server timeout answered, kept so that callers see no change.
fn timed_out() -> tonic::Status {
    tonic::Status::cancelled("Timeout expired")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn answered() -> http::Response<tonic::body::Body> {
        http::Response::new(tonic::body::Body::empty())
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_does_not_answer_in_time_is_cancelled() {
        let mut service =
            CallTimeoutLayer::new(Duration::from_secs(60)).layer(tower::service_fn(|_: http::Request<()>| async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(answered())
            }));
        let started = tokio::time::Instant::now();
        // A limit of the test's own, so that a timer never armed fails here instead of hanging.
        let response = tokio::time::timeout(Duration::from_secs(61), service.call(http::Request::new(())))
            .await
            .expect("answered by the call timeout")
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(60), "at the timeout, not before");
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Cancelled);
        assert_eq!(status.message(), "Timeout expired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_waits_less_than_the_timeout_keeps_its_answer() {
        let mut service =
            CallTimeoutLayer::new(Duration::from_secs(60)).layer(tower::service_fn(|_: http::Request<()>| async {
                tokio::time::sleep(Duration::from_secs(59)).await;
                Ok::<_, Infallible>(answered())
            }));
        let response = service.call(http::Request::new(())).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none(), "the call's own answer");
    }

    #[tokio::test]
    async fn a_call_answered_at_once_makes_no_timer() {
        let mut service =
            CallTimeoutLayer::new(Duration::from_secs(60)).layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(answered())
            }));
        let mut call = std::pin::pin!(service.call(http::Request::new(())));
        let answer = futures::poll!(call.as_mut());
        assert!(answer.is_ready());
        assert!(call.timer.is_none(), "no timer for a call that never waited");
    }
}
