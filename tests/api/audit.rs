//! The audit trail: a row for each kind of event with caller, tenant, provider and outcome;
//! GetAccessToken counted per window, not per call; no token anywhere; an append-only table
//! swept by retention only.

use std::time::Duration;

use token_vault::proto;
use tonic::Code;

use crate::{
    callers::{bearer_client, callers_toml, connect_as, BILLING_SPIFFE},
    helpers::{assert_reason, dump_all_tables, on_rows, spawn_app_with, Rows, TestApp, TestOptions},
};

#[derive(Debug, sqlx::FromRow)]
struct Row {
    event: String,
    caller: String,
    tenant_id: Option<String>,
    provider: Option<String>,
    outcome: String,
    detail: Option<String>,
    count: i64,
    window_end: Option<time::OffsetDateTime>,
}

/// Bearer callers on plaintext, 2-second access tokens (a refresh is due one second after
/// issue), and a 200 ms audit window.
async fn audited_app() -> TestApp {
    let toml = callers_toml().replace(
        &format!("mtls_uris = [\"{BILLING_SPIFFE}\"]"),
        "bearer_token_sha256 = [\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"]",
    );
    spawn_app_with(TestOptions {
        access_ttl: 2,
        extra_toml: format!("{toml}\n[audit]\nflush_interval = \"200ms\"\n"),
        ..Default::default()
    })
    .await
}

async fn rows(app: &TestApp) -> Vec<Row> {
    on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT event, caller, tenant_id, provider, outcome, detail, count, window_end FROM audit_events ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap())
}

