//! WatchConnectionEvents: every status change delivered to watchers on another replica, in
//! commit order, resumable from a cursor, filtered by request and by the caller's policy; slow
//! consumers ended, old events swept, open watches ended on shutdown.

use std::time::{Duration, Instant};

use token_vault::proto::token_vault_client::TokenVaultClient;
use token_vault::proto::{self, ConnectionEventKind as Kind, ConnectionStatus as Status};
use tonic::{transport::Channel, Code, Streaming};

use crate::{
    callers::{bearer_client, connect_as},
    helpers::{
        assert_bad_field, assert_reason, get_token_within, on_rows, spawn_app_with, wait_until, Rows, TestOptions,
    },
    provider::Fault,
    replicas::Cluster,
};

/// How long a test waits for an event it expects.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a test watches for an event it does not expect (its absence is by design, so a
/// slow machine can't make it appear).
const QUIET: Duration = Duration::from_millis(700);

fn watch_request(cursor: &str) -> proto::WatchConnectionEventsRequest {
    proto::WatchConnectionEventsRequest {
        cursor: cursor.into(),
        ..Default::default()
    }
}

/// A watch opened through `client`.
async fn watch(
    mut client: TokenVaultClient<Channel>,
    request: proto::WatchConnectionEventsRequest,
) -> Streaming<proto::WatchConnectionEventsResponse> {
    client.watch_connection_events(request).await.unwrap().into_inner()
}

async fn next_event(
    stream: &mut Streaming<proto::WatchConnectionEventsResponse>,
) -> proto::WatchConnectionEventsResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event within the patience")
        .unwrap_or_else(|status| panic!("the stream ended with {status:?}"))
        .expect("the stream does not end")
}

async fn assert_quiet(stream: &mut Streaming<proto::WatchConnectionEventsResponse>) {
    if let Ok(next) = tokio::time::timeout(QUIET, stream.message()).await {
        panic!("nothing more was expected, got {next:?}");
    }
}

fn summary(e: &proto::WatchConnectionEventsResponse) -> (String, Kind, Status) {
    (e.tenant_id.clone(), e.kind(), e.status())
}

fn owned(tenant: &str, kind: Kind, status: Status) -> (String, Kind, Status) {
    (tenant.to_owned(), kind, status)
}

