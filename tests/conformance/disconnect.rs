//! DeleteConnection against the real server: the vault revokes the grant's current refresh
//! token at the RFC 7009 endpoint (the server logs it and revokes the whole grant, as Hydra
//! does), keeps no ciphertext, and the refresh token it held no longer works at the server.

use std::time::Duration;

use token_vault::{
    crypto::{Aad, Purpose},
    proto::{ConnectionStatus, Revocation},
};
use tonic::Code;

use crate::{
    authserver::{AuthServer, ServerOptions, POST_CLIENT},
    harness::{assert_reason, until_refresh_due, Api, TestVault, VaultOptions, SHORT_TTL},
    test_db::{on_rows, Rows},
};

#[tokio::test]
async fn delete_revokes_the_grant_at_the_server_and_its_refresh_token_stops_working() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());
    api.connect_tenant("acme").await;
    // One refresh first, so that the token to revoke is the rotated one, not the exchange's.
    let first = api.token("acme").await.unwrap();
    until_refresh_due(&first, Duration::from_secs(SHORT_TTL)).await;
    let access = api.token("acme").await.unwrap();
    assert_ne!(access.access_token, first.access_token);
    let events = server.events();
    assert_eq!(events.refreshes().len(), 1, "{events:#?}");
    let newest = events.refreshes()[0]["refresh_token_issued"].clone();
    assert!(newest.is_string(), "{events:#?}");

    // The refresh token the vault holds, opened as the vault would: after the delete the test
    // presents it itself.
    let rows = Rows::connect(vault.database_url()).await;
    let (generation, sealed): (i64, Vec<u8>) = on_rows!(rows, |pool| sqlx::query_as(
        "SELECT generation, token FROM refresh_tokens WHERE superseded_at IS NULL AND token IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap());
    let aad = Aad::for_generation(Purpose::RefreshToken, "acme", "understory", generation);
    let refresh_token =
        secrecy::ExposeSecret::expose_secret(&vault.keyring.open_str(&aad, &sealed).unwrap()).to_owned();

    let live = server.introspect(&POST_CLIENT, &refresh_token).await;
    assert_eq!(live["active"], true, "the vault holds a live refresh token: {live}");

    let deleted = api.delete("acme").await.unwrap();
    assert_eq!(deleted.revocation(), Revocation::Revoked, "{deleted:?}");

    // The server's log: one revocation, of the newest refresh token, by the vault's client,
    // and the grant revoked with it.
    let events = server.events();
    let revocations = events.named("revocation.success");
    assert_eq!(revocations.len(), 1, "{events:#?}");
    assert_eq!(revocations[0]["kind"], "RefreshToken");
    assert_eq!(revocations[0]["token"], newest, "the newest refresh token is revoked");
    assert_eq!(revocations[0]["client_id"], POST_CLIENT.id);
    assert_eq!(revocations[0]["token_type_hint"], "refresh_token");
    let revoked = events.named("grant.revoked");
    assert_eq!(revoked.len(), 1, "{events:#?}");
    assert_eq!(revoked[0]["grant_id"], revocations[0]["grant_id"]);
    assert!(events.named("revocation.error").is_empty(), "{events:#?}");

    // The old refresh token no longer works, and the access token the vault handed out is dead.
    let (status, body) = server.refresh_directly(&POST_CLIENT, &refresh_token).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert_eq!(server.introspect(&POST_CLIENT, &refresh_token).await["active"], false);
    assert!(!server.is_active(&POST_CLIENT, &access.access_token).await);

    // Nothing sealed is left; the vault says disconnected.
    let left: i64 = on_rows!(rows, |pool| sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM connections WHERE access_token IS NOT NULL)
              + (SELECT count(*) FROM refresh_tokens WHERE token IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(left, 0);
    let connection = api.connection("acme").await.unwrap();
    assert_eq!(connection.status(), ConnectionStatus::Disconnected);
    assert_reason(
        &api.token("acme").await.unwrap_err(),
        Code::FailedPrecondition,
        "CONNECTION_DISCONNECTED",
    );

    // Again: nothing more reaches the server.
    assert_eq!(
        api.delete("acme").await.unwrap().revocation(),
        Revocation::AlreadyDisconnected
    );
    assert_eq!(server.events().named("revocation.success").len(), 1);

    // A new authorization connects the tenant again, with a new grant.
    api.connect_tenant("acme").await;
    let restored = api.token("acme").await.unwrap();
    assert!(server.is_active(&POST_CLIENT, &restored.access_token).await);
    assert_eq!(api.connection("acme").await.unwrap().status(), ConnectionStatus::Active);
}
