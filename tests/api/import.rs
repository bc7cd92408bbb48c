//! ImportConnection: a refresh token another system holds becomes a connection, validated with
//! one refresh unless told not to, and from then on refreshed and rotated like any other. Its
//! own permission, which `*` does not grant.

use std::time::Duration;

use token_vault::{auth::hash_token, proto};
use tonic::Code;

use crate::{
    callers::bearer_client,
    helpers::on_rows,
    helpers::{assert_bad_field, assert_reason, dump_all_tables, spawn_app, spawn_app_with, TestApp, TestOptions},
};

fn import(tenant: &str, refresh_token: &str) -> proto::ImportConnectionRequest {
    proto::ImportConnectionRequest {
        tenant_id: tenant.into(),
        refresh_token: refresh_token.into(),
        ..Default::default()
    }
}

async fn call(
    app: &TestApp,
    request: proto::ImportConnectionRequest,
) -> Result<proto::ImportConnectionResponse, tonic::Status> {
    app.client
        .clone()
        .import_connection(request)
        .await
        .map(|r| r.into_inner())
}

fn presented_refresh_tokens(app: &TestApp) -> Vec<String> {
    app.provider
        .requests()
        .iter()
        .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .map(|r| r.form["refresh_token"].clone())
        .collect()
}

async fn events(app: &TestApp) -> Vec<(String, String, i64)> {
    on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT kind, status, generation FROM connection_events ORDER BY id"
    )
    .fetch_all(pool)
    .await
    .unwrap())
}

#[tokio::test]
async fn import_then_refresh_works() {
    // Two-second access tokens: the margin (capped at half the lifetime) makes one due after a
    // second, so the test can see the connection refreshed after the import.
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await;
    let imported = app.provider.mint_refresh_token();

    let answer = call(&app, import("acme", &imported)).await.unwrap();
    assert!(answer.validated);
    let connection = answer.connection.unwrap();
    assert_eq!(connection.status(), proto::ConnectionStatus::Active);
    assert!(connection.has_refresh_token);
    assert!(connection.refreshed_at.is_some(), "validated by a refresh");
    assert!(
        connection.refresh_token_expires_at.is_some(),
        "the rotated token's lifetime is known"
    );
    assert_eq!(presented_refresh_tokens(&app), std::slice::from_ref(&imported));

    // The validation's token is served without another request.
    let first = app.get_token("acme").await.unwrap().access_token;
    assert_eq!(first, app.provider.newest_access_token());
    assert_eq!(app.provider.stats().refresh_requests, 1);

    // Later refreshes rotate as usual: each presents the newest refresh token, once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = app.get_token("acme").await.unwrap().access_token;
    assert_ne!(second, first);
    let issued = app.provider.state.lock().unwrap().issued_refresh_tokens.clone();
    // issued[0] is the imported one (minted by the provider for the other system).
    assert_eq!(presented_refresh_tokens(&app), [imported.clone(), issued[1].clone()]);
    let stats = app.provider.stats();
    assert_eq!(
        (stats.refreshes_ok, stats.reuse_detected, stats.code_exchanges),
        (2, 0, 0)
    );

    let rows: Vec<(i64, String, bool)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT generation, source, superseded_at IS NOT NULL FROM refresh_tokens ORDER BY generation"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(
        rows,
        [
            (1, "import".into(), true),
            (2, "refresh".into(), true),
            (3, "refresh".into(), false)
        ]
    );
    assert_eq!(events(&app).await, [("imported".into(), "active".into(), 1)]);

    // Nothing the provider issued, the imported token included, is stored in plaintext.
    let tables = dump_all_tables(&app.rows).await;
    for secret in app.provider.issued_secrets() {
        assert!(!tables.contains(&secret), "a token is stored in plaintext");
    }
}

