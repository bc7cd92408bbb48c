//! The authorization server goes away mid-run: the vault answers UNAVAILABLE without touching
//! the connection, and carries on from the same refresh token once the server is back on the
//! same port (its state file keeps the grant across the restart).

use std::time::Duration;

use tonic::Code;

use crate::{
    authserver::{AuthServer, ServerOptions, POST_CLIENT},
    browser::{Browser, Decision},
    harness::{assert_reason, until_refresh_due, Api, TestVault, VaultOptions, SHORT_TTL},
};

#[tokio::test]
async fn a_stopped_server_is_provider_unavailable_and_the_connection_survives_it() {
    let mut server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());
    api.connect_tenant("acme").await;
    let token = api.token("acme").await.unwrap();
    // A second customer is half-way through: consented, callback not yet forwarded.
    let late = api.begin("globex").await;
    let late_callback = Browser::new().authorize(&late.authorization_url, Decision::Allow).await;

    until_refresh_due(&token, Duration::from_secs(SHORT_TTL)).await;
    server.stop().await;

    let status = api.token("acme").await.unwrap_err();
    let metadata = assert_reason(&status, Code::Unavailable, "PROVIDER_UNAVAILABLE");
    assert!(metadata.contains_key("retry_after_ms"), "{metadata:?}");
    let connection = api.connection("acme").await.unwrap();
    assert_eq!(connection.status, token_vault::proto::ConnectionStatus::Active as i32);
    assert!(connection.has_refresh_token);
    assert!(connection.refreshed_at.is_none());

    let status = api.complete_url(&late_callback).await.unwrap_err();
    assert_reason(&status, Code::Unavailable, "PROVIDER_UNAVAILABLE");

    server.restart().await;
    let refreshed = api.token("acme").await.unwrap();
    assert_ne!(refreshed.access_token, token.access_token);
    assert!(server.is_active(&POST_CLIENT, &refreshed.access_token).await);
    let events = server.events();
    assert_eq!(events.refreshes().len(), 1, "{events:#?}");
    events.assert_one_rotation_chain();
    assert!(events.grant_errors().is_empty(), "{events:#?}");

    // The exchange that met the outage used its state up (the vault cannot know whether the
    // server consumed the code), so that customer starts over, and then gets through.
    assert_reason(
        &api.complete_url(&late_callback).await.unwrap_err(),
        Code::FailedPrecondition,
        "INVALID_STATE",
    );
    assert_reason(
        &api.token("globex").await.unwrap_err(),
        Code::NotFound,
        "CONNECTION_NOT_FOUND",
    );
    api.connect_tenant("globex").await;
    assert!(api.token("globex").await.is_ok());
}
