//! Expiry and rotation against a server that rotates the refresh token on every refresh and
//! revokes the grant when a used one comes back: each expiry costs exactly one refresh, from
//! the newest refresh token.

use std::time::Duration;

use crate::{
    authserver::{AuthServer, ServerOptions, POST_CLIENT},
    harness::{until_refresh_due, Api, TestVault, VaultOptions, SHORT_TTL},
};

#[tokio::test]
async fn each_expiry_refreshes_once_from_the_rotated_refresh_token() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());
    api.connect_tenant("acme").await;
    let lifetime = Duration::from_secs(SHORT_TTL);

    let first = api.token("acme").await.unwrap();
    until_refresh_due(&first, lifetime).await;
    let second = api.token("acme").await.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert!(second.expires_at.unwrap().seconds > first.expires_at.unwrap().seconds);
    assert!(server.is_active(&POST_CLIENT, &second.access_token).await);
    let events = server.events();
    assert_eq!(events.refreshes().len(), 1, "{events:#?}");
    // The first refresh used the refresh token of the exchange.
    events.assert_one_rotation_chain();
    // Until the next expiry, callers share the refreshed token.
    assert_eq!(api.token("acme").await.unwrap().access_token, second.access_token);

    // The second expiry can only succeed with the refresh token the first refresh issued: the
    // one from the exchange is spent, and presenting it would revoke the grant.
    until_refresh_due(&second, lifetime).await;
    let third = api.token("acme").await.unwrap();
    assert_ne!(third.access_token, second.access_token);
    assert!(server.is_active(&POST_CLIENT, &third.access_token).await);
    let events = server.events();
    assert_eq!(events.refreshes().len(), 2, "{events:#?}");
    events.assert_one_rotation_chain();
    assert!(events.grant_errors().is_empty(), "{events:#?}");

    let connection = api.connection("acme").await.unwrap();
    assert_eq!(connection.status, token_vault::proto::ConnectionStatus::Active as i32);
    assert!(connection.has_refresh_token);
    assert!(connection.refreshed_at.is_some());
    // The stored instant is the answered one at the store's precision: Postgres keeps
    // microseconds, SQLite milliseconds; the refreshing call answered with the unrounded instant.
    let unit = if crate::test_db::sqlite_store() {
        1_000_000
    } else {
        1000
    };
    let stored = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos / unit));
    assert_eq!(stored(connection.access_token_expires_at), stored(third.expires_at));
}
