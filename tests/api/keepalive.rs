//! The keeper (idle connections refreshed before their refresh token expires unused, claimed
//! once across replicas, paced) and the retention of rotated refresh tokens.

use std::time::{Duration, Instant};

use token_vault::store::SweepPosition;
use tonic::Code;

use crate::{
    helpers::{assert_reason, on_rows, spawn_app_with, wait_until, Rows, TestApp, TestOptions},
    provider::Fault,
    replicas::Cluster,
};

/// How long the scripted provider's refresh tokens live in the idle-tenant tests.
const REFRESH_TOKEN_LIFE: Duration = Duration::from_secs(6);

async fn count_events(rows: &Rows, kind: &str) -> i64 {
    on_rows!(rows, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM connection_events WHERE kind = $1"
    )
    .bind(kind)
    .fetch_one(pool)
    .await
    .unwrap())
}

/// Makes every connection due for a keep-alive now.
async fn make_all_due(rows: &Rows) {
    let due = rows.sql(
        "UPDATE connections SET keepalive_due_at = now() - interval '1 second'",
        "UPDATE connections SET keepalive_due_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 seconds')",
    );
    on_rows!(rows, |pool| sqlx::query(due)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
}

/// Makes one tenant's connection due for a keep-alive now.
async fn make_due(rows: &Rows, tenant: &str) {
    let due = rows.sql(
        "UPDATE connections SET keepalive_due_at = now() - interval '1 second' WHERE tenant_id = $1",
        "UPDATE connections SET keepalive_due_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 seconds')
          WHERE tenant_id = $1",
    );
    on_rows!(rows, |pool| sqlx::query(due)
        .bind(tenant)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
}

/// A vault whose keeper looks every 200 ms, with an idle tenant whose refresh token lives
/// REFRESH_TOKEN_LIFE (the provider says so in `refresh_token_expires_in`) and is refreshed 4 s
/// before its end. Access tokens live 3 s: past the plain due moment (2 s after issue) but
/// within half the margin, so the keeper waits for the access token to expire first.
async fn idle_tenant(keeper: bool) -> TestApp {
    let app = spawn_app_with(TestOptions {
        access_ttl: 3,
        extra_toml: format!(
            r#"
[keepalive]
enabled = {keeper}
interval = "200ms"
claim_ttl = "5s"
[providers.understory]
keepalive_before = "4s"
"#
        ),
        ..Default::default()
    })
    .await;
    app.provider.set_refresh_ttl(REFRESH_TOKEN_LIFE);
    app.connect_tenant("acme").await;
    app
}

#[tokio::test]
async fn an_idle_tenant_is_kept_alive_across_several_refresh_token_lifetimes_with_no_caller() {
    let app = idle_tenant(true).await;
    // More than three lifetimes, and not one GetAccessToken.
    tokio::time::sleep(REFRESH_TOKEN_LIFE * 3 + Duration::from_secs(2)).await;

    let stats = app.provider.stats();
    assert!(
        stats.refreshes_ok >= 3,
        "at least one keep-alive per lifetime: {stats:?}"
    );
    assert_eq!((stats.reuse_detected, stats.expired_presented), (0, 0), "{stats:?}");
    assert_eq!(stats.refresh_requests, stats.refreshes_ok, "{stats:?}");
    // Every one of them was the keeper's, and says so.
    let kept = count_events(&app.rows, "refreshed_by_keepalive").await;
    assert_eq!(kept as usize, stats.refreshes_ok);
    // Each keep-alive waited for the access token in circulation (3 s) rather than refreshing
    // at the plain due moment (2 s after issue), which would have cut off its holders.
    let presented = app.provider.refresh_requests();
    for pair in presented.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(2500),
            "a keep-alive 3 s after the previous token's issue, not 2 s: {gap:?}"
        );
    }

    let token = app.get_token("acme").await.expect("the tenant is alive");
    // The newest token, or the one before if a keep-alive is at the provider at this moment.
    let issued = app.provider.state.lock().unwrap().issued_access_tokens.clone();
    assert!(issued[issued.len() - 2..].contains(&token.access_token));
    let stats = app.provider.stats();
    assert_eq!((stats.reuse_detected, stats.expired_presented), (0, 0), "{stats:?}");
}

/// The control: the same idle tenant without a keeper is dead once its refresh token's life
/// is over, so the test's clock really expires tokens.
#[tokio::test]
async fn without_the_keeper_an_idle_tenant_dies_with_its_refresh_token() {
    let app = idle_tenant(false).await;
    tokio::time::sleep(REFRESH_TOKEN_LIFE + Duration::from_secs(1)).await;
    assert_eq!(app.provider.stats().refresh_requests, 0, "nothing refreshed it");

    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    let stats = app.provider.stats();
    assert_eq!(stats.expired_presented, 1, "{stats:?}");
    assert_eq!(count_events(&app.rows, "refreshed_by_keepalive").await, 0);
}

