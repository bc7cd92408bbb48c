//! Rejected-token feedback: a caller whose access token the provider rejected says so in
//! GetAccessToken. The current token is refreshed once however many callers report it, on one
//! replica or several; a token that is no longer current is never refreshed again (the newer
//! one is returned); a revoked grant is marked as needing a new authorization.

use sha2::{Digest, Sha256};
use token_vault::proto;
use tonic::Code;

use crate::{
    helpers::on_rows,
    helpers::{assert_bad_field, assert_reason, spawn_app, token_from, TestApp, TestOptions},
    replicas::Cluster,
};

fn report(tenant: &str, rejected: &str) -> proto::GetAccessTokenRequest {
    proto::GetAccessTokenRequest {
        tenant_id: tenant.into(),
        rejected_access_token: rejected.into(),
        ..Default::default()
    }
}

fn report_digest(tenant: &str, digest: Vec<u8>) -> proto::GetAccessTokenRequest {
    proto::GetAccessTokenRequest {
        tenant_id: tenant.into(),
        rejected_access_token_sha256: digest,
        ..Default::default()
    }
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

async fn get(app: &TestApp, request: proto::GetAccessTokenRequest) -> Result<String, tonic::Status> {
    token_from(app.client.clone(), request).await
}

/// A connected tenant whose (hour-long) current token has been handed out once: no refresh is
/// due, so any refresh in a test is the report's doing.
async fn connected(app: &TestApp, tenant: &str) -> String {
    app.connect_tenant(tenant).await;
    let token = app.get_token(tenant).await.unwrap().access_token;
    assert_eq!(app.provider.stats().refresh_requests, 0);
    token
}

#[tokio::test]
async fn a_rejected_current_token_refreshes_once_under_100_concurrent_reporters() {
    let app = spawn_app().await;
    let rejected = connected(&app, "acme").await;

    let calls = (0..100).map(|_| get(&app, report("acme", &rejected)));
    let results = futures::future::join_all(calls).await;
    let stats = app.provider.stats();
    assert_eq!(stats.refresh_requests, 1, "one refresh for every reporter");
    assert_eq!((stats.refreshes_ok, stats.reuse_detected), (1, 0));
    let newest = app.provider.newest_access_token();
    assert_ne!(newest, rejected);
    for result in results {
        assert_eq!(result.unwrap(), newest, "every reporter gets the refreshed token");
    }

    // A caller reporting the same token afterwards gets the new one, with no refresh.
    assert_eq!(get(&app, report("acme", &rejected)).await.unwrap(), newest);
    // And callers that report nothing get it too.
    assert_eq!(app.get_token("acme").await.unwrap().access_token, newest);
    assert_eq!(app.provider.stats().refresh_requests, 1);
    let generation: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT generation FROM connections"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(generation, 2);
}

#[tokio::test]
async fn reporters_on_two_replicas_cause_one_refresh() {
    let cluster = Cluster::start(2, TestOptions::default(), None, &[]).await;
    cluster.connect_tenant("acme").await;
    // Both replicas hand out (and cache) the current token.
    let rejected = token_from(cluster.client(0), report("acme", "")).await.unwrap();
    let cached = token_from(cluster.client(1), report("acme", "")).await.unwrap();
    assert_eq!(cached, rejected);

    let calls = [0usize, 1].into_iter().flat_map(|i| {
        let client = cluster.client(i);
        let rejected = rejected.clone();
        (0..50).map(move |_| token_from(client.clone(), report("acme", &rejected)))
    });
    let results = futures::future::join_all(calls).await;
    let stats = cluster.provider.stats();
    assert_eq!(stats.refresh_requests, 1, "one refresh across both replicas");
    assert_eq!((stats.refreshes_ok, stats.reuse_detected), (1, 0));
    let newest = cluster.provider.newest_access_token();
    assert_ne!(newest, rejected);
    for result in results {
        assert_eq!(result.unwrap(), newest);
    }
    // The replica whose cache still held the rejected token serves the new one to a caller
    // that reports it, without refreshing again.
    for i in [0, 1] {
        let token = token_from(cluster.client(i), report("acme", &rejected)).await.unwrap();
        assert_eq!(token, newest);
    }
    assert_eq!(cluster.provider.stats().refresh_requests, 1);

    let logs = cluster.logs();
    assert!(logs.contains("rejected by the provider"), "the report is logged");
    for secret in cluster.provider.issued_secrets() {
        assert!(!logs.contains(&secret), "a token reached the log");
    }
}

#[tokio::test]
async fn a_rejected_stale_token_does_not_refresh() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let stale = app.provider.newest_access_token();
    // The first token is due (as if its hour were up), before anyone read it: the next call
    // refreshes in the ordinary way.
    let due = app.rows.sql(
        "UPDATE connections SET access_token_expires_at = now() - interval '1 second'",
        "UPDATE connections SET access_token_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 seconds')",
    );
    on_rows!(app.rows, |pool| sqlx::query(due)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let current = app.get_token("acme").await.unwrap().access_token;
    assert_ne!(current, stale);
    assert_eq!(app.provider.stats().refresh_requests, 1);

    // The old token, reported rejected (a caller held it across the refresh), in either form:
    // the current one comes back and nothing is refreshed.
    assert_eq!(get(&app, report("acme", &stale)).await.unwrap(), current);
    assert_eq!(get(&app, report_digest("acme", sha256(&stale))).await.unwrap(), current);
    let calls = (0..20).map(|_| get(&app, report("acme", &stale)));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), current);
    }
    let stats = app.provider.stats();
    assert_eq!((stats.refresh_requests, stats.reuse_detected), (1, 0));
}

