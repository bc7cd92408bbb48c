//! Flows that must fail, and fail with the documented reason, leaving nothing stored: a
//! customer who denies consent, a code used twice, an expired code, a code delivered with
//! another flow's state, and states that are unknown or already used.

use std::time::Duration;

use tonic::Code;

use crate::{
    authserver::{AuthServer, ServerOptions, POST_CLIENT},
    browser::{Browser, Decision},
    harness::{assert_reason, query, Api, TestVault, VaultOptions},
};

async fn assert_not_connected(api: &Api, tenant: &str) {
    assert_reason(
        &api.token(tenant).await.unwrap_err(),
        Code::NotFound,
        "CONNECTION_NOT_FOUND",
    );
    assert_reason(
        &api.connection(tenant).await.unwrap_err(),
        Code::NotFound,
        "CONNECTION_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_customer_who_denies_consent_gets_authorization_denied() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());

    let begun = api.begin("acme").await;
    let callback = Browser::new().authorize(&begun.authorization_url, Decision::Deny).await;
    assert_eq!(query(&callback)["error"], "access_denied");
    let status = api.complete_url(&callback).await.unwrap_err();
    let metadata = assert_reason(&status, Code::FailedPrecondition, "AUTHORIZATION_DENIED");
    assert_eq!(metadata["error"], "access_denied");
    assert_eq!(metadata["error_description"], "End-User aborted interaction");
    assert_not_connected(&api, "acme").await;
    assert!(server.events().code_exchanges().is_empty());

    // The denial used the state up; the customer can start over and allow.
    assert_reason(
        &api.complete_params(&callback).await.unwrap_err(),
        Code::FailedPrecondition,
        "INVALID_STATE",
    );
    api.connect_tenant("acme").await;
    assert!(api.token("acme").await.is_ok());
}

/// The vault never sends a code twice itself (a state is single use), but a code can reach it
/// twice, e.g. a callback replayed into another flow. With PKCE off nothing binds the code to
/// its flow, so the server sees the replay: `invalid_grant`, and, as at Hydra, the replay
/// revokes what the code issued the first time.
#[tokio::test]
async fn a_code_used_twice_is_an_invalid_grant_and_revokes_what_it_issued() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(
        &server,
        &VaultOptions {
            pkce: false,
            ..VaultOptions::default()
        },
    )
    .await;
    let api = Api(vault.client.clone());

    let first = api.begin("acme").await;
    let callback = Browser::new()
        .authorize(&first.authorization_url, Decision::Allow)
        .await;
    api.complete_url(&callback).await.unwrap();
    let token = api.token("acme").await.unwrap();
    assert!(server.is_active(&POST_CLIENT, &token.access_token).await);

    let other = api.begin("evil-corp").await;
    let replay = api
        .complete(token_vault::proto::CompleteAuthorizationRequest {
            state: other.state,
            code: query(&callback)["code"].clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&replay, Code::FailedPrecondition, "INVALID_GRANT");
    assert!(!replay.message().contains(&query(&callback)["code"]));
    assert_not_connected(&api, "evil-corp").await;

    let events = server.events();
    assert_eq!(events.grant_errors().len(), 1, "{events:#?}");
    assert_eq!(events.grant_errors()[0]["error"], "invalid_grant");
    assert_eq!(
        events.grant_errors()[0]["error_detail"],
        "authorization code already consumed"
    );
    assert_eq!(events.named("grant.revoked").len(), 1, "{events:#?}");
    assert!(!server.is_active(&POST_CLIENT, &token.access_token).await);
}

/// With PKCE (the default) a code is bound to the flow that asked for it: delivered with
/// another flow's state, the vault presents that flow's verifier and the server refuses. The
/// flow the code belongs to is untouched and still completes.
#[tokio::test]
async fn a_code_delivered_with_another_flows_state_is_refused() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());

    let victim = api.begin("acme").await;
    let attacker = api.begin("evil-corp").await;
    let callback = Browser::new()
        .authorize(&victim.authorization_url, Decision::Allow)
        .await;
    let code = query(&callback)["code"].clone();
    let status = api
        .complete(token_vault::proto::CompleteAuthorizationRequest {
            state: attacker.state.clone(),
            code: code.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&status, Code::FailedPrecondition, "INVALID_GRANT");
    assert_not_connected(&api, "evil-corp").await;
    let errors = server.events().grant_errors().into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"], "invalid_grant");
    assert_eq!(errors[0]["error_detail"], "code_verifier does not match code_challenge");

    // The attacker's state is spent; the victim's flow goes on.
    assert_reason(
        &api.complete(token_vault::proto::CompleteAuthorizationRequest {
            state: attacker.state,
            code: code.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::FailedPrecondition,
        "INVALID_STATE",
    );
    assert_eq!(api.complete_url(&callback).await.unwrap().tenant_id, "acme");
    assert!(api.token("acme").await.is_ok());
}

#[tokio::test]
async fn an_expired_code_is_an_invalid_grant() {
    let server = AuthServer::start(ServerOptions {
        code_ttl: 1,
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());

    let begun = api.begin("acme").await;
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    // The server counts whole seconds from the second the code was issued in, so a 1 s code
    // has expired a second after the redirect at the latest.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = api.complete_url(&callback).await.unwrap_err();
    assert_reason(&status, Code::FailedPrecondition, "INVALID_GRANT");
    assert_not_connected(&api, "acme").await;
    let errors = server.events().grant_errors().into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"], "invalid_grant");
    assert_eq!(errors[0]["error_detail"], "authorization code is expired");
}

#[tokio::test]
async fn unknown_and_used_states_are_invalid_states() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());

    let begun = api.begin("acme").await;
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    // A callback whose state the vault never issued (another deployment's, a forgery).
    let forged = callback.replace(&begun.state, "a-state-this-vault-never-issued");
    assert_reason(
        &api.complete_url(&forged).await.unwrap_err(),
        Code::FailedPrecondition,
        "INVALID_STATE",
    );
    assert!(server.events().grant_errors().is_empty(), "the server was never asked");

    api.complete_url(&callback).await.unwrap();
    // The same callback again, e.g. the customer reloads the page.
    assert_reason(
        &api.complete_url(&callback).await.unwrap_err(),
        Code::FailedPrecondition,
        "INVALID_STATE",
    );
    assert_eq!(server.events().code_exchanges().len(), 1);
    assert!(server.events().grant_errors().is_empty());
}
