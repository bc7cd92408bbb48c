//! Before authentication: how connections are accepted and how much each may hold before
//! anyone knows who is calling. A connection cap and a handshake deadline (`accept`), which
//! also describes each connection once for its requests (`auth::PeerConnection`), HTTP/2
//! keepalive and a stream cap per connection (the tonic builder here), a call timeout
//! (`call_timeout`, a layer the builder adds), and bounded health Watch streams (`health`);
//! the Prometheus scrape endpoint (`metrics`), on a plaintext HTTP/1.1 listener of its own. Every bound is a `server.*` setting; see
//! config/defaults.toml for the reasons behind the defaults and docs/security.md for the whole.

mod accept;
mod call_timeout;
mod health;
mod metrics;

pub use accept::{incoming, AcceptLimits, Accepted, Handshake, Plaintext};
pub use call_timeout::CallTimeoutLayer;
pub use health::{health_server, LimitedHealth, HEALTH_WATCH_LIMITED};
pub use metrics::{serve_metrics, Render};

use tower::layer::util::{Identity, Stack};

use crate::config::ServerSettings;

/// A tonic server builder with `server.*`'s HTTP/2 bounds and call timeout. Its TCP settings are
/// not used: the connections come from [`incoming`], which sets them itself. Layers added to it
/// sit inside the call timeout.
pub fn builder(settings: &ServerSettings) -> tonic::transport::Server<Stack<CallTimeoutLayer, Identity>> {
    tonic::transport::Server::builder()
        // Dead peers (a pod gone without a FIN, a dropped route) are found and their
        // connections, calls and slots freed.
        .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout))
        // Advertised to the client, which queues calls beyond it; a client that ignores it has
        // the extra streams refused by the HTTP/2 layer.
        .max_concurrent_streams(Some(settings.max_concurrent_streams))
        // Until the answer starts: CANCELLED past it. A handler stuck on something that never
        // answers can't hold its task forever. Not tonic's `timeout`, which makes a timer for
        // every call (see `call_timeout`).
        .layer(CallTimeoutLayer::new(settings.call_timeout))
}

/// The accept loop's bounds from `server.*`.
pub fn accept_limits(settings: &ServerSettings) -> AcceptLimits {
    AcceptLimits {
        max_connections: settings.max_connections as usize,
        handshake_timeout: settings.handshake_timeout,
        tcp_keepalive: settings.tcp_keepalive,
    }
}
