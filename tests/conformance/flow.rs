//! The whole authorization-code flow through the vault and a real server, and the ways a
//! deployment can be set up for it: both client authentication methods, PKCE on and off, the
//! audience as RFC 8707 `resource`, and OpenID Connect's `offline_access`.

use std::time::Duration;

use tonic::Code;

use crate::{
    authserver::{AuthServer, ServerOptions, AUDIENCE, BASIC_CLIENT, PKCE_CLIENT, POST_CLIENT},
    browser::{Browser, Decision},
    harness::{assert_reason, query, until_refresh_due, Api, TestVault, VaultOptions, SHORT_TTL},
};

/// Begin, consent, complete with the callback's parameters one by one; the token the vault
/// hands out is live at the server, for the audience asked, with the scopes granted.
#[tokio::test]
async fn the_full_flow_with_the_callback_parameters() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());

    let begun = api.begin("acme").await;
    let url = query(&begun.authorization_url);
    assert_eq!(url["resource"], AUDIENCE);
    assert_eq!(url["scope"], "offline booking.read");
    assert_eq!(url["code_challenge_method"], "S256");
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    let params = query(&callback);
    assert_eq!(params["state"], begun.state);
    // RFC 9207: oidc-provider names itself on the callback, which Hydra does not; the vault
    // must take it in its stride.
    assert_eq!(params["iss"], server.issuer());

    let completed = api.complete_params(&callback).await.unwrap();
    assert_eq!(completed.tenant_id, "acme");
    assert_eq!(completed.provider, "understory");
    assert!(completed.refresh_token_issued);
    assert_eq!(completed.scopes, ["booking.read"]);

    let token = api.token("acme").await.unwrap();
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.scopes, ["booking.read"]);
    let introspection = server.introspect(&POST_CLIENT, &token.access_token).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["aud"], AUDIENCE);
    assert_eq!(introspection["scope"], "booking.read");
    assert_eq!(introspection["client_id"], POST_CLIENT.id);
    // The vault counts the lifetime from when it sent the exchange, so it may think the token
    // ends up to a second earlier than the server does, never later.
    let ahead = introspection["exp"].as_i64().unwrap() - token.expires_at.unwrap().seconds;
    assert!((0..=1).contains(&ahead), "server exp {introspection}, vault {token:?}");

    let connection = api.connection("acme").await.unwrap();
    assert_eq!(connection.status, token_vault::proto::ConnectionStatus::Active as i32);
    assert!(connection.has_refresh_token);
    // One exchange, no refresh: a fresh token is handed out as it is.
    let events = server.events();
    assert_eq!(events.code_exchanges().len(), 1);
    assert!(events.refreshes().is_empty());
    assert!(events.grant_errors().is_empty(), "{events:#?}");
}

/// The same with the whole callback URL, as a caller's redirect endpoint would forward it.
#[tokio::test]
async fn the_full_flow_with_the_callback_url() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(&server, &VaultOptions::default()).await;
    let api = Api(vault.client.clone());

    let completed = api.connect_tenant("globex").await;
    assert_eq!(completed.tenant_id, "globex");
    assert!(completed.refresh_token_issued);
    let token = api.token("globex").await.unwrap();
    assert!(server.is_active(&POST_CLIENT, &token.access_token).await);
    // Asked again, the same token: nothing is refreshed on a whim.
    assert_eq!(api.token("globex").await.unwrap().access_token, token.access_token);
    assert!(server.events().refreshes().is_empty());
}

/// Connects a tenant with `opts`, refreshes once, and checks what the server saw: the auth
/// method of every token request, whether PKCE was used, and a live token for the audience.
/// Returns the vault: dropping it drops its database, which blocks, and must not hold up the
/// other cases running beside it while their short-lived tokens tick.
async fn connect_and_refresh(server: &AuthServer, opts: VaultOptions, tenant: &str) -> TestVault {
    let vault = TestVault::start(server, &opts).await;
    let api = Api(vault.client.clone());
    let begun = api.begin(tenant).await;
    assert_eq!(
        query(&begun.authorization_url).contains_key("code_challenge"),
        opts.pkce
    );
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    assert!(api.complete_url(&callback).await.unwrap().refresh_token_issued);
    let first = api.token(tenant).await.unwrap();
    until_refresh_due(&first, Duration::from_secs(SHORT_TTL)).await;
    let second = api.token(tenant).await.unwrap();
    assert_ne!(second.access_token, first.access_token, "the token was refreshed");
    let introspection = server.introspect(&opts.client, &second.access_token).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["aud"], AUDIENCE);
    assert_eq!(introspection["client_id"], opts.client.id);
    vault
}

