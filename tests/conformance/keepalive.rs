//! Keep-alive against a server whose refresh tokens really expire: a tenant nobody asks for is
//! still connected after several refresh-token lifetimes, because every replica's keeper
//! refreshes it before its refresh token's end; without the keeper the same wait kills it.

use std::time::Duration;

use tonic::Code;

use crate::{
    authserver::{AuthServer, ServerOptions},
    harness::{assert_reason, Api, TestVault, VaultOptions},
};

/// Refresh tokens live this long at the server; the vault is told so (oidc-provider does not
/// send `refresh_token_expires_in`).
const REFRESH_TTL: u64 = 6;
/// Access tokens live a little less, so the keep-alive's "wait for the token in circulation"
/// applies: due 3 s after issue, postponed to the access token's end at 4 s.
const ACCESS_TTL: u64 = 4;

async fn start(keeper: bool) -> (AuthServer, TestVault) {
    let server = AuthServer::start(ServerOptions {
        access_ttl: ACCESS_TTL,
        refresh_ttl: REFRESH_TTL,
        ..Default::default()
    })
    .await;
    let opts = VaultOptions {
        extra_toml: format!(
            r#"refresh_token_lifetime = "{REFRESH_TTL}s"
keepalive_before = "3s"
[keepalive]
enabled = {keeper}
interval = "250ms"
claim_ttl = "2s"
"#
        ),
        ..VaultOptions::default()
    };
    let vault = TestVault::start(&server, &opts).await;
    (server, vault)
}

#[tokio::test]
async fn an_idle_tenant_outlives_several_refresh_token_lifetimes() {
    let (server, vault) = start(true).await;
    let api = Api(vault.client.clone());
    api.connect_tenant("idle").await;

    // Nobody asks for the tenant for more than three refresh-token lifetimes.
    tokio::time::sleep(Duration::from_secs(3 * REFRESH_TTL + 3)).await;

    let events = server.events();
    assert!(
        events.refreshes().len() >= 3,
        "the keeper refreshed at least once per lifetime: {events:#?}"
    );
    assert!(events.grant_errors().is_empty(), "{events:#?}");
    // Each keep-alive presented the newest refresh token, and none twice.
    events.assert_one_rotation_chain();
    let token = api.token("idle").await.expect("the tenant is still connected");
    assert!(!token.access_token.is_empty());
    let connection = api.connection("idle").await.unwrap();
    assert_eq!(connection.status, token_vault::proto::ConnectionStatus::Active as i32);
    assert!(connection.keepalive_due_at.is_some());
    assert!(connection.refresh_token_expires_at.is_some());
}

#[tokio::test]
async fn without_the_keeper_the_same_wait_kills_the_tenant() {
    let (server, vault) = start(false).await;
    let api = Api(vault.client.clone());
    api.connect_tenant("idle").await;

    tokio::time::sleep(Duration::from_secs(REFRESH_TTL + 2)).await;

    assert!(server.events().refreshes().is_empty());
    let status = api.token("idle").await.unwrap_err();
    let metadata = assert_reason(&status, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(metadata["status_reason"], "invalid_grant");
}
