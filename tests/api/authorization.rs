//! BeginAuthorization and CompleteAuthorization end to end.

use std::collections::HashMap;

use token_vault::proto;
use tonic::Code;

use crate::{
    helpers::on_rows,
    helpers::{assert_reason, dump_all_tables, spawn_app, spawn_app_with, TestOptions, REDIRECT_URI},
    provider::{ClientAuth, Fault},
};

fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

#[tokio::test]
async fn the_full_flow_connects_a_tenant_and_hands_out_its_token() {
    let app = spawn_app().await;
    let begun = app.begin("acme").await;

    let q = query(&begun.authorization_url);
    assert!(begun
        .authorization_url
        .starts_with(&format!("{}/oauth2/auth?", app.provider.uri())));
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "test-client");
    assert_eq!(q["redirect_uri"], REDIRECT_URI);
    assert_eq!(q["scope"], "offline booking.read");
    assert_eq!(q["audience"], "https://api.understory.io");
    assert_eq!(q["state"], begun.state);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(begun.state.len() >= 43, "state carries at least 32 random bytes");
    assert_eq!(begun.scopes, ["offline", "booking.read"]);

    let code = app.provider.consent(&begun.authorization_url);
    let done = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state.clone(),
            code: code.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.tenant_id, "acme");
    assert_eq!(done.provider, "understory");
    assert!(done.refresh_token_issued);
    assert_eq!(done.scopes, ["offline", "booking.read"]);

    // The exchange was what the guide shows: form POST with client_secret_post, User-Agent,
    // the redirect URI, and the PKCE verifier matching the challenge (checked by the provider).
    let requests = app.provider.requests();
    assert_eq!(requests.len(), 1);
    let exchange = &requests[0];
    assert_eq!(exchange.form["grant_type"], "authorization_code");
    assert_eq!(exchange.form["code"], code);
    assert_eq!(exchange.form["redirect_uri"], REDIRECT_URI);
    assert_eq!(exchange.form["client_id"], "test-client");
    assert_eq!(exchange.form["client_secret"], app.client_secret);
    assert_eq!(exchange.user_agent.as_deref(), Some("Acme/VaultTests"));
    assert!(exchange.authorization.is_none());
    let verifier = &exchange.form["code_verifier"];
    let challenge = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    assert_eq!(challenge, q["code_challenge"]);

    let token = app.get_token("acme").await.unwrap();
    assert_eq!(
        token.access_token,
        app.provider.state.lock().unwrap().issued_access_tokens[0]
    );
    assert_eq!(token.token_type, "bearer");
    assert_eq!(token.scopes, ["offline", "booking.read"]);
    let expires = token.expires_at.unwrap().seconds - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((3590..=3600).contains(&expires), "expires in {expires}s");
    // A valid token is served without another provider request.
    assert_eq!(app.provider.stats().token_requests, 1);
}

#[tokio::test]
async fn the_whole_callback_url_can_be_forwarded() {
    let app = spawn_app().await;
    let begun = app.begin("acme").await;
    let code = app.provider.consent(&begun.authorization_url);
    let callback_url = format!(
        "{REDIRECT_URI}?code={code}&state={}&scope=offline+booking.read",
        begun.state
    );
    let done = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            callback_url,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.tenant_id, "acme");
    assert!(app.get_token("acme").await.is_ok());
}

#[tokio::test]
async fn client_secret_basic_sends_credentials_only_in_the_header() {
    let app = spawn_app_with(TestOptions {
        auth: ClientAuth::Basic,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let exchange = &app.provider.requests()[0];
    assert!(exchange.authorization.as_deref().unwrap().starts_with("Basic "));
    assert!(!exchange.form.contains_key("client_secret"));
    assert!(app.get_token("acme").await.is_ok());
}

#[tokio::test]
async fn pkce_can_be_switched_off_per_provider() {
    let app = spawn_app_with(TestOptions {
        pkce: false,
        ..Default::default()
    })
    .await;
    let begun = app.begin("acme").await;
    let q = query(&begun.authorization_url);
    assert!(!q.contains_key("code_challenge"));
    let code = app.provider.consent(&begun.authorization_url);
    app.client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!app.provider.requests()[0].form.contains_key("code_verifier"));
}

#[tokio::test]
async fn a_state_is_single_use() {
    let app = spawn_app().await;
    let begun = app.begin("acme").await;
    let code = app.provider.consent(&begun.authorization_url);
    let request = proto::CompleteAuthorizationRequest {
        state: begun.state.clone(),
        code,
        ..Default::default()
    };
    app.client
        .clone()
        .complete_authorization(request.clone())
        .await
        .unwrap();
    let again = app.client.clone().complete_authorization(request).await.unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, "INVALID_STATE");
    // The code was not presented twice.
    assert_eq!(app.provider.stats().code_exchanges, 1);
}

