//! `grpc.health.v1.Health` with bounded Watch streams. Health needs no credentials (kubelet
//! probes carry none), and a Watch stream lives until the client ends it, so without a bound
//! any peer could hold an unbounded number of them. Check, which probes use, is not limited
//! beyond `server.call_timeout`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
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
/// `per_connection` on any one connection. One instance can serve several listeners.
pub fn health_server(reporter: HealthReporter, total: u32, per_connection: u32) -> HealthServer<LimitedHealth> {
    HealthServer::new(LimitedHealth {
        inner: HealthService::from_health_reporter(reporter),
        watches: Arc::new(Watches {
            total: Arc::new(Semaphore::new(total as usize)),
            per_connection,
            open: Mutex::new(HashMap::new()),
        }),
    })
}

pub struct LimitedHealth {
    inner: HealthService,
    watches: Arc<Watches>,
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
        Ok(Response::new(LimitedWatch { inner, _slot: slot }))
    }
}

/// A Watch stream holding its place until it is dropped.
pub struct LimitedWatch {
    inner: WatchStream,
    _slot: WatchSlot,
}

impl Stream for LimitedWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