/// Waits until `check` holds for the rows (the writer flushes every 200 ms).
async fn rows_until(app: &TestApp, check: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    for _ in 0..50 {
        let rows = rows(app).await;
        if check(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = rows(app).await;
    panic!("audit rows never matched: {rows:#?}");
}

fn token_request(tenant: &str) -> proto::GetAccessTokenRequest {
    proto::GetAccessTokenRequest {
        tenant_id: tenant.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_kind_of_event_is_recorded_and_none_holds_a_secret() {
    let app = audited_app().await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    connect_as(&app, &mut team_a, "team-a-1").await.unwrap();
    team_a.get_access_token(token_request("team-a-1")).await.unwrap();
    // A refresh, seen by the caller.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    team_a.get_access_token(token_request("team-a-1")).await.unwrap();
    // The customer revokes consent: the next refresh is rejected.
    app.provider.revoke_all();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = team_a.get_access_token(token_request("team-a-1")).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    // Denials: another team's tenant, and no credentials at all.
    let err = team_a.get_access_token(token_request("team-b-1")).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let mut anonymous = bearer_client(app.addr, None).await;
    let err = anonymous.get_access_token(token_request("team-a-1")).await.unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");

    let all = rows_until(&app, |rows| {
        [
            "begin_authorization",
            "complete_authorization",
            "get_access_token",
            "refresh",
            "reauthorization_required",
            "denied",
        ]
        .iter()
        .all(|kind| rows.iter().any(|r| r.event == *kind))
            && rows.iter().filter(|r| r.event == "denied").count() >= 2
    })
    .await;
    let find = |event: &str| all.iter().find(|r| r.event == event).unwrap();

    for event in [
        "begin_authorization",
        "complete_authorization",
        "refresh",
        "reauthorization_required",
    ] {
        let r = find(event);
        assert_eq!(r.caller, "team-a", "{r:?}");
        assert_eq!(r.tenant_id.as_deref(), Some("team-a-1"), "{r:?}");
        assert_eq!(r.provider.as_deref(), Some("understory"), "{r:?}");
        assert_eq!(r.count, 1, "{r:?}");
        assert!(r.window_end.is_none(), "a discrete event: {r:?}");
    }
    assert_eq!(find("begin_authorization").outcome, "ok");
    assert_eq!(find("complete_authorization").outcome, "ok");
    assert_eq!(find("refresh").detail.as_deref(), Some("generation 2"));
    let reauth = find("reauthorization_required");
    assert_eq!(reauth.outcome, "REAUTHORIZATION_REQUIRED");
    assert_eq!(reauth.detail.as_deref(), Some("invalid_grant"));

    let served: Vec<&Row> = all
        .iter()
        .filter(|r| r.event == "get_access_token" && r.outcome == "ok")
        .collect();
    assert_eq!(served.iter().map(|r| r.count).sum::<i64>(), 2, "{served:?}");
    assert!(served.iter().all(|r| r.window_end.is_some() && r.caller == "team-a"));

    let denied_tenant = all
        .iter()
        .find(|r| r.event == "denied" && r.outcome == "CALLER_NOT_ALLOWED")
        .unwrap();
    assert_eq!(denied_tenant.caller, "team-a");
    assert_eq!(denied_tenant.tenant_id.as_deref(), Some("team-b-1"));
    let unknown = all
        .iter()
        .find(|r| r.event == "denied" && r.outcome == "CALLER_UNKNOWN")
        .unwrap();
    assert_eq!(unknown.caller, "-");
    assert_eq!(unknown.detail.as_deref(), Some("GetAccessToken: no credentials"));

    // No token, code, client secret or bearer token anywhere in the audit table.
    let mut text = String::new();
    for r in &all {
        text.push_str(&format!("{r:?}\n"));
    }
    let table = dump_all_tables(&app.rows).await;
    let mut secrets = app.provider.issued_secrets();
    secrets.extend([app.client_secret.clone(), "token-team-a".into()]);
    assert!(secrets.len() > 3);
    for secret in secrets {
        assert!(!text.contains(&secret), "a secret in the audit rows");
        assert!(!table.contains(&secret), "a secret in the database");
    }
}

#[tokio::test]
async fn get_access_token_is_counted_per_window_not_written_per_call() {
    let app = audited_app().await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    connect_as(&app, &mut team_a, "team-a-1").await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        team_a.get_access_token(token_request("team-a-1")).await.unwrap();
    }
    // The windows the calls spanned (200 ms each, and the ones they started and ended in): on
    // a quiet machine a handful, on a loaded one more.
    let windows = started.elapsed().as_millis() / 200 + 2;
    let all = rows_until(&app, |rows| {
        rows.iter()
            .filter(|r| r.event == "get_access_token")
            .map(|r| r.count)
            .sum::<i64>()
            == 200
    })
    .await;
    let served: Vec<&Row> = all.iter().filter(|r| r.event == "get_access_token").collect();
    // 200 calls over a few 200 ms windows: a handful of rows, at most one per window and token
    // source, never one per call.
    assert!(
        served.len() as u128 <= 10.max(2 * windows) && served.len() < 200,
        "{} rows for 200 calls over {windows} windows",
        served.len()
    );
    assert!(served.iter().all(|r| r.outcome == "ok"
        && r.tenant_id.as_deref() == Some("team-a-1")
        && matches!(r.detail.as_deref(), Some("cache" | "database"))));
}

#[tokio::test]
async fn the_table_is_append_only_and_only_the_retention_sweep_deletes() {
    let app = audited_app().await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    connect_as(&app, &mut team_a, "team-a-1").await.unwrap();
    let before = rows_until(&app, |rows| rows.len() >= 2).await.len();

    match &app.rows {
        // Postgres: a trigger refuses UPDATE, DELETE and TRUNCATE; the sweep's transaction-local
        // setting lets DELETE through for rows older than a day only.
        Rows::Postgres(_) => {
            for statement in [
                "UPDATE audit_events SET caller = 'someone-else'",
                "DELETE FROM audit_events",
                "TRUNCATE audit_events",
            ] {
                let err = sqlx::query(statement).execute(&app.pool).await.unwrap_err();
                assert!(err.to_string().contains("append-only"), "{statement}: {err}");
            }
            // Even claiming to be the sweep, nothing younger than a day goes.
            let mut tx = app.pool.begin().await.unwrap();
            sqlx::query("SELECT set_config('token_vault.audit_sweep', 'on', true)")
                .execute(&mut *tx)
                .await
                .unwrap();
            assert!(sqlx::query("DELETE FROM audit_events").execute(&mut *tx).await.is_err());
            drop(tx);
        }
        // SQLite: triggers refuse UPDATE and DELETE (a DELETE without WHERE, SQLite's truncate,
        // fires them too); the sweep marks itself in `audit_sweep` inside its own transaction,
        // and then only rows older than a day may go.
        Rows::Sqlite(pool) => {
            for statement in [
                "UPDATE audit_events SET caller = 'someone-else'",
                "DELETE FROM audit_events WHERE caller IS NOT NULL",
                "DELETE FROM audit_events",
            ] {
                let err = sqlx::query(statement).execute(pool).await.unwrap_err();
                assert!(err.to_string().contains("append-only"), "{statement}: {err}");
            }
            // Even claiming to be the sweep, nothing younger than a day goes.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("UPDATE audit_sweep SET active = 1")
                .execute(&mut *tx)
                .await
                .unwrap();
            let err = sqlx::query("DELETE FROM audit_events")
                .execute(&mut *tx)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("append-only"), "the sweep's claim: {err}");
            // Rolled back now: the file's write lock is held until then.
            tx.rollback().await.unwrap();
        }
    }

    // A row recorded long ago (inserted with its time, as a test only can) is swept.
    let old_row = app.rows.sql(
        "INSERT INTO audit_events (recorded_at, occurred_at, event, caller, outcome, replica)
         VALUES (now() - interval '500 days', now() - interval '500 days', 'get_connection', 'old', 'ok', gen_random_uuid())",
        "INSERT INTO audit_events (recorded_at, occurred_at, event, caller, outcome, replica)
         VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-500 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-500 days'),
                 'get_connection', 'old', 'ok', randomblob(16))",
    );
    on_rows!(app.rows, |pool| {
        sqlx::query(old_row).execute(pool).await.unwrap();
    });
    // Old enough, but not deleted by the sweep: refused.
    let err = on_rows!(app.rows, |pool| sqlx::query(
        "DELETE FROM audit_events WHERE caller = 'old'"
    )
    .execute(pool)
    .await
    .unwrap_err());
    assert!(
        err.to_string().contains("append-only"),
        "an old row outside the sweep: {err}"
    );
    let deleted = app
        .vault
        .store()
        .audit()
        .delete_older_than(Duration::from_secs(400 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let after = rows(&app).await;
    assert!(after.len() >= before, "recent rows stay");
    assert!(after.iter().all(|r| r.caller != "old"));
}

#[tokio::test]
async fn a_window_with_more_keys_than_one_insert_takes_is_written_whole() {
    // The writer sends at most 1,000 rows per INSERT; 3,000 distinct tenants in one window need
    // several. The window is closed by shutting the server down, not by the clock, so however
    // slow the machine, all 3,000 fall into it.
    let mut app = spawn_app_with(TestOptions {
        extra_toml: "[audit]\nflush_interval = \"1h\"\n".into(),
        ..Default::default()
    })
    .await;
    let tenants: Vec<String> = (0..3_000).map(|i| format!("nobody-{i:04}")).collect();
    for chunk in tenants.chunks(100) {
        let calls = chunk.iter().map(|tenant| {
            let mut client = app.client.clone();
            async move { client.get_access_token(token_request(tenant)).await }
        });
        for answer in futures::future::join_all(calls).await {
            assert_reason(&answer.unwrap_err(), Code::NotFound, "CONNECTION_NOT_FOUND");
        }
    }
    app.shut_down().await;
    let all = rows(&app).await;
    let mut written: Vec<&str> = all
        .iter()
        .filter(|r| r.event == "get_access_token")
        .map(|r| {
            assert_eq!((r.outcome.as_str(), r.count), ("CONNECTION_NOT_FOUND", 1));
            r.tenant_id.as_deref().unwrap()
        })
        .collect();
    written.sort_unstable();
    assert_eq!(written, tenants);
    let largest_window: i64 = on_rows!(app.rows, |pool| {
        sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM audit_events WHERE event = 'get_access_token' GROUP BY occurred_at) w",
    )
    .fetch_one(pool)
    .await
    .unwrap()
    });
    assert_eq!(
        largest_window, 3_000,
        "the 3,000 calls fall into the one window closed at shutdown"
    );
}
