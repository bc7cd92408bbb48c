//! `grpc.health.v1.Health` with bounded Watch streams. Health needs no credentials (kubelet
//! probes carry none), and a Watch stream lives until the client ends it, so without a bound
//! any peer could hold an unbounded number of them. Check, which probes use, is not limited
//! beyond `server.call_timeout`.
//!
//! Watch streams also end when the replica stops: the server's graceful shutdown waits for
//! every open stream, and a Watch never ends by itself, so one client that checks its
//! backends' health by Watch (as gRPC clients with health checking do) would hold every
//! shutdown for the whole grace period. Once `closing` is cancelled (after NOT_SERVING is
//! set), each stream delivers NOT_SERVING, unless that was the last status it sent, then ends
//! with UNAVAILABLE `SHUTTING_DOWN`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::{future::BoxFuture, FutureExt, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
        HealthCheckRequest, HealthCheckResponse,
    },
    server::{HealthReporter, HealthService, WatchStream},
};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::PeerConnection;

/// The stable reason a refused Watch carries (`google.rpc.ErrorInfo`, domain `tokenvault`).
pub const HEALTH_WATCH_LIMITED: &str = "HEALTH_WATCH_LIMITED";

/// One TCP connection: the listener's address and the peer's. Unique among open connections,
/// also across the two listeners (the TLS one and the plaintext health one).
type ConnectionKey = (Option<SocketAddr>, Option<SocketAddr>);

/// The health service for `reporter`'s statuses, allowing `total` Watch streams at once and
/// `per_connection` on any one connection, and ending them when `closing` is cancelled. One
/// instance can serve several listeners.
pub fn health_server(
    reporter: HealthReporter,
    total: u32,
    per_connection: u32,
    closing: CancellationToken,
) -> HealthServer<LimitedHealth> {
    HealthServer::new(LimitedHealth::new(reporter, total, per_connection, closing))
}

pub struct LimitedHealth {
    inner: HealthService,
    closing: CancellationToken,
    watches: Arc<Watches>,
}

impl LimitedHealth {
    fn new(reporter: HealthReporter, total: u32, per_connection: u32, closing: CancellationToken) -> Self {
        Self {
            inner: HealthService::from_health_reporter(reporter),
            closing,
            watches: Arc::new(Watches {
                total: Arc::new(Semaphore::new(total as usize)),
                per_connection,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }
}

struct Watches {
    total: Arc<Semaphore>,
    per_connection: u32,
    /// Open Watch streams per connection; an entry goes when its last stream ends.
    open: Mutex<HashMap<ConnectionKey, u32>>,
}

impl Watches {
    /// A place for one more Watch on `key`'s connection, or why not.
    fn take(self: &Arc<Self>, key: ConnectionKey) -> Result<WatchSlot, Status> {
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            return Err(refused("too many health Watch streams on this server; use Check"));
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.per_connection {
            return Err(refused("too many health Watch streams on this connection"));
        }
        *count += 1;
        Ok(WatchSlot {
            watches: self.clone(),
            key,
            _permit: permit,
        })
    }
}

/// Held by a Watch stream; frees its place when the stream ends (the client went away or the
/// connection closed).
struct WatchSlot {
    watches: Arc<Watches>,
    key: ConnectionKey,
    _permit: OwnedSemaphorePermit,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

fn refused(message: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(HEALTH_WATCH_LIMITED, crate::api::ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
}

/// The connection a request came on, with or without TLS.
fn connection<T>(request: &Request<T>) -> ConnectionKey {
    request
        .extensions()
        .get::<PeerConnection>()
        .map_or((None, None), |peer| (peer.local_addr, peer.remote_addr))
}

#[tonic::async_trait]
impl Health for LimitedHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = LimitedWatch;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self.watches.take(connection(&request))?;
        let inner = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(LimitedWatch {
            inner,
            closing: Some(self.closing.clone().cancelled_owned().boxed()),
            last: None,
            _slot: slot,
        }))
    }
}

/// A Watch stream holding its place until it is dropped, and ending when the replica stops.
pub struct LimitedWatch {
    inner: WatchStream,
    /// None once the stream has ended for the shutdown.
    closing: Option<BoxFuture<'static, ()>>,
    /// The last status sent.
    last: Option<i32>,
    _slot: WatchSlot,
}

impl Stream for LimitedWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(closing) = this.closing.as_mut() else {
            return Poll::Ready(None);
        };
        // A status change first: NOT_SERVING, set before `closing` is cancelled, normally
        // reaches the watcher from here.
        if let Poll::Ready(update) = Pin::new(&mut this.inner).poll_next(cx) {
            if let Some(Ok(response)) = &update {
                this.last = Some(response.status);
            }
            return Poll::Ready(update);
        }
        if closing.poll_unpin(cx).is_ready() {
            // The inner stream may not have yielded it yet (its receiver spends the task's
            // cooperative budget, the closing signal does not): send it here, once.
            let not_serving = ServingStatus::NotServing as i32;
            if this.last != Some(not_serving) {
                this.last = Some(not_serving);
                return Poll::Ready(Some(Ok(HealthCheckResponse { status: not_serving })));
            }
            this.closing = None;
            return Poll::Ready(Some(Err(crate::api::shutting_down())));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    async fn watching(closing: &CancellationToken) -> (HealthReporter, LimitedWatch) {
        let reporter = HealthReporter::new();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let health = LimitedHealth::new(reporter.clone(), 10, 10, closing.clone());
        let request = Request::new(HealthCheckRequest { service: String::new() });
        let mut watch = health.watch(request).await.unwrap().into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving);
        (reporter, watch)
    }

    fn shut_down(item: Option<Result<HealthCheckResponse, Status>>) {
        let status = item.expect("an item").expect_err("an error");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, "SHUTTING_DOWN");
    }

    #[tokio::test]
    async fn a_watch_gets_not_serving_from_the_reporter_then_ends() {
        let closing = CancellationToken::new();
        let (reporter, mut watch) = watching(&closing).await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        closing.cancel();
        assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
        shut_down(watch.next().await);
        assert!(watch.next().await.is_none(), "then the stream ends");
    }

    /// The reporter's NOT_SERVING not (yet) seen by the stream, as when its receiver is out of
    /// cooperative budget: the stream sends NOT_SERVING itself before ending.
    #[tokio::test]
    async fn a_watch_ended_before_its_stream_saw_not_serving_is_told_anyway() {
        let closing = CancellationToken::new();
        let (_reporter, mut watch) = watching(&closing).await;
        closing.cancel();
        assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
        shut_down(watch.next().await);
        assert!(watch.next().await.is_none(), "then the stream ends");
    }
}
