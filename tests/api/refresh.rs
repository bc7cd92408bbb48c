//! GetAccessToken when the token needs refreshing: rotation, rejection, transient failures,
//! in-process coalescing and caller deadlines.

use std::time::Duration;

use token_vault::proto;
use tonic::Code;

use crate::{
    helpers::on_rows,
    helpers::{assert_reason, spawn_app_with, TestApp, TestOptions},
    provider::Fault,
};

/// A vault whose provider issues 2-second access tokens: with the margin capped at half a
/// token's lifetime, a token needs refreshing one second after it was issued.
async fn short_lived_app() -> TestApp {
    spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await
}

async fn wait_for_expiry() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn rotation_is_stored_as_a_new_generation_and_the_old_token_is_never_sent_again() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    let first = app.get_token("acme").await.unwrap();
    let refresh_tokens = || app.provider.state.lock().unwrap().issued_refresh_tokens.clone();
    let rt1 = refresh_tokens()[0].clone();

    wait_for_expiry().await;
    let second = app.get_token("acme").await.unwrap();
    assert_ne!(first.access_token, second.access_token);
    let rt2 = refresh_tokens()[1].clone();

    wait_for_expiry().await;
    let third = app.get_token("acme").await.unwrap();
    assert_ne!(second.access_token, third.access_token);

    // Each refresh presented the newest refresh token; none was presented twice.
    let presented: Vec<String> = app
        .provider
        .requests()
        .iter()
        .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .map(|r| r.form["refresh_token"].clone())
        .collect();
    assert_eq!(presented, [rt1, rt2]);
    let stats = app.provider.stats();
    assert_eq!((stats.refreshes_ok, stats.reuse_detected), (2, 0));

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
            (2, "refresh".into(), true),
            (3, "refresh".into(), false)
        ]
    );
}

#[tokio::test]
async fn a_rejected_refresh_token_marks_the_connection_and_stops_calling_the_provider() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    app.provider.revoke_all();
    wait_for_expiry().await;

    let err = app.get_token("acme").await.unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "invalid_grant");
    let requests = app.provider.stats().refresh_requests;
    assert_eq!(requests, 1);

    let again = app.get_token("acme").await.unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(
        app.provider.stats().refresh_requests,
        requests,
        "a dead connection is not refreshed again"
    );

    let info = app
        .client
        .clone()
        .get_connection(proto::GetConnectionRequest {
            tenant_id: "acme".into(),
            provider: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status(), proto::ConnectionStatus::ReauthorizationRequired);
    assert_eq!(info.status_reason, "invalid_grant");

    // A new authorization restores it.
    app.connect_tenant("acme").await;
    assert!(app.get_token("acme").await.is_ok());
}

#[tokio::test]
async fn transient_failures_leave_the_connection_active() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    wait_for_expiry().await;

    // Every attempt fails: 3 attempts, then UNAVAILABLE with a retry hint.
    for _ in 0..3 {
        app.provider.push_fault(Fault::Answer(503, "{}"));
    }
    let err = app.get_token("acme").await.unwrap_err();
    let meta = assert_reason(&err, Code::Unavailable, "PROVIDER_UNAVAILABLE");
    assert!(meta.contains_key("retry_after_ms"));
    assert_eq!(app.provider.stats().refresh_requests, 3);

    // A 502 and a 429 are transient too; the third attempt succeeds. (Hydra's "multiple
    // concurrent requests" is not: it may mean the token was consumed, see grant_safety.rs.)
    app.provider.push_fault(Fault::Answer(502, "{}"));
    app.provider.push_fault(Fault::Answer(429, "{}"));
    let token = app.get_token("acme").await.unwrap();
    assert_eq!(app.provider.stats().refresh_requests, 6);
    assert_eq!(app.provider.stats().reuse_detected, 0);
    assert_eq!(
        token.access_token,
        app.provider.state.lock().unwrap().issued_access_tokens[1]
    );

    wait_for_expiry().await;
    app.provider.push_fault(Fault::Slow(Duration::from_secs(3)));
    // The slow answer times out; the provider did rotate, so the retry presents a used token,
    // and Hydra answers that with invalid_grant: the connection is genuinely dead.
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
}