/// Events as the trigger-less past would have written them, straight into the table.
async fn insert_events(rows: &Rows, tenant_prefix: &str, count: i64, age_secs: i64) {
    let insert = rows.sql(
        "INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, generation, occurred_at)
         SELECT 0, $1 || g, 'understory', 'authorized', 'active', 1, now() - make_interval(secs => $3)
           FROM generate_series(1, $2) g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $2)
         INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, generation, occurred_at)
         SELECT 0, $1 || n, 'understory', 'authorized', 'active', 1,
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $3 || ' seconds')
           FROM g",
    );
    on_rows!(rows, |pool| sqlx::query(insert)
        .bind(tenant_prefix)
        .bind(count)
        .bind(age_secs as f64)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_another_replica_sees_every_transition_in_order() {
    let cluster = Cluster::start(
        2,
        TestOptions {
            access_ttl: 2,
            ..Default::default()
        },
        None,
        &[],
    )
    .await;
    let watcher = cluster.client(1);
    let mut stream = watch(watcher, watch_request("")).await;

    // Everything below goes through replica 0.
    cluster.connect_tenant("acme").await;
    let mut client = cluster.client(0);
    client
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    cluster.provider.revoke_all();
    // Past half the token's two seconds: the next call refreshes, and the provider refuses.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = client
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&refused, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    cluster.connect_tenant("acme").await;

    let authorized = next_event(&mut stream).await;
    let rejected = next_event(&mut stream).await;
    let again = next_event(&mut stream).await;
    assert_eq!(
        [&authorized, &rejected, &again].map(summary),
        [
            owned("acme", Kind::Authorized, Status::Active),
            owned("acme", Kind::ReauthorizationRequired, Status::ReauthorizationRequired),
            owned("acme", Kind::Authorized, Status::Active),
        ]
    );
    assert_eq!(authorized.provider, "understory");
    assert_eq!(rejected.reason, "invalid_grant", "why, in the provider's words");
    assert!(authorized.occurred_at.is_some());
    let cursors = [&authorized, &rejected, &again].map(|e| e.cursor.clone());
    assert!(
        cursors.iter().all(|c| !c.is_empty()) && cursors[0] != cursors[1] && cursors[1] != cursors[2],
        "every event has its own cursor: {cursors:?}"
    );
    assert_quiet(&mut stream).await;
}

/// Hydra's words to the loser of a concurrent refresh (fosite `flow_refresh.go`).
const CONCURRENT: &str = r#"{"error":"invalid_request","error_description":"Failed to refresh token because of multiple concurrent requests using the same token which is not allowed."}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_in_doubt_that_refreshes_again_is_reported_recovered() {
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        extra_toml: "[refresh]\nlease_ttl = \"6s\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut stream = watch(app.client.clone(), watch_request("")).await;
    app.connect_tenant("acme").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // An answer that may mean the refresh token was consumed: the connection is in doubt
    // (`refresh_outcome_unknown`) until a refresh succeeds after the lease.
    app.provider.push_fault(Fault::Answer(400, CONCURRENT));
    let mut client = app.client.clone();
    let doubt = get_token_within(&mut client, "acme", Duration::from_secs(8))
        .await
        .unwrap_err();
    assert_reason(&doubt, Code::Unavailable, "REFRESH_OUTCOME_UNKNOWN");
    get_token_within(&mut client, "acme", Duration::from_secs(15))
        .await
        .expect("served once the lease has lapsed");

    let authorized = next_event(&mut stream).await;
    let recovered = next_event(&mut stream).await;
    assert_eq!(
        [&authorized, &recovered].map(summary),
        [
            owned("acme", Kind::Authorized, Status::Active),
            owned("acme", Kind::Recovered, Status::Active),
        ]
    );
    assert_eq!(recovered.reason, "refresh_outcome_unknown", "what it recovered from");
    assert_quiet(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_resumes_from_its_cursor_with_exactly_the_events_it_missed() {
    let cluster = Cluster::start(2, TestOptions::default(), None, &[]).await;
    let mut stream = watch(cluster.client(1), watch_request("")).await;
    cluster.connect_tenant("t1").await;
    cluster.connect_tenant("t2").await;
    assert_eq!(next_event(&mut stream).await.tenant_id, "t1");
    let last = next_event(&mut stream).await;
    assert_eq!(last.tenant_id, "t2");
    // The watcher goes away; the world goes on without it.
    drop(stream);
    cluster.connect_tenant("t3").await;
    cluster.connect_tenant("t4").await;

    // Back, on the other replica: cursors mean the same everywhere.
    let mut resumed = watch(cluster.client(0), watch_request(&last.cursor)).await;
    let missed = [next_event(&mut resumed).await, next_event(&mut resumed).await];
    assert_eq!(missed.map(|e| e.tenant_id), ["t3", "t4"]);
    assert_quiet(&mut resumed).await;
    // And it keeps going from there.
    cluster.connect_tenant("t5").await;
    assert_eq!(next_event(&mut resumed).await.tenant_id, "t5");
}

fn hex(token: &str) -> String {
    token_vault::auth::hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `admin` may do everything; `team-a` may only watch, and only tenants `team-a-*`; `reader`
/// may not watch at all.
fn watch_callers_toml() -> String {
    format!(
        r#"
[auth]
mode = "enforce"
allow_bearer_without_tls = true
[[auth.callers]]
name = "admin"
bearer_token_sha256 = ["{admin}"]
rpcs = ["*"]
providers = ["*"]
tenants = ["*"]
[[auth.callers]]
name = "team-a"
bearer_token_sha256 = ["{a}"]
rpcs = ["WatchConnectionEvents"]
providers = ["understory"]
tenants = ["team-a-*"]
[[auth.callers]]
name = "reader"
bearer_token_sha256 = ["{reader}"]
rpcs = ["GetAccessToken"]
providers = ["*"]
tenants = ["*"]
"#,
        admin = hex("token-admin"),
        a = hex("token-team-a"),
        reader = hex("token-reader"),
    )
}

#[tokio::test]
async fn watchers_see_only_what_their_policy_and_their_filters_let_through() {
    let app = spawn_app_with(TestOptions {
        extra_toml: watch_callers_toml(),
        ..Default::default()
    })
    .await;
    let mut admin = bearer_client(app.addr, Some("token-admin")).await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;

    let mut a_everything = team_a
        .watch_connection_events(watch_request(""))
        .await
        .unwrap()
        .into_inner();
    let mut admin_team_b = admin
        .watch_connection_events(proto::WatchConnectionEventsRequest {
            tenant_prefix: "team-b-".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut admin_understory = admin
        .watch_connection_events(proto::WatchConnectionEventsRequest {
            provider: "understory".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    for tenant in ["team-b-1", "team-a-1", "team-b-2", "team-a-2"] {
        connect_as(&app, &mut admin, tenant).await.unwrap();
    }
    // Commit order: had team-b-2 reached team-a's watcher, it would come before team-a-2.
    let seen = [next_event(&mut a_everything).await, next_event(&mut a_everything).await];
    assert_eq!(seen.map(|e| e.tenant_id), ["team-a-1", "team-a-2"]);
    let seen = [next_event(&mut admin_team_b).await, next_event(&mut admin_team_b).await];
    assert_eq!(seen.map(|e| e.tenant_id), ["team-b-1", "team-b-2"]);
    let mut all = Vec::new();
    for _ in 0..4 {
        all.push(next_event(&mut admin_understory).await.tenant_id);
    }
    assert_eq!(all, ["team-b-1", "team-a-1", "team-b-2", "team-a-2"]);
    assert_quiet(&mut a_everything).await;
    assert_quiet(&mut admin_team_b).await;

    // Bad requests name their field; a malformed cursor is refused as the proto says.
    let err = admin
        .watch_connection_events(proto::WatchConnectionEventsRequest {
            provider: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_field(&err, "provider");
    let err = admin
        .watch_connection_events(proto::WatchConnectionEventsRequest {
            tenant_prefix: "x".repeat(256),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_field(&err, "tenant_prefix");
    for cursor in ["garbage", "v1.1", "v1.-5.3", "v1.99999999999.1"] {
        let err = admin.watch_connection_events(watch_request(cursor)).await.unwrap_err();
        assert_reason(&err, Code::OutOfRange, "EVENT_CURSOR_EXPIRED");
    }
    // The RPC itself is in the policy like any other.
    let mut reader = bearer_client(app.addr, Some("token-reader")).await;
    let err = reader.watch_connection_events(watch_request("")).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_that_does_not_read_is_ended_as_too_slow_and_the_vault_carries_on() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[events]\nwatch_buffer = 2\n".into(),
        ..Default::default()
    })
    .await;
    let mut slow = watch(app.client.clone(), watch_request("")).await;
    assert_eq!(app.vault.open_event_watches(), 1);
    // Far more than the HTTP/2 windows between the vault and this client hold.
    insert_events(&app.rows, "slow-", 200_000, 0).await;
    // Not reading: the watcher fills the windows, then its queue, then gives up.
    wait_until(PATIENCE * 3, "the slow watcher to be ended", || async {
        app.vault.open_event_watches() == 0
    })
    .await;

    let mut received = 0usize;
    let ended = loop {
        match tokio::time::timeout(PATIENCE * 3, slow.message()).await.unwrap() {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended without a status after {received} events"),
            Err(status) => break status,
        }
    };
    assert_reason(&ended, Code::ResourceExhausted, "WATCH_TOO_SLOW");
    assert!(received < 200_000, "ended before the end: {received} events");

    // The vault carries on: a new watch works, and so does everything else.
    let mut fresh = watch(app.client.clone(), watch_request("")).await;
    app.connect_tenant("after").await;
    assert_eq!(next_event(&mut fresh).await.tenant_id, "after");
    app.get_token("after").await.unwrap();
}

#[tokio::test]
async fn a_replica_holds_at_most_max_watchers_streams() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[events]\nmax_watchers = 1\n".into(),
        ..Default::default()
    })
    .await;
    let first = watch(app.client.clone(), watch_request("")).await;
    let err = app
        .client
        .clone()
        .watch_connection_events(watch_request(""))
        .await
        .unwrap_err();
    assert_reason(&err, Code::ResourceExhausted, "EVENT_WATCHERS_LIMITED");
    // A client going away frees its slot.
    drop(first);
    wait_until(PATIENCE * 3, "the first watcher to end", || async {
        app.vault.open_event_watches() == 0
    })
    .await;
    let mut second = watch(app.client.clone(), watch_request("")).await;
    app.connect_tenant("acme").await;
    assert_eq!(next_event(&mut second).await.tenant_id, "acme");
}

#[tokio::test]
async fn events_past_retention_are_swept_and_a_cursor_before_them_has_expired() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[events]\nretention = \"1h\"\nsweep_interval = \"100ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut stream = watch(app.client.clone(), watch_request("")).await;
    app.connect_tenant("kept").await;
    let kept = next_event(&mut stream).await;
    drop(stream);
    // Written after `kept`, but two hours old: past retention.
    insert_events(&app.rows, "old-", 3, 2 * 3600).await;
    wait_until(PATIENCE * 3, "the sweep", || async {
        let old: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
            "SELECT count(*) FROM connection_events WHERE tenant_id LIKE 'old-%'"
        )
        .fetch_one(pool)
        .await
        .unwrap());
        old == 0
    })
    .await;
    let kept_rows: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM connection_events WHERE tenant_id = 'kept'"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(kept_rows, 1, "a recent event stays");

    // Resuming after `kept` would skip the deleted events without a word: refused.
    let err = app
        .client
        .clone()
        .watch_connection_events(watch_request(&kept.cursor))
        .await
        .unwrap_err();
    assert_reason(&err, Code::OutOfRange, "EVENT_CURSOR_EXPIRED");

    // Starting over works, and so does resuming from a cursor after the deleted events.
    let mut fresh = watch(app.client.clone(), watch_request("")).await;
    app.connect_tenant("new-1").await;
    let new_1 = next_event(&mut fresh).await;
    assert_eq!(new_1.tenant_id, "new-1");
    drop(fresh);
    app.connect_tenant("new-2").await;
    let mut resumed = watch(app.client.clone(), watch_request(&new_1.cursor)).await;
    assert_eq!(next_event(&mut resumed).await.tenant_id, "new-2");
}

#[tokio::test]
async fn an_event_committed_late_with_a_smaller_id_is_not_skipped() {
    let app = spawn_app_with(TestOptions::default()).await;
    let mut stream = watch(app.client.clone(), watch_request("")).await;
    // A transaction takes its event id first and commits last.
    let mut late = app.pool.begin().await.unwrap();
    let late_id: i64 = sqlx::query_scalar(
        "INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, generation)
         VALUES (0, 'late', 'understory', 'authorized', 'active', 1) RETURNING id",
    )
    .fetch_one(&mut *late)
    .await
    .unwrap();
    app.connect_tenant("early").await;
    let early_id: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT id FROM connection_events WHERE tenant_id = 'early'"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert!(late_id < early_id, "the open transaction holds the smaller id");
    // Delivering `early` now would move the watcher past `late` for good.
    assert_quiet(&mut stream).await;
    late.commit().await.unwrap();

    let first = next_event(&mut stream).await;
    let second = next_event(&mut stream).await;
    assert_eq!([first.tenant_id, second.tenant_id], ["late", "early"]);
}

#[tokio::test]
async fn shutdown_ends_open_watches_so_that_clients_resume_elsewhere() {
    // A grace period no test waits out: had the open watch held the shutdown up, it would last
    // that long.
    let mut app = spawn_app_with(TestOptions {
        extra_toml: "[server]\nshutdown_grace = \"120s\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut stream = watch(app.client.clone(), watch_request("")).await;
    let started = Instant::now();
    app.shut_down().await;
    let ended = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends")
        .expect_err("with a status");
    assert_reason(&ended, Code::Unavailable, "SHUTTING_DOWN");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the shutdown did not wait out its grace period for the open watch"
    );
}

/// The kinds the other lifecycle flows write reach a watcher on another replica too: an import,
/// a keep-alive by the keeper (on whichever replica claims it), and a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imports_keep_alives_and_disconnects_reach_a_watcher_on_another_replica() {
    let cluster = Cluster::start(
        2,
        TestOptions::default(),
        None,
        &[
            ("TOKEN_VAULT_KEEPALIVE__INTERVAL", "200ms"),
            ("TOKEN_VAULT_KEEPALIVE__CLAIM_TTL", "5s"),
        ],
    )
    .await;
    let mut stream = watch(cluster.client(1), watch_request("")).await;
    let mut client = cluster.client(0);

    // Another system's refresh token, imported and validated with one (caller-less) refresh.
    let imported = cluster.provider.mint_refresh_token();
    let answer = client
        .import_connection(proto::ImportConnectionRequest {
            tenant_id: "migrated".into(),
            refresh_token: imported,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.validated);
    assert_eq!(
        summary(&next_event(&mut stream).await),
        owned("migrated", Kind::Imported, Status::Active)
    );

    // Due for a keep-alive now: a keeper refreshes it with nobody asking.
    let rows = Rows::connect(cluster.database_url()).await;
    let due = rows.sql(
        "UPDATE connections SET keepalive_due_at = now() - interval '1 second' WHERE tenant_id = 'migrated'",
        "UPDATE connections SET keepalive_due_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 seconds')
          WHERE tenant_id = 'migrated'",
    );
    on_rows!(rows, |pool| sqlx::query(due)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let kept = next_event(&mut stream).await;
    assert_eq!(
        summary(&kept),
        owned("migrated", Kind::RefreshedByKeepalive, Status::Active)
    );

    let deleted = client
        .delete_connection(proto::DeleteConnectionRequest {
            tenant_id: "migrated".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revocation(), proto::Revocation::Revoked);
    let disconnected = next_event(&mut stream).await;
    assert_eq!(
        summary(&disconnected),
        owned("migrated", Kind::Disconnected, Status::Disconnected)
    );
    assert_quiet(&mut stream).await;

    // The same three from the start, resumed on the first replica from before the keep-alive.
    let mut resumed = watch(cluster.client(0), watch_request(&kept.cursor)).await;
    assert_eq!(summary(&next_event(&mut resumed).await).1, Kind::Disconnected);
    on_rows!(rows, |pool| pool.close().await);
}

/// An ordinary refresh changes no status and writes no event, so it wakes no watcher: the
/// notification comes from a row trigger, which an INSERT of no rows does not fire.
#[tokio::test]
async fn an_ordinary_refresh_notifies_nobody_and_an_event_does() {
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let mut listener = sqlx::postgres::PgListener::connect(app.database_url()).await.unwrap();
    listener.listen("token_vault_connection_events").await.unwrap();
    let first = app.get_token("acme").await.unwrap();
    // Past half the token's two seconds: the next call refreshes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = app.get_token("acme").await.unwrap();
    assert_ne!(refreshed.access_token, first.access_token, "the call refreshed");
    assert!(
        tokio::time::timeout(QUIET, listener.recv()).await.is_err(),
        "a refresh without an event notified watchers"
    );
    app.connect_tenant("globex").await;
    tokio::time::timeout(PATIENCE, listener.recv())
        .await
        .expect("an event notifies")
        .unwrap();
}