#[tokio::test]
async fn an_unknown_state_is_refused_without_calling_the_provider() {
    let app = spawn_app().await;
    let begun = app.begin("acme").await;
    let code = app.provider.consent(&begun.authorization_url);
    let err = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: format!("{}x", begun.state),
            code,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "INVALID_STATE");
    assert_eq!(app.provider.stats().token_requests, 0);
}

#[tokio::test]
async fn an_expired_state_is_refused() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[vault]\nstate_ttl = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    let begun = app.begin("acme").await;
    let code = app.provider.consent(&begun.authorization_url);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let err = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "INVALID_STATE");
    assert_eq!(app.provider.stats().token_requests, 0);
}

#[tokio::test]
async fn a_denial_on_the_callback_is_reported_and_stores_nothing() {
    let app = spawn_app().await;
    let begun = app.begin("acme").await;
    let err = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            callback_url: format!(
                "{REDIRECT_URI}?error=access_denied&error_description=The+user+denied+the+request&state={}",
                begun.state
            ),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "AUTHORIZATION_DENIED");
    assert_eq!(meta["error"], "access_denied");
    assert_eq!(meta["error_description"], "The user denied the request");
    let missing = app.get_token("acme").await.unwrap_err();
    assert_reason(&missing, Code::NotFound, "CONNECTION_NOT_FOUND");
    assert_eq!(app.provider.stats().token_requests, 0);
}

#[tokio::test]
async fn a_rejected_code_is_invalid_grant_and_stores_nothing() {
    let app = spawn_app().await;
    let begun = app.begin("acme").await;
    let err = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code: "a-code-the-provider-never-issued".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "INVALID_GRANT");
    assert!(!err.message().contains("a-code-the-provider-never-issued"));
    let missing = app.get_token("acme").await.unwrap_err();
    assert_reason(&missing, Code::NotFound, "CONNECTION_NOT_FOUND");
}

#[tokio::test]
async fn provider_failures_during_the_exchange_are_classified() {
    let app = spawn_app().await;
    for (fault, code, reason) in [
        (Fault::Answer(503, "{}"), Code::Unavailable, "PROVIDER_UNAVAILABLE"),
        (
            Fault::Slow(std::time::Duration::from_secs(3)),
            Code::Unavailable,
            "PROVIDER_UNAVAILABLE",
        ),
        (
            Fault::Answer(
                401,
                r#"{"error":"invalid_client","error_description":"Client authentication failed."}"#,
            ),
            Code::Internal,
            "PROVIDER_REJECTED_CLIENT",
        ),
        (
            Fault::Answer(200, r#"{"token_type":"bearer"}"#),
            Code::Internal,
            "PROVIDER_PROTOCOL_ERROR",
        ),
    ] {
        let begun = app.begin("acme").await;
        let code_value = app.provider.consent(&begun.authorization_url);
        app.provider.push_fault(fault.clone());
        let err = app
            .client
            .clone()
            .complete_authorization(proto::CompleteAuthorizationRequest {
                state: begun.state,
                code: code_value,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_reason(&err, code, reason);
        assert!(!err.message().contains(&app.client_secret));
    }
    assert_reason(
        &app.get_token("acme").await.unwrap_err(),
        Code::NotFound,
        "CONNECTION_NOT_FOUND",
    );
}

#[tokio::test]
async fn reauthorizing_replaces_the_grant_and_keeps_history() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let first = app.get_token("acme").await.unwrap().access_token;
    app.connect_tenant("acme").await;
    let second = app.get_token("acme").await.unwrap().access_token;
    assert_ne!(first, second);
    assert_eq!(second, app.provider.state.lock().unwrap().issued_access_tokens[1]);

    let history: Vec<(i64, String, bool)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT r.generation, r.source, r.superseded_at IS NOT NULL FROM refresh_tokens r \
         JOIN connections c ON c.id = r.connection_id WHERE c.tenant_id = 'acme' ORDER BY r.generation",
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(
        history,
        [
            (1, "authorization_code".into(), true),
            (2, "authorization_code".into(), false)
        ]
    );
}

#[tokio::test]
async fn the_database_holds_no_plaintext_secret() {
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    // Refresh once so rotated tokens are stored too.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.get_token("acme").await.unwrap();
    app.begin("pending-tenant").await;

    let dump = dump_all_tables(&app.rows).await;
    assert!(dump.contains("acme"), "the dump is readable");
    let secrets = app.provider.issued_secrets();
    assert!(secrets.len() >= 8, "{secrets:?}");
    for secret in secrets.iter().chain([&app.client_secret]) {
        assert!(
            !dump.contains(secret.as_str()),
            "plaintext secret found in the database"
        );
    }
    // The PKCE verifiers the vault sent are secrets too.
    for request in app.provider.requests() {
        if let Some(verifier) = request.form.get("code_verifier") {
            assert!(!dump.contains(verifier.as_str()));
        }
    }
}
