//! `GET /metrics` for Prometheus, on a plaintext HTTP/1.1 listener of its own
//! (`telemetry.metrics_listen`). Like health it needs no credentials: a scraper carries none,
//! and what it reads are counts and durations labelled by outcome, source, provider and status,
//! never a tenant id or a secret. Like everything served before authentication it is bounded: a
//! few connections at once, each with a deadline for its request headers and for its whole life.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// Scrapers at once: Prometheus holds one connection per target, an HA pair two; a few more
/// leave room for a person with curl. Beyond it, connections wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;
/// A request's headers must have arrived this long after the connection opened or went idle.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long, kept alive or not: scrapers reconnect, and no
/// connection holds one of the few places forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// What a scrape returns: the exposition text and its content type, or why it failed.
pub type Render = Arc<dyn Fn() -> Result<(Vec<u8>, &'static str), String> + Send + Sync>;

/// Serves `GET /metrics` (and HEAD) on `listener` with `render`'s text until `stop` is
/// cancelled; everything else is 404, other methods on `/metrics` 405.
pub async fn serve_metrics(listener: TcpListener, render: Render, stop: CancellationToken) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owned by the loop: when it ends, open connections are closed with it.
    let mut connections = JoinSet::new();
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::debug!(error = %e, "the metrics listener could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        // Reap the finished ones so the set holds only open connections.
        while connections.try_join_next().is_some() {}
        let render = render.clone();
        connections.spawn(async move {
            let _place = place;
            let service = service_fn(move |request| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&request, &render)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

fn answer<B>(request: &Request<B>, render: &Render) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match render() {
        Ok((body, content_type)) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not encode the metrics for a scrape");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be encoded\n")
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
