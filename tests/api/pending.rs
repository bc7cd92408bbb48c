//! Pending authorizations stay bounded: open states per tenant and provider are capped (the
//! oldest give way), used ones are deleted, expired ones are swept, and BeginAuthorization has
//! a rate per caller by default.

use std::time::{Duration, Instant};

use token_vault::proto;
use tonic::Code;

use crate::{
    callers::{bearer_client, callers_toml, BILLING_SPIFFE},
    helpers::on_rows,
    helpers::{assert_reason, spawn_app, spawn_app_with, TestApp, TestOptions},
};

/// The shipped default of `vault.max_open_states`.
const MAX_OPEN_STATES: i64 = 10;

async fn open_states(app: &TestApp, tenant: &str) -> i64 {
    let open = app.rows.sql(
        "SELECT count(*) FROM pending_authorizations WHERE tenant_id = $1 AND consumed_at IS NULL AND expires_at > now()",
        "SELECT count(*) FROM pending_authorizations WHERE tenant_id = $1 AND consumed_at IS NULL
            AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    );
    on_rows!(app.rows, |pool| sqlx::query_scalar(open)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap())
}

async fn rows(app: &TestApp, tenant: &str) -> i64 {
    on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM pending_authorizations WHERE tenant_id = $1"
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap())
}

async fn complete(app: &TestApp, begun: &proto::BeginAuthorizationResponse) -> Result<(), tonic::Status> {
    let code = app.provider.consent(&begun.authorization_url);
    app.client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state.clone(),
            code,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn open_states_per_tenant_are_capped_and_the_oldest_give_way() {
    let app = spawn_app().await;
    let mut begun = Vec::new();
    for _ in 0..15 {
        begun.push(app.begin("acme").await);
    }
    app.begin("globex").await;
    assert_eq!(open_states(&app, "acme").await, MAX_OPEN_STATES);
    assert_eq!(
        rows(&app, "acme").await,
        MAX_OPEN_STATES,
        "the oldest are deleted, not kept"
    );
    assert_eq!(open_states(&app, "globex").await, 1, "another tenant is not touched");

    // The five oldest are gone: their callback is refused before the provider is called.
    for old in &begun[..5] {
        let err = complete(&app, old).await.unwrap_err();
        assert_reason(&err, Code::FailedPrecondition, "INVALID_STATE");
    }
    assert_eq!(app.provider.stats().code_exchanges, 0);
    // The oldest kept and the newest still work.
    complete(&app, &begun[5])
        .await
        .expect("the oldest kept state completes");
    complete(&app, &begun[14]).await.expect("the newest state completes");
    assert!(app.get_token("acme").await.is_ok());

    // Concurrent begins for one tenant don't end above the cap together.
    let many = (0..30).map(|_| app.begin("initech"));
    futures::future::join_all(many).await;
    assert_eq!(open_states(&app, "initech").await, MAX_OPEN_STATES);
}

#[tokio::test]
async fn used_and_expired_states_are_deleted() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[vault]\nstate_ttl = \"2s\"\nstate_sweep_interval = \"100ms\"\n".into(),
        ..Default::default()
    })
    .await;
    // Used: deleted by the callback itself. A repeated callback gets the same clear answer as
    // when used states were kept.
    let begun = app.begin("acme").await;
    complete(&app, &begun).await.unwrap();
    assert_eq!(rows(&app, "acme").await, 0);
    let again = complete(&app, &begun).await.unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, "INVALID_STATE");

    // Expired: kept while usable, swept soon after it expires.
    let started = Instant::now();
    let begun = app.begin("globex").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&app, "globex").await, 1, "an open state survives the sweeps");
    while rows(&app, "globex").await > 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the expired state is swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(2), "swept only once expired");
    let late = complete(&app, &begun).await.unwrap_err();
    assert_reason(&late, Code::FailedPrecondition, "INVALID_STATE");

    // Used rows as older versions left them (consumed_at set, not yet expired) are swept too;
    // an open row beside them is not.
    let legacy = app.rows.sql(
        "INSERT INTO pending_authorizations (state_hash, tenant_id, provider, redirect_uri, scopes, expires_at, consumed_at) \
         VALUES ('\\x01', 'legacy', 'understory', 'https://app.example/oauth/callback', '{}', now() + interval '1 hour', now()), \
                ('\\x02', 'legacy', 'understory', 'https://app.example/oauth/callback', '{}', now() + interval '1 hour', NULL)",
        "INSERT INTO pending_authorizations (state_hash, tenant_id, provider, redirect_uri, scopes, expires_at, consumed_at) \
         VALUES (X'01', 'legacy', 'understory', 'https://app.example/oauth/callback', '[]', \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3600 seconds'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
                (X'02', 'legacy', 'understory', 'https://app.example/oauth/callback', '[]', \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3600 seconds'), NULL)",
    );
    on_rows!(app.rows, |pool| sqlx::query(legacy)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let started = Instant::now();
    while rows(&app, "legacy").await > 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the used row is swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_states(&app, "legacy").await, 1);
}

/// Fires `n` BeginAuthorization calls at once; returns the successes and the refusals.
async fn begin_burst<F, Fut>(n: usize, call: F) -> (usize, Vec<tonic::Status>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<proto::BeginAuthorizationResponse>, tonic::Status>>,
{
    let results = futures::future::join_all((0..n).map(call)).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    (ok, results.into_iter().filter_map(Result::err).collect())
}

fn begin_request(tenant: String) -> proto::BeginAuthorizationRequest {
    proto::BeginAuthorizationRequest {
        tenant_id: tenant,
        ..Default::default()
    }
}

#[tokio::test]
async fn begin_authorization_is_rate_limited_per_caller_by_default() {
    // team-a's entry sets no limit of its own: the defaults apply (10 a second, bursts of 50).
    let app = spawn_app_with(TestOptions {
        extra_toml: callers_toml().replace(
            &format!("mtls_uris = [\"{BILLING_SPIFFE}\"]"),
            "bearer_token_sha256 = [\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"]",
        ),
        ..Default::default()
    })
    .await;
    let team_a = bearer_client(app.addr, Some("token-team-a")).await;
    let started = Instant::now();
    let (ok, refused) = begin_burst(100, |i| {
        let mut client = team_a.clone();
        async move { client.begin_authorization(begin_request(format!("team-a-{i}"))).await }
    })
    .await;
    let allowed = 50 + 10 * started.elapsed().as_secs_f64().ceil() as usize;
    assert!((50..=allowed).contains(&ok), "{ok} of 100 allowed");
    assert_eq!(ok + refused.len(), 100);
    for status in &refused {
        let meta = assert_reason(status, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
        assert_eq!(meta["caller"], "team-a");
        let retry_after: u64 = meta["retry_after_ms"].parse().unwrap();
        assert!(retry_after > 0 && retry_after <= 100, "{retry_after}");
    }
    // Its other calls are not slowed down by it.
    let mut client = team_a.clone();
    for _ in 0..20 {
        let err = client
            .get_access_token(proto::GetAccessTokenRequest {
                tenant_id: "team-a-1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
}