#[tokio::test]
async fn one_failed_attempt_is_retried_within_the_same_call() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    wait_for_expiry().await;
    // The provider answers 503 once (nothing rotated), then works.
    app.provider.push_fault(Fault::Answer(503, "{}"));
    let token = app.get_token("acme").await.unwrap();
    assert!(!token.access_token.is_empty());
    assert_eq!(app.provider.stats().refresh_requests, 2);
}

#[tokio::test]
async fn rejected_client_credentials_do_not_kill_the_connection() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    wait_for_expiry().await;
    app.provider
        .push_fault(Fault::Answer(401, r#"{"error":"invalid_client"}"#));
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::Internal, "PROVIDER_REJECTED_CLIENT");
    assert!(app.get_token("acme").await.is_ok(), "the connection stayed active");
}

#[tokio::test]
async fn a_connection_without_a_refresh_token_asks_for_reauthorization_when_expired() {
    let app = short_lived_app().await;
    app.provider.state.lock().unwrap().issue_refresh_tokens = false;
    let done = app.connect_tenant("acme").await;
    assert!(!done.refresh_token_issued);
    assert!(app.get_token("acme").await.is_ok());
    wait_for_expiry().await;
    let err = app.get_token("acme").await.unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "no_refresh_token");
    assert_eq!(app.provider.stats().refresh_requests, 0);
}

#[tokio::test]
async fn concurrent_callers_in_one_process_share_one_refresh() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    wait_for_expiry().await;
    app.provider.push_fault(Fault::Slow(Duration::from_millis(300)));
    let calls = (0..100).map(|_| app.get_token("acme"));
    let results = futures::future::join_all(calls).await;
    let newest = app.provider.newest_access_token();
    for r in results {
        assert_eq!(r.unwrap().access_token, newest);
    }
    assert_eq!(app.provider.stats().refresh_requests, 1);
}

#[tokio::test]
async fn a_caller_past_its_deadline_leaves_without_cancelling_the_refresh() {
    let app = short_lived_app().await;
    app.connect_tenant("acme").await;
    wait_for_expiry().await;
    app.provider.push_fault(Fault::Slow(Duration::from_millis(700)));

    let mut impatient = tonic::Request::new(proto::GetAccessTokenRequest {
        tenant_id: "acme".into(),
        ..Default::default()
    });
    impatient.set_timeout(Duration::from_millis(200));
    let mut client = app.client.clone();
    let patient = tokio::spawn({
        let app_client = app.client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            app_client
                .clone()
                .get_access_token(proto::GetAccessTokenRequest {
                    tenant_id: "acme".into(),
                    ..Default::default()
                })
                .await
        }
    });
    let err = client.get_access_token(impatient).await.unwrap_err();
    // The vault answers DEADLINE_EXCEEDED at the deadline; tonic's channel also enforces the
    // same `grpc-timeout` on the caller's side and reports CANCELLED "Timeout expired" when its
    // own timer wins that race, which a loaded machine decides. Either way the caller left at
    // its deadline, not with any other failure.
    let left_at_deadline =
        err.code() == Code::DeadlineExceeded || (err.code() == Code::Cancelled && err.message() == "Timeout expired");
    assert!(left_at_deadline, "{err:?}");
    let token = patient.await.unwrap().unwrap().into_inner();
    assert_eq!(token.access_token, app.provider.newest_access_token());
    assert_eq!(app.provider.stats().refresh_requests, 1);
}

#[tokio::test]
async fn min_valid_for_asks_for_more_margin_but_never_refreshes_a_fresh_token() {
    let app = spawn_app_with(TestOptions {
        access_ttl: 3600,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let ask = |secs| proto::GetAccessTokenRequest {
        tenant_id: "acme".into(),
        min_valid_for: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
        ..Default::default()
    };
    // Two hours of margin on a one-hour token is capped at half its life: no refresh.
    app.client.clone().get_access_token(ask(7200)).await.unwrap();
    app.client.clone().get_access_token(ask(0)).await.unwrap();
    assert_eq!(app.provider.stats().refresh_requests, 0);
}