#[tokio::test]
async fn skip_validation_stores_the_tokens_without_asking_the_provider() {
    let app = spawn_app().await;
    let imported = app.provider.mint_refresh_token();
    let expires_at = time::OffsetDateTime::now_utc() + time::Duration::minutes(30);
    let answer = call(
        &app,
        proto::ImportConnectionRequest {
            access_token: "at_from_the_old_system".into(),
            access_token_expires_at: Some(prost_types::Timestamp {
                seconds: expires_at.unix_timestamp(),
                nanos: 0,
            }),
            scopes: vec!["offline".into(), "booking.read".into()],
            skip_validation: true,
            ..import("acme", &imported)
        },
    )
    .await
    .unwrap();
    assert!(!answer.validated);
    let connection = answer.connection.unwrap();
    assert_eq!(connection.scopes, ["offline", "booking.read"]);
    assert_eq!(
        connection.refresh_token_expires_at, None,
        "an imported token's age is unknown"
    );
    assert_eq!(
        connection.keepalive_due_at.map(|t| t.seconds),
        Some(expires_at.unix_timestamp()),
        "the keep-alive renews it once the imported access token has expired"
    );
    assert_eq!(app.provider.stats().token_requests, 0);

    // The imported access token is served until it expires.
    assert_eq!(
        app.get_token("acme").await.unwrap().access_token,
        "at_from_the_old_system"
    );
    assert_eq!(app.provider.stats().token_requests, 0);

    // Without an access token, the first GetAccessToken refreshes with the imported one.
    let other = app.provider.mint_refresh_token();
    let answer = call(
        &app,
        proto::ImportConnectionRequest {
            skip_validation: true,
            ..import("globex", &other)
        },
    )
    .await
    .unwrap();
    assert!(!answer.validated);
    assert_eq!(app.provider.stats().token_requests, 0);
    let token = app.get_token("globex").await.unwrap().access_token;
    assert_eq!(token, app.provider.newest_access_token());
    assert_eq!(presented_refresh_tokens(&app), [other]);
}

#[tokio::test]
async fn an_invalid_imported_token_needs_a_new_authorization() {
    let app = spawn_app().await;
    let err = call(&app, import("acme", "ory_rt_never_issued_by_the_provider"))
        .await
        .unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "invalid_grant");
    assert_eq!(app.provider.stats().refresh_requests, 1);
    // The import stays on record, marked.
    assert_eq!(
        events(&app).await,
        [
            ("imported".into(), "active".into(), 1),
            ("reauthorization_required".into(), "reauthorization_required".into(), 1)
        ]
    );
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");

    // A connection that needs a new authorization is replaced by an import without asking.
    let valid = app.provider.mint_refresh_token();
    let answer = call(&app, import("acme", &valid)).await.unwrap();
    assert!(answer.validated);
    assert_eq!(answer.connection.unwrap().status(), proto::ConnectionStatus::Active);
    assert!(app.get_token("acme").await.is_ok());
    let generation: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT generation FROM connections"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(generation, 3, "imported at 2, refreshed to 3");
}

#[tokio::test]
async fn an_active_connection_is_replaced_only_when_asked() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let authorized = app.get_token("acme").await.unwrap().access_token;

    let imported = app.provider.mint_refresh_token();
    let err = call(&app, import("acme", &imported)).await.unwrap_err();
    assert_reason(&err, Code::AlreadyExists, "CONNECTION_EXISTS");
    assert_eq!(app.provider.stats().refresh_requests, 0, "nothing was presented");
    assert_eq!(app.get_token("acme").await.unwrap().access_token, authorized);

    let answer = call(
        &app,
        proto::ImportConnectionRequest {
            replace_existing: true,
            ..import("acme", &imported)
        },
    )
    .await
    .unwrap();
    assert!(answer.validated);
    let token = app.get_token("acme").await.unwrap().access_token;
    assert_ne!(token, authorized);
    assert_eq!(token, app.provider.newest_access_token());
    assert_eq!(presented_refresh_tokens(&app), [imported]);
    let rows: Vec<(i64, String, bool)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT generation, source, superseded_at IS NOT NULL FROM refresh_tokens ORDER BY generation"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(
        rows,
        [
            (1, "authorization_code".into(), true),
            (2, "import".into(), true),
            (3, "refresh".into(), false)
        ]
    );
}

