//! Calls still in flight when the shutdown's grace period ends get an answer: UNAVAILABLE with
//! the reason `SHUTTING_DOWN`, which gRPC clients treat as "try again elsewhere", instead of a
//! connection dropped under them, which they see as UNKNOWN (a transport error) and most
//! retry policies do not retry.
//!
//! [`CutOffLayer`] sits in front of every service. Each call's answer races one
//! [`CancellationToken`] that `startup` cancels when the grace period ends; the server's
//! graceful shutdown then ends on its own once those answers are out.
//!
//! The race costs a call that answers on its first poll (a cached token) one reference count
//! of an `Arc`: a [`CancellationToken`]'s own clone and drop, and the registration of a waiter
//! on it, take the token's lock, shared by every call in flight, so they happen only when the
//! call has to wait (a database read, a refresh).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

use super::status::shutting_down;

/// Answers the calls still in flight once `cut` is cancelled.
#[derive(Clone)]
pub struct CutOffLayer {
    cut: Arc<CancellationToken>,
}

impl CutOffLayer {
    pub fn new(cut: CancellationToken) -> Self {
        Self { cut: Arc::new(cut) }
    }
}

impl<S> Layer<S> for CutOffLayer {
    type Service = CutOff<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CutOff {
            inner,
            cut: self.cut.clone(),
        }
    }
}

/// Cloned for every call (hyper clones the service per request), hence the `Arc`.
#[derive(Clone)]
pub struct CutOff<S> {
    inner: S,
    cut: Arc<CancellationToken>,
}

impl<S, B> Service<http::Request<B>> for CutOff<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = UntilCutOff<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        UntilCutOff {
            answer: self.inner.call(request),
            cut: self.cut.clone(),
            waiting: None,
        }
    }
}

pin_project! {
    /// A call's answer, or UNAVAILABLE `SHUTTING_DOWN` if the cut-off comes first.
    pub struct UntilCutOff<F> {
        #[pin]
        answer: F,
        cut: Arc<CancellationToken>,
        // A waiter on `cut`, from the call's first wait on.
        #[pin]
        waiting: Option<WaitForCancellationFutureOwned>,
    }
}

impl<F, E> Future for UntilCutOff<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The answer first: a call that is done is answered, even past the cut-off.
        if let Poll::Ready(answer) = this.answer.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.waiting.is_none() {
            this.waiting
                .set(Some(CancellationToken::clone(this.cut).cancelled_owned()));
        }
        if let Some(waiting) = this.waiting.as_pin_mut() {
            ready!(waiting.poll(cx));
        }
        // Dropping `answer` with this future ends the call's work as a caller's cancellation
        // does; what must outlive a call (a refresh, a handed-off read) runs in tasks of its own.
        crate::telemetry::record_status(tonic::Code::Unavailable);
        Poll::Ready(Ok(shutting_down().into_http()))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn answered() -> http::Response<tonic::body::Body> {
        http::Response::new(tonic::body::Body::empty())
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response.headers().get("grpc-status").map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn a_call_still_waiting_at_the_cut_off_is_answered_unavailable() {
        let cut = CancellationToken::new();
        let mut service = CutOffLayer::new(cut.clone()).layer(tower::service_fn(|_: http::Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(answered())
        }));
        let call = tokio::spawn(service.call(http::Request::new(())));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!call.is_finished(), "the call waits until the cut-off");
        cut.cancel();
        let response = call.await.unwrap().unwrap();
        assert_eq!(grpc_status(&response), Some("14"), "UNAVAILABLE");
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        let info = tonic_types::StatusExt::get_error_details(&status)
            .error_info()
            .cloned()
            .unwrap();
        assert_eq!(info.reason, "SHUTTING_DOWN");
    }

    #[tokio::test]
    async fn a_call_that_is_answered_keeps_its_answer_past_the_cut_off() {
        let cut = CancellationToken::new();
        cut.cancel();
        let mut service = CutOffLayer::new(cut).layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(answered())
        }));
        let response = service.call(http::Request::new(())).await.unwrap();
        assert_eq!(grpc_status(&response), None, "the call's own answer");
    }
}