#[tokio::test]
async fn client_secret_post_and_client_secret_basic_with_and_without_pkce() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let cases = [
        (POST_CLIENT, true, "post-pkce"),
        (POST_CLIENT, false, "post-plain"),
        (BASIC_CLIENT, true, "basic-pkce"),
        (BASIC_CLIENT, false, "basic-plain"),
    ];
    let _vaults = futures::future::join_all(cases.iter().map(|&(client, pkce, tenant)| {
        let opts = VaultOptions {
            pkce,
            ..VaultOptions::for_client(client)
        };
        connect_and_refresh(&server, opts, tenant)
    }))
    .await;

    let events = server.events();
    assert!(events.grant_errors().is_empty(), "{events:#?}");
    for (client, pkce, _) in cases {
        let of_client = |grant_type: &str| {
            events
                .grants(grant_type)
                .into_iter()
                .filter(|e| e["client_id"] == client.id)
                .cloned()
                .collect::<Vec<_>>()
        };
        let exchanges = of_client("authorization_code");
        let refreshes = of_client("refresh_token");
        let with_pkce: Vec<_> = exchanges.iter().filter(|e| e["pkce"] == pkce).collect();
        assert_eq!(with_pkce.len(), 1, "{client:?} pkce={pkce}: {exchanges:#?}");
        assert_eq!(refreshes.len(), 2, "{client:?}: {refreshes:#?}");
        for e in exchanges.iter().chain(refreshes.iter()) {
            assert_eq!(e["auth_method"], client.auth_method, "{e}");
        }
    }
}

/// The server holds one auth method per client, as Hydra does: a vault configured with the
/// other one is refused at the exchange, which is an operator's problem, said as such.
#[tokio::test]
async fn the_wrong_client_authentication_method_is_reported_as_a_rejected_client() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let vault = TestVault::start(
        &server,
        &VaultOptions {
            auth_method: "client_secret_basic",
            ..VaultOptions::for_client(POST_CLIENT)
        },
    )
    .await;
    let api = Api(vault.client.clone());
    let begun = api.begin("initech").await;
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    let status = api.complete_url(&callback).await.unwrap_err();
    assert_reason(&status, Code::Internal, "PROVIDER_REJECTED_CLIENT");
    assert!(!status.message().contains(POST_CLIENT.secret));
    assert_reason(
        &api.token("initech").await.unwrap_err(),
        Code::NotFound,
        "CONNECTION_NOT_FOUND",
    );
    let errors = server.events().grant_errors().into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["error"], "invalid_client");
}

/// A server that requires PKCE refuses a vault with PKCE off on the callback itself, and
/// accepts the same client with PKCE on: the challenge the vault sends is really checked.
#[tokio::test]
async fn a_server_that_requires_pkce_gets_it() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let without = TestVault::start(
        &server,
        &VaultOptions {
            pkce: false,
            ..VaultOptions::for_client(PKCE_CLIENT)
        },
    )
    .await;
    let api = Api(without.client.clone());
    let begun = api.begin("hooli").await;
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    assert_eq!(query(&callback)["error"], "invalid_request");
    let status = api.complete_url(&callback).await.unwrap_err();
    let metadata = assert_reason(&status, Code::FailedPrecondition, "AUTHORIZATION_DENIED");
    assert_eq!(metadata["error"], "invalid_request");
    assert!(metadata["error_description"].contains("PKCE"), "{metadata:?}");

    let with = TestVault::start(&server, &VaultOptions::for_client(PKCE_CLIENT)).await;
    let api = Api(with.client.clone());
    api.connect_tenant("hooli").await;
    let token = api.token("hooli").await.unwrap();
    assert!(server.is_active(&PKCE_CLIENT, &token.access_token).await);
    assert_eq!(server.events().code_exchanges()[0]["pkce"], true);
}

/// The OpenID Connect way to a refresh token: `offline_access`, which such a server grants only
/// with `prompt=consent`. With `extra_authorization_params` the vault gets one; without, the
/// vault says so at once and asks for a new authorization once the token expires.
#[tokio::test]
async fn offline_access_needs_prompt_consent_and_the_vault_says_when_it_is_missing() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let oidc = |prompt_consent| VaultOptions {
        offline_scope: Some("offline_access"),
        prompt_consent,
        ..VaultOptions::default()
    };
    let with_prompt = TestVault::start(&server, &oidc(true)).await;
    let without_prompt = TestVault::start(&server, &oidc(false)).await;
    let (good, bad) = (Api(with_prompt.client.clone()), Api(without_prompt.client.clone()));

    let begun = good.begin("umbrella").await;
    let url = query(&begun.authorization_url);
    assert_eq!(url["scope"], "offline_access booking.read");
    assert_eq!(url["prompt"], "consent");
    let callback = Browser::new()
        .authorize(&begun.authorization_url, Decision::Allow)
        .await;
    assert!(good.complete_url(&callback).await.unwrap().refresh_token_issued);

    let completed = bad.connect_tenant("umbrella").await;
    assert!(
        !completed.refresh_token_issued,
        "the server drops offline_access without prompt=consent"
    );

    let (first_good, first_bad) = (
        good.token("umbrella").await.unwrap(),
        bad.token("umbrella").await.unwrap(),
    );
    until_refresh_due(&first_good, Duration::from_secs(SHORT_TTL)).await;
    let refreshed = good.token("umbrella").await.unwrap();
    assert_ne!(refreshed.access_token, first_good.access_token);
    assert!(server.is_active(&POST_CLIENT, &refreshed.access_token).await);

    until_refresh_due(&first_bad, Duration::from_secs(SHORT_TTL)).await;
    let status = bad.token("umbrella").await.unwrap_err();
    let metadata = assert_reason(&status, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(metadata["status_reason"], "no_refresh_token");
    assert_eq!(server.events().refreshes().len(), 1);
}