#[tokio::test]
async fn bad_imports_name_the_field() {
    let app = spawn_app().await;
    let err = call(&app, import("acme", "")).await.unwrap_err();
    assert_bad_field(&err, "refresh_token");
    let err = call(&app, import("acme", &"x".repeat(9000))).await.unwrap_err();
    assert_bad_field(&err, "refresh_token");
    let err = call(
        &app,
        proto::ImportConnectionRequest {
            access_token: "at_secret_value".into(),
            ..import("acme", "ory_rt_secret_value")
        },
    )
    .await
    .unwrap_err();
    assert_bad_field(&err, "access_token_expires_at");
    assert!(!format!("{err:?}").contains("secret_value"), "no token in the answer");
    let err = call(
        &app,
        proto::ImportConnectionRequest {
            access_token_expires_at: Some(prost_types::Timestamp::default()),
            ..import("acme", "ory_rt_x")
        },
    )
    .await
    .unwrap_err();
    assert_bad_field(&err, "access_token_expires_at");
    let err = call(
        &app,
        proto::ImportConnectionRequest {
            scopes: vec!["not a scope".into()],
            ..import("acme", "ory_rt_x")
        },
    )
    .await
    .unwrap_err();
    assert_bad_field(&err, "scopes");
    let err = call(&app, import("", "ory_rt_x")).await.unwrap_err();
    assert_bad_field(&err, "tenant_id");
    assert_eq!(app.provider.stats().token_requests, 0);
    let connections: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar("SELECT count(*) FROM connections")
        .fetch_one(pool)
        .await
        .unwrap());
    assert_eq!(connections, 0);
}

#[tokio::test]
async fn import_is_granted_by_name_only() {
    let hex = |t: &str| hash_token(t).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            r#"
[auth]
mode = "enforce"
allow_bearer_without_tls = true
[[auth.callers]]
name = "everything"
bearer_token_sha256 = ["{all}"]
rpcs = ["*"]
providers = ["*"]
tenants = ["*"]
[[auth.callers]]
name = "migration"
bearer_token_sha256 = ["{migration}"]
rpcs = ["ImportConnection", "GetConnection"]
providers = ["understory"]
tenants = ["migrated-*"]
"#,
            all = hex("token-everything"),
            migration = hex("token-migration"),
        ),
        ..Default::default()
    })
    .await;
    let imported = app.provider.mint_refresh_token();

    let mut everything = bearer_client(app.addr, Some("token-everything")).await;
    let err = everything
        .import_connection(import("migrated-1", &imported))
        .await
        .unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");

    let mut migration = bearer_client(app.addr, Some("token-migration")).await;
    // Its tenants are still its policy's.
    let err = migration
        .import_connection(import("elsewhere", &imported))
        .await
        .unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    assert_eq!(app.provider.stats().token_requests, 0);

    let answer = migration
        .import_connection(import("migrated-1", &imported))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.validated);
    // The `*` caller uses the imported connection like any other.
    let token = everything
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "migrated-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert_eq!(token, app.provider.newest_access_token());

    let mut app = app;
    app.shut_down().await;
    let audit: Vec<(String, String, Option<String>, Option<String>)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT caller, outcome, tenant_id, detail FROM audit_events WHERE event = 'import_connection' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(
        audit,
        [(
            "migration".into(),
            "ok".into(),
            Some("migrated-1".into()),
            Some("generation 1, validated".into())
        )]
    );
}

/// A connection whose refresh lease is held (a refresh in flight, perhaps an earlier import's
/// validation presenting this very token) is not replaced under it: clearing the lease would
/// let that refresh present the same token again after the import. The caller is told to retry.
#[tokio::test]
async fn an_import_never_replaces_a_connection_under_a_refresh_in_flight() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let lease = app.rows.sql(
        "UPDATE connections SET refresh_lease_holder = gen_random_uuid(), refresh_lease_until = now() + interval '1 minute'",
        "UPDATE connections SET refresh_lease_holder = randomblob(16),
                refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+60 seconds')",
    );
    on_rows!(app.rows, |pool| sqlx::query(lease)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let imported = app.provider.mint_refresh_token();
    let err = call(
        &app,
        proto::ImportConnectionRequest {
            replace_existing: true,
            ..import("acme", &imported)
        },
    )
    .await
    .unwrap_err();
    assert_reason(&err, Code::Unavailable, "CONNECTION_BUSY");
    assert_eq!(app.provider.stats().refresh_requests, 0, "nothing was presented");
    let sources: Vec<String> = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT source FROM refresh_tokens ORDER BY generation"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(sources, ["authorization_code"], "nothing was stored");
}