#[tokio::test]
async fn the_digest_form_refreshes_the_current_token_like_the_plaintext() {
    let app = spawn_app().await;
    let rejected = connected(&app, "acme").await;

    let calls = (0..20).map(|_| get(&app, report_digest("acme", sha256(&rejected))));
    let results = futures::future::join_all(calls).await;
    let newest = app.provider.newest_access_token();
    assert_ne!(newest, rejected);
    for result in results {
        assert_eq!(result.unwrap(), newest);
    }
    assert_eq!(app.provider.stats().refresh_requests, 1);

    // Reporting the new token in turn refreshes it once more: it is the current one now.
    let third = get(&app, report_digest("acme", sha256(&newest))).await.unwrap();
    assert_ne!(third, newest);
    assert_eq!(third, app.provider.newest_access_token());
    let stats = app.provider.stats();
    assert_eq!((stats.refresh_requests, stats.reuse_detected), (2, 0));
}

#[tokio::test]
async fn a_report_is_one_form_or_the_other_and_a_digest_is_32_bytes() {
    let app = spawn_app().await;
    let token = connected(&app, "acme").await;

    let both = proto::GetAccessTokenRequest {
        tenant_id: "acme".into(),
        rejected_access_token: token.clone(),
        rejected_access_token_sha256: sha256(&token),
        ..Default::default()
    };
    let err = get(&app, both).await.unwrap_err();
    assert_bad_field(&err, "rejected_access_token_sha256");
    assert!(!err.message().contains(&token), "the token is not echoed");

    for bad in [vec![0u8; 31], vec![0u8; 33], sha256(&token)[..16].to_vec()] {
        let err = get(&app, report_digest("acme", bad)).await.unwrap_err();
        assert_bad_field(&err, "rejected_access_token_sha256");
    }
    assert_eq!(app.provider.stats().refresh_requests, 0);
}

#[tokio::test]
async fn a_rejected_token_of_a_revoked_grant_marks_the_connection() {
    let app = spawn_app().await;
    let rejected = connected(&app, "acme").await;
    // The customer revoked consent at the provider: the access token stops working, and so
    // does the refresh token.
    app.provider.revoke_all();

    let err = get(&app, report("acme", &rejected)).await.unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "invalid_grant");
    assert_eq!(app.provider.stats().refresh_requests, 1);

    // Every caller after that is told the same, with no further request to the provider,
    // whether it reports the token or not.
    let err = get(&app, report("acme", &rejected)).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(app.provider.stats().refresh_requests, 1);

    let events: Vec<(String, String, Option<String>, i64)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT kind, status, reason, generation FROM connection_events ORDER BY id"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(
        events,
        [
            ("authorized".into(), "active".into(), None, 1),
            (
                "reauthorization_required".into(),
                "reauthorization_required".into(),
                Some("invalid_grant".into()),
                1
            ),
        ]
    );
}

/// The mark is in the database, so it holds on every replica: one whose cache is cold reads it
/// on its miss, and one whose cache still holds the revoked grant's token reads it when a caller
/// reports that token. Neither asks the provider again.
#[tokio::test]
async fn a_revoked_grant_marked_on_one_replica_is_refused_by_the_others() {
    let cluster = Cluster::start(3, TestOptions::default(), None, &[]).await;
    cluster.connect_tenant("acme").await;
    let rejected = token_from(cluster.client(0), report("acme", "")).await.unwrap();
    let warm = token_from(cluster.client(1), report("acme", "")).await.unwrap();
    assert_eq!(warm, rejected);
    cluster.provider.revoke_all();

    let err = token_from(cluster.client(0), report("acme", &rejected))
        .await
        .unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "invalid_grant");
    assert_eq!(cluster.provider.stats().refresh_requests, 1);

    // Replica 2 has never been asked for this tenant: its answer comes from the row it reads.
    let cold = token_from(cluster.client(2), report("acme", "")).await.unwrap_err();
    let meta = assert_reason(&cold, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "invalid_grant");
    // Replica 1 still caches the token; a caller reporting it sends that replica to the row.
    let reported = token_from(cluster.client(1), report("acme", &rejected))
        .await
        .unwrap_err();
    let meta = assert_reason(&reported, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(meta["status_reason"], "invalid_grant");
    assert_eq!(
        cluster.provider.stats().refresh_requests,
        1,
        "the marked connection is not refreshed again from any replica"
    );
}
