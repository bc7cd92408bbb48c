//! A grant revoked at the server (the customer withdrew consent): the vault learns it at the
//! next refresh, says REAUTHORIZATION_REQUIRED, and a new authorization restores the tenant.

use std::time::Duration;

use tonic::Code;

use crate::{
    authserver::{AuthServer, ServerOptions, POST_CLIENT},
    harness::{assert_reason, until_refresh_due, Api, TestVault, VaultOptions, SHORT_TTL},
};

#[tokio::test]
async fn a_grant_revoked_at_the_server_needs_a_new_authorization_which_restores_it() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());
    api.connect_tenant("acme").await;
    let token = api.token("acme").await.unwrap();

    // RFC 7009 with the access token the vault handed out; the server revokes the whole grant,
    // refresh token included, as Hydra does.
    server.revoke(&POST_CLIENT, &token.access_token).await;
    assert!(!server.is_active(&POST_CLIENT, &token.access_token).await);
    assert_eq!(server.events().named("grant.revoked").len(), 1);

    // The vault cannot know before its next refresh: until then it hands out the revoked
    // token (callers have no way to report a rejected token), so wait for that refresh.
    until_refresh_due(&token, Duration::from_secs(SHORT_TTL)).await;
    let status = api.token("acme").await.unwrap_err();
    let metadata = assert_reason(&status, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(metadata["status_reason"], "invalid_grant");
    let connection = api.connection("acme").await.unwrap();
    assert_eq!(
        connection.status,
        token_vault::proto::ConnectionStatus::ReauthorizationRequired as i32
    );
    assert_eq!(connection.status_reason, "invalid_grant");
    // Marked once, then answered from the database without asking the server again.
    assert_reason(
        &api.token("acme").await.unwrap_err(),
        Code::FailedPrecondition,
        "REAUTHORIZATION_REQUIRED",
    );
    let events = server.events();
    assert_eq!(events.grant_errors().len(), 1, "{events:#?}");
    assert_eq!(events.grant_errors()[0]["grant_type"], "refresh_token");
    assert_eq!(events.grant_errors()[0]["error"], "invalid_grant");

    api.connect_tenant("acme").await;
    let restored = api.token("acme").await.unwrap();
    assert_ne!(restored.access_token, token.access_token);
    assert!(server.is_active(&POST_CLIENT, &restored.access_token).await);
    let connection = api.connection("acme").await.unwrap();
    assert_eq!(connection.status, token_vault::proto::ConnectionStatus::Active as i32);
    assert!(connection.has_refresh_token);

    // And it refreshes again, from the new grant's refresh token.
    until_refresh_due(&restored, Duration::from_secs(SHORT_TTL)).await;
    let refreshed = api.token("acme").await.unwrap();
    assert_ne!(refreshed.access_token, restored.access_token);
    assert!(server.is_active(&POST_CLIENT, &refreshed.access_token).await);
    assert_eq!(server.events().refreshes().len(), 1);
}