/// Three processes' keepers, fifty connections due at once: each is refreshed exactly once,
/// by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_is_claimed_exactly_once_across_three_processes() {
    const TENANTS: usize = 50;
    let cluster = Cluster::start(
        3,
        TestOptions::default(),
        None,
        &[
            ("TOKEN_VAULT_KEEPALIVE__INTERVAL", "200ms"),
            ("TOKEN_VAULT_KEEPALIVE__MAX_PER_SECOND", "50"),
            ("TOKEN_VAULT_KEEPALIVE__CLAIM_TTL", "30s"),
        ],
    )
    .await;
    for i in 0..TENANTS {
        cluster.connect_tenant(&format!("tenant-{i}")).await;
    }
    let rows = Rows::connect(cluster.database_url()).await;
    make_all_due(&rows).await;

    wait_until(Duration::from_secs(60), "every connection kept alive", || async {
        count_events(&rows, "refreshed_by_keepalive").await >= TENANTS as i64
    })
    .await;
    // Room for a duplicate to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stats = cluster.provider.stats();
    assert_eq!(stats.refresh_requests, TENANTS, "{stats:?}");
    assert_eq!((stats.refreshes_ok, stats.reuse_detected), (TENANTS, 0), "{stats:?}");
    let mut presented: Vec<String> = cluster
        .provider
        .refresh_requests()
        .into_iter()
        .map(|(_, rt)| rt)
        .collect();
    presented.sort();
    presented.dedup();
    assert_eq!(presented.len(), TENANTS, "each refresh token presented once");
    assert_eq!(count_events(&rows, "refreshed_by_keepalive").await, TENANTS as i64);
    let counts = rows.sql(
        "SELECT count(*) FILTER (WHERE generation = 2), count(*) FILTER (WHERE keepalive_due_at > now())
           FROM connections",
        "SELECT count(*) FILTER (WHERE generation = 2),
                count(*) FILTER (WHERE keepalive_due_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
           FROM connections",
    );
    let (generation_2, due_later): (i64, i64) =
        on_rows!(rows, |pool| sqlx::query_as(counts).fetch_one(pool).await.unwrap());
    assert_eq!(
        (generation_2, due_later),
        (TENANTS as i64, TENANTS as i64),
        "one refresh each, and the next keep-alive due with the new refresh token"
    );
}

/// max_per_second bounds how fast one replica starts keep-alives, however many are due.
#[tokio::test]
async fn keep_alives_are_paced_at_max_per_second() {
    const TENANTS: usize = 20;
    let app = spawn_app_with(TestOptions {
        extra_toml: r#"
[keepalive]
interval = "200ms"
max_per_second = 5
claim_ttl = "30s"
"#
        .into(),
        ..Default::default()
    })
    .await;
    for i in 0..TENANTS {
        app.connect_tenant(&format!("tenant-{i}")).await;
    }
    make_all_due(&app.rows).await;
    wait_until(Duration::from_secs(60), "every connection kept alive", || async {
        count_events(&app.rows, "refreshed_by_keepalive").await >= TENANTS as i64
    })
    .await;

    let mut times: Vec<Instant> = app.provider.refresh_requests().into_iter().map(|(at, _)| at).collect();
    times.sort();
    assert_eq!(times.len(), TENANTS);
    // An upper bound on the rate only: a slow machine spreads them further. A one-second
    // window can hold both ends of five 200 ms gaps, hence 6, plus one for timer jitter.
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 7,
            "{in_window} keep-alives within one second at 5 per second"
        );
    }
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= Duration::from_millis(3400),
        "20 keep-alives at 5 per second take about 3.8 s, not {span:?}"
    );
}

#[derive(sqlx::FromRow, Debug)]
struct KeeperState {
    status: String,
    last_error: Option<String>,
    claim_after_error: Option<f64>,
    due_later: Option<bool>,
}

async fn keeper_state(rows: &Rows, tenant: &str) -> KeeperState {
    let state = rows.sql(
        "SELECT status, last_error,
                EXTRACT(EPOCH FROM keepalive_claimed_until - last_error_at)::float8 AS claim_after_error,
                keepalive_due_at > now() AS due_later
           FROM connections WHERE tenant_id = $1",
        "SELECT status, last_error,
                -- Stored to the millisecond: the difference in whole milliseconds, as seconds.
                round((unixepoch(keepalive_claimed_until, 'subsec') - unixepoch(last_error_at, 'subsec')) * 1000)
                    / 1000.0 AS claim_after_error,
                keepalive_due_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS due_later
           FROM connections WHERE tenant_id = $1",
    );
    on_rows!(rows, |pool| sqlx::query_as(state)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap())
}

