//! Limits before authentication, against the real server over TLS and mutual TLS: idle sockets
//! that never handshake are closed after `server.handshake_timeout`, connections past
//! `server.max_connections` are closed at once, unauthenticated health Watch streams are capped
//! per connection and in all, and through all of it an authenticated caller is served.

use std::time::{Duration, Instant};

use token_vault::proto::{self, token_vault_client::TokenVaultClient};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{transport::Channel, Code, Streaming};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest, HealthCheckResponse};

use crate::{
    callers::{callers_toml, Pki, BILLING_SPIFFE},
    helpers::{assert_reason, connect, connect_tls, spawn_app_with, TestOptions},
};

/// Sockets opened and left silent: no TLS ClientHello, no HTTP/2 preface.
const IDLE_CONNECTIONS: usize = 300;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);

/// Opens `n` TCP connections to `addr` that never send a byte; each with when it was opened.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpStream::connect(addr).await.expect("the listener accepts");
        out.push((socket, Instant::now()));
    }
    out
}

/// How long after opening each socket the server closed it (EOF or reset), waiting at most
/// `limit` per socket; None for a socket still open then. What the server sends first (its
/// HTTP/2 SETTINGS, on plaintext) is read and ignored.
async fn closed_after(sockets: Vec<(TcpStream, Instant)>, limit: Duration) -> Vec<Option<Duration>> {
    let waits = sockets.into_iter().map(|(mut socket, opened)| async move {
        let mut buf = [0u8; 256];
        let until_closed = async {
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::time::timeout_at((opened + limit).into(), until_closed)
            .await
            .ok()
            .map(|()| opened.elapsed())
    });
    futures::future::join_all(waits).await
}

/// Whether the server closes `socket` within `limit`, reading past what it sends first.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let until_closed = async {
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(limit, until_closed).await.is_ok()
}

/// A health Watch on the server's overall status, once its first message (the current
/// status) has arrived.
pub async fn watch(health: &mut HealthClient<Channel>) -> Result<Streaming<HealthCheckResponse>, tonic::Status> {
    let mut stream = health
        .watch(HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    // The first message is the current status: the stream is really open on the server.
    stream.message().await?.expect("a first status");
    Ok(stream)
}

#[tokio::test]
async fn idle_sockets_and_health_watches_do_not_keep_an_authenticated_caller_out() {
    let pki = Pki::new("cluster");
    let billing = pki.leaf(&[], &[BILLING_SPIFFE]);
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            "{}\n{}\n[server]\nhandshake_timeout = \"{}ms\"\nmax_health_watches = 10\nmax_health_watches_per_connection = 4\n",
            callers_toml(),
            pki.server_toml(),
            HANDSHAKE_TIMEOUT.as_millis()
        ),
        client_tls: Some(pki.client(Some(&billing))),
        ..Default::default()
    })
    .await;

    // Idle sockets on the TLS listener and on the plaintext health listener beside it.
    let opened = Instant::now();
    let mut idle = idle_connections(app.addr, IDLE_CONNECTIONS).await;
    idle.extend(idle_connections(app.health_addr.unwrap(), 20).await);

    // Unauthenticated health Watch streams over TLS connections without a client certificate
    // (client certificates are optional: team-a and team-b use tokens).
    let mut healths = Vec::new();
    for _ in 0..3 {
        healths.push(HealthClient::new(connect_tls(app.addr, pki.client(None)).await));
    }
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(watch(&mut healths[0]).await.expect("within the per-connection limit"));
    }
    // (3) One more on the same connection is refused, at once and with a stable reason.
    let refused = watch(&mut healths[0]).await.unwrap_err();
    assert_reason(&refused, Code::ResourceExhausted, "HEALTH_WATCH_LIMITED");
    assert!(refused.message().contains("connection"), "{refused:?}");
    for _ in 0..4 {
        streams.push(watch(&mut healths[1]).await.expect("another connection has its own"));
    }
    for _ in 0..2 {
        streams.push(watch(&mut healths[2]).await.expect("within the total"));
    }
    // Ten in all: the total is reached, whatever the connection.
    let refused = watch(&mut healths[2]).await.unwrap_err();
    assert_reason(&refused, Code::ResourceExhausted, "HEALTH_WATCH_LIMITED");
    assert!(refused.message().contains("server"), "{refused:?}");
    // An ended stream gives its place back. Its end reaches the server as a reset stream,
    // so the place may come back a moment later.
    streams.remove(0);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(stream) = watch(&mut healths[2]).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a freed Watch place is reused");
    // Check, which probes use, is not limited by the Watch streams.
    for health in &mut healths {
        health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .expect("Check answers beside the Watch streams");
    }

    // (1) An authenticated caller on a new connection is served normally and promptly, while
    // all of the above is open.
    let call = async {
        let channel = connect_tls(app.addr, pki.client(Some(&billing))).await;
        let mut client = TokenVaultClient::new(channel);
        let begun = client
            .begin_authorization(proto::BeginAuthorizationRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let code = app.provider.consent(&begun.authorization_url);
        client
            .complete_authorization(proto::CompleteAuthorizationRequest {
                state: begun.state,
                code,
                ..Default::default()
            })
            .await
            .unwrap();
        client
            .get_access_token(proto::GetAccessTokenRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let token = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .expect("the authenticated caller is served within 2 s");
    assert!(!token.access_token.is_empty());
    assert!(
        opened.elapsed() < HANDSHAKE_TIMEOUT,
        "the caller was served while the idle sockets were still open (took {:?})",
        opened.elapsed()
    );
    // The caller's existing connection is served too.
    assert!(app.get_token("acme").await.is_ok());

    // (2) Every idle socket is closed by the server once the handshake timeout has passed since
    // it was accepted, not before.
    let closed = closed_after(idle, HANDSHAKE_TIMEOUT + Duration::from_secs(5)).await;
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(still_open, 0, "every idle socket is closed by the server");
    let earliest = closed.iter().flatten().min().unwrap();
    assert!(
        *earliest >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
        "an idle socket was closed after {earliest:?}, before the handshake timeout"
    );

    // The Watch streams, past their handshakes, were not touched by the timeout: still open,
    // waiting for a change of status.
    for stream in &mut streams {
        let next = tokio::time::timeout(Duration::from_millis(50), stream.message()).await;
        assert!(next.is_err(), "a Watch stream ended: {next:?}");
    }
    let mut alive = HealthClient::new(connect_tls(app.addr, pki.client(None)).await);
    alive
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health still answers");
    assert!(app.get_token("acme").await.is_ok());
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_slots_come_back() {
    // The test's own client holds one of the eight slots.
    let app = spawn_app_with(TestOptions {
        extra_toml: "[server]\nmax_connections = 8\nhandshake_timeout = \"2s\"\n".into(),
        ..Default::default()
    })
    .await;
    let idle = idle_connections(app.addr, 7).await;
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_millis(1000)).await,
        "a connection past the cap is closed at once, long before the handshake timeout"
    );
    // The established connection keeps being served.
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");

    // Once the idle sockets are closed (handshake timeout), their slots take new connections.
    let closed = closed_after(idle, Duration::from_secs(6)).await;
    assert!(closed.iter().all(Option::is_some), "{closed:?}");
    let mut fresh = connect(app.addr).await;
    let err = fresh
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
}