/// A keep-alive the provider answers 503 records the error and is tried again once its claim
/// lapses; one the provider rejects marks the connection dead, with its event.
#[tokio::test]
async fn a_failed_keep_alive_backs_off_for_its_claim_and_a_rejected_one_needs_reauthorization() {
    let app = spawn_app_with(TestOptions {
        extra_toml: r#"
[keepalive]
interval = "200ms"
claim_ttl = "2s"
"#
        .into(),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    // Every attempt of one refresh (refresh.max_attempts = 3 in tests).
    for _ in 0..3 {
        app.provider.push_fault(Fault::Answer(503, "{}"));
    }
    make_due(&app.rows, "acme").await;
    wait_until(Duration::from_secs(10), "the failure recorded", || async {
        keeper_state(&app.rows, "acme").await.last_error.is_some()
    })
    .await;
    let failed = keeper_state(&app.rows, "acme").await;
    assert_eq!(failed.status, "active");
    assert_eq!(failed.last_error.as_deref(), Some("provider_unavailable"));
    assert_eq!(
        failed.claim_after_error,
        Some(2.0),
        "claimed for claim_ttl from the failure"
    );
    assert_eq!(app.provider.stats().refresh_requests, 3);

    wait_until(Duration::from_secs(15), "the keep-alive retried", || async {
        count_events(&app.rows, "refreshed_by_keepalive").await == 1
    })
    .await;
    let presented = app.provider.refresh_requests();
    assert_eq!(presented.len(), 4, "three failed attempts, then one retry");
    let backoff = presented[3].0 - presented[2].0;
    assert!(
        backoff >= Duration::from_millis(1900),
        "retried only after the claim: {backoff:?}"
    );
    let kept = keeper_state(&app.rows, "acme").await;
    assert_eq!((kept.last_error, kept.due_later), (None, Some(true)));

    // Rejected: the customer revoked consent at the provider.
    app.connect_tenant("beta").await;
    app.provider.revoke_all();
    make_due(&app.rows, "beta").await;
    wait_until(Duration::from_secs(10), "the connection marked dead", || async {
        count_events(&app.rows, "reauthorization_required").await >= 1
    })
    .await;
    let dead = keeper_state(&app.rows, "beta").await;
    assert_eq!(dead.status, "reauthorization_required");
    assert_eq!(dead.last_error.as_deref(), Some("invalid_grant"));
    assert_eq!(dead.due_later, None, "nothing left to keep alive");
    let err = app.get_token("beta").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
}

/// A provider that answers a keep-alive without a new refresh token (it does not rotate):
/// refreshing again would not renew the refresh token either, so the connection is no longer
/// due, rather than claimed and refreshed over and over.
#[tokio::test]
async fn a_keep_alive_that_brings_no_new_refresh_token_is_not_repeated() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[keepalive]\ninterval = \"200ms\"\nclaim_ttl = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.provider.state.lock().unwrap().issue_refresh_tokens = false;
    make_due(&app.rows, "acme").await;
    wait_until(Duration::from_secs(10), "the keep-alive", || async {
        count_events(&app.rows, "refreshed_by_keepalive").await == 1
    })
    .await;
    // Several intervals and claim lifetimes later: still that one refresh.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.provider.stats().refresh_requests, 1);
    let (due, has_refresh_token): (Option<time::OffsetDateTime>, bool) = on_rows!(app.rows, |pool| {
        sqlx::query_as(
        "SELECT keepalive_due_at, EXISTS (SELECT 1 FROM refresh_tokens WHERE superseded_at IS NULL AND token IS NOT NULL)
           FROM connections WHERE tenant_id = 'acme'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
    });
    assert_eq!(
        (due, has_refresh_token),
        (None, true),
        "the refresh token it has stays current"
    );
}

/// Which generations of a connection's refresh tokens still hold a ciphertext, which were
/// purged, and which is current.
async fn refresh_token_rows(rows: &Rows) -> Vec<(i64, bool, bool, bool)> {
    on_rows!(rows, |pool| sqlx::query_as(
        "SELECT generation, token IS NOT NULL, purged_at IS NOT NULL, superseded_at IS NULL
           FROM refresh_tokens ORDER BY generation",
    )
    .fetch_all(pool)
    .await
    .unwrap())
}

/// A vault with 1-second access tokens and the given retention, and one tenant refreshed ten
/// times by its callers (generations 1 to 11).
async fn refreshed_ten_times(keep_for: &str) -> TestApp {
    let app = spawn_app_with(TestOptions {
        access_ttl: 1,
        extra_toml: format!(
            r#"
[retention]
keep_generations = 3
keep_for = "{keep_for}"
sweep_interval = "200ms"
"#
        ),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    for _ in 0..10 {
        // Past half the token's life: the margin asks for a refresh.
        tokio::time::sleep(Duration::from_millis(600)).await;
        app.get_token("acme").await.unwrap();
    }
    assert_eq!(app.provider.stats().refreshes_ok, 10);
    app
}

/// Generations 1..=11: the newest three superseded (8, 9, 10) and the current (11) keep their
/// ciphertext, older ones are purged and kept as rows.
fn purged_but_three(rows: &[(i64, bool, bool, bool)]) {
    let expected: Vec<(i64, bool, bool, bool)> = (1..=11)
        .map(|generation| {
            let kept = generation >= 8;
            (generation, kept, !kept, generation == 11)
        })
        .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn retention_purges_superseded_ciphertexts_outside_both_bounds_and_keeps_their_rows() {
    let (swept, kept) = tokio::join!(refreshed_ten_times("0s"), refreshed_ten_times("1h"));

    // Outside both bounds (older than three superseded generations, superseded over 0 s ago):
    // the sweeper purges them.
    wait_until(Duration::from_secs(10), "the sweeper purged", || async {
        refresh_token_rows(&swept.rows).await.iter().filter(|r| r.2).count() == 7
    })
    .await;
    purged_but_three(&refresh_token_rows(&swept.rows).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    swept
        .get_token("acme")
        .await
        .expect("the current token still refreshes");
    assert_eq!(swept.provider.stats().refreshes_ok, 11);

    // Within keep_for: several sweeps later nothing is purged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = refresh_token_rows(&kept.rows).await;
    assert_eq!(rows.len(), 11);
    assert!(
        rows.iter().all(|r| r.1 && !r.2),
        "nothing purged within keep_for: {rows:?}"
    );

    // In statements that each look at a bounded number of candidates, oldest first: 2 per
    // statement here, so generations 1..=10 take five statements and a sixth finds nothing.
    let retention = || kept.vault.store().retention();
    let mut from = SweepPosition::default();
    let mut statements = Vec::new();
    loop {
        let done = retention().purge_superseded(3, Duration::ZERO, 2, from).await.unwrap();
        statements.push((done.purged, done.examined));
        if done.examined < 2 {
            break;
        }
        from = done.next;
    }
    assert_eq!(statements, [(2, 2), (2, 2), (2, 2), (1, 2), (0, 2), (0, 0)]);
    purged_but_three(&refresh_token_rows(&kept.rows).await);
    // The current token is never purged, even when no superseded generation is kept.
    let done = retention()
        .purge_superseded(0, Duration::ZERO, 100, SweepPosition::default())
        .await
        .unwrap();
    assert_eq!(
        (done.purged, done.examined),
        (3, 3),
        "only superseded tokens are candidates"
    );
    let rows = refresh_token_rows(&kept.rows).await;
    assert_eq!(rows.iter().filter(|r| r.1).map(|r| r.0).collect::<Vec<_>>(), [11]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    kept.get_token("acme").await.expect("the current token still refreshes");
    assert_eq!(kept.provider.stats().refreshes_ok, 11);
}

/// Connections of a provider no longer configured can't be refreshed; they are never claimed,
/// so however many there are, they don't take the keeper's pace from those it can keep alive.
#[tokio::test]
async fn connections_of_a_provider_no_longer_configured_do_not_starve_the_keeper() {
    let app = spawn_app_with(TestOptions {
        extra_toml: r#"
[keepalive]
interval = "200ms"
max_per_second = 2
claim_ttl = "5s"
"#
        .into(),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    // Long overdue connections of a provider that left the configuration, more than the
    // keeper may start in the whole test.
    let departed = app.rows.sql(
        "INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, keepalive_due_at)
         SELECT 'gone-' || g, 'departed', 'active', '{}', 1, 'bearer', '\\x00', now(), now() + interval '1 hour',
                now(), now() - interval '1 day'
           FROM generate_series(1, 200) g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200)
         INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, keepalive_due_at)
         SELECT 'gone-' || n, 'departed', 'active', '[]', 1, 'bearer', X'00', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3600 seconds'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-86400 seconds')
           FROM g",
    );
    on_rows!(app.rows, |pool| sqlx::query(departed)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    make_due(&app.rows, "acme").await;
    wait_until(
        Duration::from_secs(10),
        "the configured connection kept alive",
        || async { count_events(&app.rows, "refreshed_by_keepalive").await == 1 },
    )
    .await;
    let claimed: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM connections WHERE provider = 'departed' AND keepalive_claimed_until IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(claimed, 0, "no connection of the departed provider was claimed");
}
