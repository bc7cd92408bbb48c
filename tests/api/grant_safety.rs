//! Ordinary days that must not cost a customer their grant: a rolling update while a refresh
//! waits on a slow provider, or while a read runs for a caller after the caller that started
//! it gave up, callers that give up by the thousand, a provider answer that
//! would crash the refresh, and provider answers that leave open whether the refresh token was
//! consumed. Real processes (or the real server on a port), the real database, and the
//! scripted Hydra-like provider, which counts every reuse of a refresh token.

use std::time::{Duration, Instant};

use token_vault::proto;
use tonic::Code;

use crate::{
    helpers::{assert_reason, get_token_within, on_rows, spawn_app_with, Rows, TestOptions},
    provider::Fault,
    replicas::Cluster,
    report::{record, FaultReport},
};

/// Access tokens live 4 s here; with the margin capped at half the lifetime, one needs
/// refreshing 2 s after it was issued.
const TTL: u64 = 4;
const UNTIL_EXPIRED: Duration = Duration::from_millis(2100);

/// Hydra's words to the loser of a concurrent refresh (fosite `flow_refresh.go`).
const CONCURRENT: &str = r#"{"error":"invalid_request","error_description":"Failed to refresh token because of multiple concurrent requests using the same token which is not allowed."}"#;
const ALREADY_USED: &str = r#"{"error":"invalid_grant","error_description":"The refresh token was already used."}"#;

fn opts() -> TestOptions {
    TestOptions {
        access_ttl: TTL,
        ..Default::default()
    }
}

async fn wait_for_refresh_requests(cluster: &Cluster, n: usize) {
    let started = Instant::now();
    while cluster.provider.stats().refresh_requests < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the provider never saw refresh request {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lets the refresh lease lapse early, as it would for a replica paused past its lease (a
/// stalled node, a long GC-like stop): the only way two vault presenters can race.
async fn lapse_lease(cluster: &Cluster) {
    let rows = Rows::connect(cluster.database_url()).await;
    let lapse = rows.sql(
        "UPDATE connections SET refresh_lease_until = now() WHERE refresh_lease_holder IS NOT NULL",
        "UPDATE connections SET refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
          WHERE refresh_lease_holder IS NOT NULL",
    );
    let lapsed = on_rows!(rows, |pool| sqlx::query(lapse)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    assert_eq!(lapsed, 1, "a refresh held the lease");
}

async fn connection_status(database_url: &str) -> (String, Option<String>, i64) {
    let rows = Rows::connect(database_url).await;
    on_rows!(rows, |pool| sqlx::query_as(
        "SELECT status, status_reason, generation FROM connections"
    )
    .fetch_one(pool)
    .await
    .unwrap())
}

/// A rolling update during a refresh: the caller gave up, the provider has already rotated the
/// refresh token, and Kubernetes sends SIGTERM. The process stays until the rotated token is
/// stored, so the other replica serves the tenant and the provider never sees the spent token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_a_refresh_waits_on_the_provider_stores_the_rotated_token_before_exiting() {
    let mut cluster = Cluster::start(
        2,
        opts(),
        None,
        &[
            ("TOKEN_VAULT_PROVIDERS__UNDERSTORY__REQUEST_TIMEOUT", "5s"),
            ("TOKEN_VAULT_REFRESH__MAX_ATTEMPTS", "1"),
            ("TOKEN_VAULT_REFRESH__LEASE_TTL", "10s"),
        ],
    )
    .await;
    cluster.connect_tenant("acme").await;
    // The refreshed token lives an hour, so that the slow answer leaves it fresh.
    cluster.provider.set_access_ttl(3600);
    tokio::time::sleep(UNTIL_EXPIRED).await;
    // Rotated at once, answered after 3 s.
    cluster.provider.push_fault(Fault::Slow(Duration::from_secs(3)));
    let gave_up = get_token_within(&mut cluster.client(0), "acme", Duration::from_secs(1)).await;
    assert_eq!(
        gave_up.unwrap_err().code(),
        Code::DeadlineExceeded,
        "the caller left first"
    );
    assert_eq!(
        cluster.provider.stats().refresh_requests,
        1,
        "the refresh is at the provider"
    );

    let terminated = Instant::now();
    cluster.terminate(0);
    let status = cluster.wait_exit(0, Duration::from_secs(20)).await;
    assert!(status.success(), "a drained process exits cleanly: {status:?}");
    let rotated = cluster.provider.newest_access_token();

    let served = get_token_within(&mut cluster.client(1), "acme", Duration::from_secs(15))
        .await
        .expect("the other replica serves the tenant");
    assert_eq!(served, rotated, "with the token the terminated replica stored");
    let stats = cluster.provider.stats();
    assert_eq!(
        stats.reuse_detected, 0,
        "the spent refresh token was never presented again"
    );
    assert_eq!(stats.refresh_requests, 1, "and nothing was refreshed twice");
    let (status, _, generation) = connection_status(cluster.database_url()).await;
    assert_eq!((status.as_str(), generation), ("active", 2));
    let logs = cluster.logs();
    assert!(
        logs.contains("waiting for refreshes in flight to finish"),
        "the drain was logged"
    );
    // The process waited for the provider's answer (≈2 s after SIGTERM), not for its lease.
    let exited_after = terminated.elapsed();
    assert!(exited_after < Duration::from_secs(10), "took {exited_after:?}");
    record(
        "8-sigterm-mid-refresh",
        FaultReport {
            fault: "SIGTERM to the replica whose refresh waits on a slow provider (3 s, token already rotated), its caller gone after 1 s",
            happened: format!(
                "the replica stopped taking calls, waited for the provider's answer, stored the rotated token and exited 0 \
                 ({} ms after SIGTERM); the other replica served the stored token",
                exited_after.as_millis()
            ),
            token_requests: stats.refresh_requests,
            tenants_lost: 0,
            callers_saw: "1 × DeadlineExceeded (the caller that left), then 1 × token from the other replica".into(),
        },
    );
}

/// How many calls ended because their caller gave up (its deadline, or a cancellation).
fn gave_up<T>(outcomes: &[Result<T, tonic::Status>]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o, Err(s) if s.code() == Code::DeadlineExceeded || s.code() == Code::Cancelled))
        .count()
}

/// Waits up to 5 s for every connection of `store`'s pool to be idle again.
async fn wait_for_idle_pool(store: &token_vault::store::Store) {
    let started = Instant::now();
    loop {
        let (size, idle) = store.pool_usage();
        if idle == size as usize {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pool never went back to idle: {idle} of {size} connections idle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Thousands of callers that give up mid-read must not keep pooled connections: afterwards the
/// vault answers at once, health is SERVING, and the pool is back to idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_giving_up_by_the_thousand_leave_the_pool_idle() {
    let app = spawn_app_with(TestOptions::default()).await;
    app.connect_tenant("acme").await;
    let calls = (0..3000u64).map(|i| {
        let mut client = app.client.clone();
        // Deadlines of 0.5 to 8 ms: most expire while their read is queued or in flight.
        let timeout = Duration::from_micros(500 + (i * 7919) % 7500);
        async move { get_token_within(&mut client, &format!("ghost-{i}"), timeout).await }
    });
    let outcomes = futures::future::join_all(calls).await;
    let gave_up = gave_up(&outcomes);
    assert!(gave_up > 100, "most callers gave up mid-call ({gave_up} of 3000)");

    // Another caller, on a connection of its own: the HTTP/2 layer may close the first one
    // after so many reset streams (its rapid-reset defence), which is its business.
    let mut caller = crate::helpers::connect(app.addr).await;
    let asked = Instant::now();
    let served = get_token_within(&mut caller, "acme", Duration::from_secs(5)).await;
    assert!(served.is_ok(), "a connected tenant is served: {served:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "at once: {:?}",
        asked.elapsed()
    );
    let unknown = get_token_within(&mut caller, "ghost-again", Duration::from_secs(5)).await;
    assert_reason(&unknown.unwrap_err(), Code::NotFound, "CONNECTION_NOT_FOUND");

    wait_for_idle_pool(app.vault.store()).await;

    let serving = token_vault::startup::probe_health(&format!("http://{}", app.addr))
        .await
        .expect("health answers");
    assert!(serving, "health is SERVING");
}

/// Callers that give up while sharing cache-miss reads with callers that do not: a read
/// whose leader gives up goes on for those still waiting, and is dropped once none is left.
/// Every patient caller gets its tenant's one token, and the pool ends idle. (Nearly every call
/// misses the cache here: entries are trusted for 1 ms.) What this cannot show from outside is
/// how many reads ran; the unit tests in `src/vault/reads.rs` count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_giving_up_on_a_shared_read_leave_the_others_served() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[vault]\ncache_max_age = \"1ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let tenants: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    for tenant in &tenants {
        app.connect_tenant(tenant).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The patient callers on a connection of their own: the HTTP/2 layer may close the
    // impatient ones' after so many reset streams (its rapid-reset defence).
    let patient_connection = crate::helpers::connect(app.addr).await;
    let calls = (0..3000u64).map(|i| {
        // Every other caller gives up within 0.5 to 8 ms; the rest wait up to 10 s.
        let patient = i % 2 == 1;
        let mut client = if patient {
            patient_connection.clone()
        } else {
            app.client.clone()
        };
        let tenant = tenants[((i / 2) % 10) as usize].clone();
        let timeout = if patient {
            Duration::from_secs(10)
        } else {
            Duration::from_micros(500 + (i * 7919) % 7500)
        };
        async move {
            let outcome = get_token_within(&mut client, &tenant, timeout).await;
            (tenant, patient, outcome)
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let impatient: Vec<_> = outcomes
        .iter()
        .filter(|(_, patient, _)| !patient)
        .map(|(_, _, outcome)| outcome.clone())
        .collect();
    let gave_up = gave_up(&impatient);
    assert!(gave_up > 100, "many callers gave up mid-call ({gave_up} of 1500)");
    let mut tokens = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (tenant, patient, outcome) in &outcomes {
        match outcome {
            Ok(token) => {
                tokens.entry(tenant.clone()).or_default().insert(token.clone());
            }
            Err(status) => assert!(!patient, "a patient caller of {tenant} was not served: {status:?}"),
        }
    }
    assert_eq!(tokens.len(), 10, "every tenant was served");
    assert!(
        tokens.values().all(|served| served.len() == 1),
        "each tenant's callers got its one token: {:?}",
        tokens.values().map(|served| served.len()).collect::<Vec<_>>()
    );
    wait_for_idle_pool(app.vault.store()).await;
}

/// Callers that give up by the thousand in the middle of BeginAuthorization, whose store call
/// is a transaction under a per-tenant lock (Postgres's advisory lock, SQLite's write lock):
/// none leaves its transaction open on a pooled connection. On Postgres no session of the
/// vault stays `idle in transaction` once the pool is idle; on both stores the next
/// BeginAuthorization is answered at once. Each store's pool once failed it: a caller gone
/// while its BEGIN was in flight (Postgres) or just after (SQLite's `BEGIN IMMEDIATE`) left a
/// connection inside a transaction nothing would end, back in the pool for the next writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_giving_up_mid_transaction_by_the_thousand_leave_no_transaction_open() {
    let app = spawn_app_with(TestOptions::default()).await;
    let calls = (0..3000u64).map(|i| {
        let mut client = app.client.clone();
        // Deadlines of 0.5 to 8 ms, as above; eight tenants, so that begins queue on each
        // tenant's lock.
        let timeout = Duration::from_micros(500 + (i * 7919) % 7500);
        async move {
            let mut request = tonic::Request::new(proto::BeginAuthorizationRequest {
                tenant_id: format!("tenant-{}", i % 8),
                ..Default::default()
            });
            request.set_timeout(timeout);
            client.begin_authorization(request).await
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let gave_up = gave_up(&outcomes);
    assert!(gave_up > 100, "most callers gave up mid-call ({gave_up} of 3000)");

    wait_for_idle_pool(app.vault.store()).await;
    // A session the vault closed because it was inside a transaction may show for a moment
    // while its server process exits; one the pool kept would show for good.
    if let Rows::Postgres(pool) = &app.rows {
        let started = Instant::now();
        loop {
            let open: Vec<(String, String)> = sqlx::query_as(
                "SELECT state, coalesce(query, '') FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid() \
                    AND state LIKE 'idle in transaction%'",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            if open.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "sessions left inside a transaction: {open:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut caller = crate::helpers::connect(app.addr).await;
    let asked = Instant::now();
    let begun = caller
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: "tenant-0".into(),
            ..Default::default()
        })
        .await;
    assert!(begun.is_ok(), "a begin after the storm is answered: {begun:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "at once: {:?}",
        asked.elapsed()
    );
}

/// A `Retry-After` no clock can add (u64::MAX seconds) once panicked the refresh task and left
/// the tenant answering INTERNAL on that replica until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_retry_after_is_capped_and_the_tenant_recovers_when_the_provider_does() {
    let cluster = Cluster::start(1, opts(), None, &[]).await;
    cluster.connect_tenant("acme").await;
    tokio::time::sleep(UNTIL_EXPIRED).await;
    cluster
        .provider
        .push_fault(Fault::RetryAfter(503, "18446744073709551615"));
    let refused = get_token_within(&mut cluster.client(0), "acme", Duration::from_secs(5))
        .await
        .unwrap_err();
    let metadata = assert_reason(&refused, Code::Unavailable, "PROVIDER_UNAVAILABLE");
    let retry_after_ms: u64 = metadata["retry_after_ms"].parse().unwrap();
    assert!(
        retry_after_ms <= 10_000,
        "capped at the lease (10 s here): {retry_after_ms} ms"
    );

    let served = get_token_within(&mut cluster.client(0), "acme", Duration::from_secs(5)).await;
    assert_eq!(
        served.expect("the tenant is served once the provider is healthy"),
        cluster.provider.newest_access_token()
    );
    let stats = cluster.provider.stats();
    assert_eq!(stats.reuse_detected, 0);
    assert!(!cluster.logs().contains("panicked"), "no task panicked");
    record(
        "9-absurd-retry-after",
        FaultReport {
            fault: "the provider answers a refresh 503 with Retry-After: 18446744073709551615",
            happened: format!(
                "the wait was capped at the lease (retry_after_ms {retry_after_ms}), the lease released; the next call refreshed"
            ),
            token_requests: stats.refresh_requests,
            tenants_lost: 0,
            callers_saw: "1 × Unavailable (PROVIDER_UNAVAILABLE), then 1 × token".into(),
        },
    );
}

/// Two presenters raced (the first replica's lease lapsed while its request was at the
/// provider). The loser is told "multiple concurrent requests" after the winner committed;
/// presenting the token again would be reuse and revoke the winner's new tokens with the rest
/// of the grant. The loser adopts the winner's token instead, and the chain lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_loser_of_a_race_told_concurrent_adopts_the_winners_token_and_the_chain_survives() {
    let cluster = Cluster::start(
        2,
        opts(),
        None,
        &[
            ("TOKEN_VAULT_PROVIDERS__UNDERSTORY__REQUEST_TIMEOUT", "2s"),
            ("TOKEN_VAULT_REFRESH__MAX_ATTEMPTS", "3"),
            ("TOKEN_VAULT_REFRESH__LEASE_TTL", "10s"),
        ],
    )
    .await;
    cluster.connect_tenant("acme").await;
    tokio::time::sleep(UNTIL_EXPIRED).await;
    // The winner: rotated at once, its answer (and so its commit) 1.5 s later.
    cluster.provider.push_fault(Fault::Slow(Duration::from_millis(1500)));
    let winner = tokio::spawn({
        let mut client = cluster.client(0);
        async move { get_token_within(&mut client, "acme", Duration::from_secs(8)).await }
    });
    wait_for_refresh_requests(&cluster, 1).await;
    lapse_lease(&cluster).await;
    cluster.provider.push_fault(Fault::Answer(400, CONCURRENT));
    let loser = get_token_within(&mut cluster.client(1), "acme", Duration::from_secs(8)).await;
    let winners = winner.await.unwrap().expect("the winner's caller is served");

    let stats = cluster.provider.stats();
    assert_eq!(stats.reuse_detected, 0, "the loser never presented the token again");
    assert_eq!(stats.refresh_requests, 2, "one request each");
    assert_eq!(loser.expect("the loser's caller gets the winner's token"), winners);
    // The chain is intact: the next expiry refreshes normally.
    tokio::time::sleep(UNTIL_EXPIRED).await;
    let next = get_token_within(&mut cluster.client(1), "acme", Duration::from_secs(5))
        .await
        .expect("the next refresh works");
    assert_ne!(next, winners);
    let stats = cluster.provider.stats();
    assert_eq!((stats.refreshes_ok, stats.reuse_detected), (2, 0));
    let (status, reason, _) = connection_status(cluster.database_url()).await;
    assert_eq!((status.as_str(), reason), ("active", None));
    record(
        "10-concurrent-answer-after-winner",
        FaultReport {
            fault: "two replicas present the same refresh token (the first one's lease lapsed mid-request); the loser is answered `invalid_request` \"multiple concurrent requests\"",
            happened: "the loser did not present the token again; it watched the row, adopted the winner's stored token, and the chain refreshed normally at the next expiry".into(),
            token_requests: stats.refresh_requests,
            tenants_lost: 0,
            callers_saw: "2 × token (the same one), then 1 × token".into(),
        },
    );
}

/// Told "concurrent" with nobody's successor landing: the token is held back for the lease, the
/// caller hears REFRESH_OUTCOME_UNKNOWN, the connection says so, and nothing is presented
/// again until the lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unexplained_concurrent_answer_holds_the_token_back_until_the_lease_lapses() {
    let cluster = Cluster::start(
        1,
        opts(),
        None,
        &[
            ("TOKEN_VAULT_PROVIDERS__UNDERSTORY__REQUEST_TIMEOUT", "1s"),
            ("TOKEN_VAULT_REFRESH__MAX_ATTEMPTS", "3"),
            ("TOKEN_VAULT_REFRESH__LEASE_TTL", "6s"),
        ],
    )
    .await;
    cluster.connect_tenant("acme").await;
    tokio::time::sleep(UNTIL_EXPIRED).await;
    cluster.provider.push_fault(Fault::Answer(400, CONCURRENT));
    let asked = Instant::now();
    let refused = get_token_within(&mut cluster.client(0), "acme", Duration::from_secs(8))
        .await
        .unwrap_err();
    let metadata = assert_reason(&refused, Code::Unavailable, "REFRESH_OUTCOME_UNKNOWN");
    assert!(metadata.contains_key("retry_after_ms"));
    assert_eq!(cluster.provider.stats().refresh_requests, 1, "presented once");
    let (status, reason, _) = connection_status(cluster.database_url()).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("active", Some("refresh_outcome_unknown"))
    );

    // Nothing presents the token while the lease holds; afterwards it is the only way on.
    let served = get_token_within(&mut cluster.client(0), "acme", Duration::from_secs(10))
        .await
        .expect("served once the lease has lapsed");
    assert!(asked.elapsed() >= Duration::from_secs(5), "{:?}", asked.elapsed());
    assert_eq!(served, cluster.provider.newest_access_token());
    assert_eq!(cluster.provider.stats().refresh_requests, 2);
    let (_, reason, _) = connection_status(cluster.database_url()).await;
    assert_eq!(reason, None, "a successful refresh clears the reason");
    record(
        "11-concurrent-answer-unexplained",
        FaultReport {
            fault: "a refresh answered `invalid_request` \"multiple concurrent requests\" with no other presenter's token landing (lease 6 s)",
            happened: format!(
                "the token was held back until the lease lapsed (connection reason refresh_outcome_unknown), then presented once more and the refresh succeeded {} ms after the first call",
                asked.elapsed().as_millis()
            ),
            token_requests: cluster.provider.stats().refresh_requests,
            tenants_lost: 0,
            callers_saw: "1 × Unavailable (REFRESH_OUTCOME_UNKNOWN), then 1 × token".into(),
        },
    );
}

/// After a lost race (`invalid_grant`, and the generation has moved) the task adopts the
/// winner's still valid token; refreshing again would kill the access token the winner's
/// callers just received.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_lost_race_the_winners_valid_token_is_adopted_not_refreshed_away() {
    let cluster = Cluster::start(
        2,
        opts(),
        None,
        &[
            ("TOKEN_VAULT_PROVIDERS__UNDERSTORY__REQUEST_TIMEOUT", "3s"),
            ("TOKEN_VAULT_REFRESH__MAX_ATTEMPTS", "1"),
            ("TOKEN_VAULT_REFRESH__LEASE_TTL", "10s"),
        ],
    )
    .await;
    cluster.connect_tenant("acme").await;
    tokio::time::sleep(UNTIL_EXPIRED).await;
    cluster.provider.push_fault(Fault::Slow(Duration::from_millis(800)));
    let winner = tokio::spawn({
        let mut client = cluster.client(0);
        async move { get_token_within(&mut client, "acme", Duration::from_secs(8)).await }
    });
    wait_for_refresh_requests(&cluster, 1).await;
    lapse_lease(&cluster).await;
    // The loser's verdict arrives after the winner has stored its tokens.
    cluster
        .provider
        .push_fault(Fault::AnswerAfter(Duration::from_millis(1800), 400, ALREADY_USED));
    let loser = get_token_within(&mut cluster.client(1), "acme", Duration::from_secs(8)).await;
    let winners = winner.await.unwrap().expect("the winner's caller is served");
    assert_eq!(loser.expect("the loser's caller is served"), winners);
    let stats = cluster.provider.stats();
    assert_eq!(
        stats.refresh_requests, 2,
        "no third refresh killed the winner's access token"
    );
    assert_eq!(cluster.provider.newest_access_token(), winners);
    let (status, _, generation) = connection_status(cluster.database_url()).await;
    assert_eq!((status.as_str(), generation), ("active", 2));
    record(
        "12-invalid-grant-after-winner",
        FaultReport {
            fault: "two replicas present the same refresh token; the loser's `invalid_grant` arrives after the winner stored its tokens",
            happened: "the loser re-read the row, found the newer generation and adopted its still valid token instead of refreshing it away".into(),
            token_requests: stats.refresh_requests,
            tenants_lost: 0,
            callers_saw: "2 × token (the same one)".into(),
        },
    );
}

/// The code is spent once the provider answers the exchange: a database that drops out right
/// then must not throw the tokens away (the customer would have to start over).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_authorization_rides_out_a_database_blip() {
    let app = spawn_app_with(TestOptions::default()).await;
    let begun = app.begin("acme").await;
    let code = app.provider.consent(&begun.authorization_url);
    // The provider answers the exchange after 600 ms; meanwhile the database refuses the vault
    // (connections killed, new ones refused) from 200 ms to 1.5 s.
    app.provider.push_fault(Fault::Slow(Duration::from_millis(600)));
    let database = app.database_name();
    let outage = tokio::spawn(crate::helpers::database_outage(
        database,
        Duration::from_millis(200),
        Duration::from_millis(1300),
    ));
    let completed = app
        .client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await;
    outage.await.unwrap();
    assert!(
        completed.is_ok(),
        "the authorization is stored once the database is back: {completed:?}"
    );
    let token = app.get_token("acme").await.expect("the tenant is connected");
    assert_eq!(
        token.access_token,
        app.provider.state.lock().unwrap().issued_access_tokens[0]
    );
    assert_eq!(app.provider.stats().code_exchanges, 1, "the code was exchanged once");
}

/// Holds `ACCESS EXCLUSIVE` on the `connections` table, so that the vault's cache-miss read
/// waits in Postgres until [`TableLock::release`].
struct TableLock(sqlx::PgConnection);

impl TableLock {
    async fn take(database_url: &str) -> Self {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE connections IN ACCESS EXCLUSIVE MODE")
            .execute(&mut connection)
            .await
            .unwrap();
        Self(connection)
    }

    async fn release(mut self) {
        sqlx::raw_sql("COMMIT").execute(&mut self.0).await.unwrap();
    }
}

/// The vault's cache-miss reads (`find_access_token`'s statement) waiting on a lock in the
/// test's database.
async fn reads_waiting_on_the_lock(database_url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let waiting = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'
            AND query LIKE 'SELECT status, status_reason, scopes, generation, token_type,%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    waiting
}

/// A read handed off: the first caller for `tenant` starts the cache-miss read, which waits
/// on the table lock; a second caller joins it; the first gives up. Returns the second
/// caller's call, still waiting, once the read is shown to have outlived its first caller
/// (still exactly one statement in Postgres: a restarted read would show a second one).
async fn hand_off_a_waiting_read(
    cluster: &Cluster,
    tenant: &str,
) -> tokio::task::JoinHandle<Result<String, tonic::Status>> {
    let call = |timeout: Duration| {
        let (mut client, tenant) = (cluster.client(0), tenant.to_owned());
        tokio::spawn(async move { get_token_within(&mut client, &tenant, timeout).await })
    };
    let leader = call(Duration::from_millis(1500));
    crate::helpers::wait_until(
        Duration::from_secs(5),
        "the first caller's read waits on the lock",
        || async { reads_waiting_on_the_lock(cluster.database_url()).await == 1 },
    )
    .await;
    let patient = call(Duration::from_secs(60));
    let left = leader.await.unwrap();
    assert_eq!(gave_up(&[left]), 1, "the first caller gave up while its read waited");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reads_waiting_on_the_lock(cluster.database_url()).await,
        1,
        "the read went on for the caller still waiting, and no second read started"
    );
    assert!(!patient.is_finished(), "the second caller still waits");
    patient
}

/// One vault process whose cache-miss read for tenant `acme` is held up by a table lock and
/// runs for a caller after the caller that started it gave up ([`hand_off_a_waiting_read`]).
struct HandedOff {
    cluster: Cluster,
    /// The tenant's stored access token, which the read returns.
    issued: String,
    lock: TableLock,
    patient: tokio::task::JoinHandle<Result<String, tonic::Status>>,
}

/// One vault process in which every call reads the database (cache entries are trusted for
/// 1 ms), with `shutdown_grace` as its grace period after SIGTERM. Its tokens stay valid
/// through a test: a read, never a refresh.
async fn reading_cluster(shutdown_grace: &str) -> Cluster {
    Cluster::start(
        1,
        TestOptions::default(),
        None,
        &[
            ("TOKEN_VAULT_VAULT__CACHE_MAX_AGE", "1ms"),
            ("TOKEN_VAULT_SERVER__SHUTDOWN_GRACE", shutdown_grace),
        ],
    )
    .await
}

impl HandedOff {
    /// With `shutdown_grace` as the process's grace period after SIGTERM.
    async fn start(shutdown_grace: &str) -> Self {
        let cluster = reading_cluster(shutdown_grace).await;
        cluster.connect_tenant("acme").await;
        let issued = cluster.provider.newest_access_token();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let lock = TableLock::take(cluster.database_url()).await;
        let patient = hand_off_a_waiting_read(&cluster, "acme").await;
        Self {
            cluster,
            issued,
            lock,
            patient,
        }
    }
}

/// A rolling update while a cache-miss read, abandoned by the caller that started it, runs
/// for another caller and waits on the database: SIGTERM stops new calls but lets that read
/// finish within the grace period, the waiting caller gets the tenant's token, and the
/// process exits cleanly right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_a_handed_off_read_waits_on_the_database_answers_its_caller_before_exiting() {
    let HandedOff {
        mut cluster,
        issued,
        lock,
        patient,
    } = HandedOff::start("30s").await;

    cluster.terminate(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!cluster.has_exited(0), "the process drains the call in flight");
    assert_eq!(
        reads_waiting_on_the_lock(cluster.database_url()).await,
        1,
        "SIGTERM did not cut the read short"
    );
    let released = Instant::now();
    lock.release().await;
    let served = patient.await.unwrap().expect("the waiting caller is served");
    assert_eq!(served, issued, "with the tenant's stored token");
    let status = cluster.wait_exit(0, Duration::from_secs(10)).await;
    assert!(status.success(), "a drained process exits cleanly: {status:?}");
    let exited_after = released.elapsed();
    assert!(
        exited_after < Duration::from_secs(5),
        "exited {exited_after:?} after the read could finish"
    );
    assert_eq!(cluster.provider.stats().refresh_requests, 0, "a read, never a refresh");
    record(
        "16-sigterm-during-handed-off-read",
        FaultReport {
            fault: "SIGTERM while a cache-miss read waits on a table lock in Postgres, its first caller gone and a second caller waiting on it",
            happened: format!(
                "the read went on for the second caller (one statement in Postgres throughout); the process kept draining \
                 until the lock was released, answered the caller with the stored token and exited 0 ({} ms later)",
                exited_after.as_millis()
            ),
            token_requests: 0,
            tenants_lost: 0,
            callers_saw: "1 × Cancelled (the caller that left, by its own deadline), 1 × the stored token".into(),
        },
    );
}

/// The same read past the grace period: the process does not wait for a read the database
/// holds up. It exits when the grace period ends, the waiting caller is answered UNAVAILABLE
/// `SHUTTING_DOWN` (retry elsewhere) rather than left hanging or cut off with its connection,
/// and nothing is lost: once the lock is gone the next process serves the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_past_the_grace_period_does_not_wait_for_a_handed_off_read() {
    let HandedOff {
        mut cluster,
        issued,
        lock,
        patient,
    } = HandedOff::start("1s").await;

    let terminated = Instant::now();
    cluster.terminate(0);
    let status = cluster.wait_exit(0, Duration::from_secs(10)).await;
    let exited_after = terminated.elapsed();
    assert!(
        status.success(),
        "the process exits cleanly past its grace period: {status:?}"
    );
    assert!(
        exited_after < Duration::from_secs(5),
        "exited {exited_after:?} after SIGTERM with a 1 s grace period"
    );
    assert!(
        cluster.logs().contains("calls still in flight after the grace period"),
        "the cut-off was logged"
    );
    let cut_off = tokio::time::timeout(Duration::from_secs(5), patient)
        .await
        .expect("the waiting caller is not left hanging")
        .unwrap()
        .expect_err("the waiting caller gets an error");
    // An answer of the vault's, which clients retry elsewhere, not the dropped connection's
    // UNKNOWN (a transport error).
    assert_reason(&cut_off, Code::Unavailable, "SHUTTING_DOWN");
    lock.release().await;

    let next = cluster.spawn_process().await;
    let served = get_token_within(&mut cluster.client(next), "acme", Duration::from_secs(10))
        .await
        .expect("the next process serves the tenant");
    assert_eq!(served, issued, "with the same stored token");
    assert_eq!(cluster.provider.stats().refresh_requests, 0, "a read, never a refresh");
    record(
        "17-sigterm-past-grace-during-handed-off-read",
        FaultReport {
            fault: "SIGTERM with a 1 s grace period while a cache-miss read waits on a table lock in Postgres, its first caller gone and a second caller waiting on it",
            happened: format!(
                "the process answered the waiting caller UNAVAILABLE (SHUTTING_DOWN) and exited 0 when the grace period ended \
                 ({} ms after SIGTERM) with the read still held up; after the lock was released the next process served \
                 the same stored token",
                exited_after.as_millis()
            ),
            token_requests: 0,
            tenants_lost: 0,
            callers_saw: "1 × Cancelled (the caller that left, by its own deadline), 1 × Unavailable SHUTTING_DOWN \
                          (the caller cut off at exit), then 1 × the stored token"
                .into(),
        },
    );
}

/// Many calls still waiting when the grace period ends, ten callers for each of twenty tenants
/// whose cache-miss reads a table lock holds up: every one is answered UNAVAILABLE
/// `SHUTTING_DOWN` when the grace period ends (none hangs, none sees its connection dropped as
/// UNKNOWN), the process exits 0 right after, and the next process serves every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_past_the_grace_period_answers_every_waiting_call_unavailable() {
    let mut cluster = reading_cluster("1s").await;
    let tenants: Vec<String> = (0..20).map(|i| format!("waiting-{i}")).collect();
    for tenant in &tenants {
        cluster.connect_tenant(tenant).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lock = TableLock::take(cluster.database_url()).await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let (mut client, tenant) = (cluster.client(0), tenants[i % tenants.len()].clone());
            tokio::spawn(async move { get_token_within(&mut client, &tenant, Duration::from_secs(30)).await })
        })
        .collect();
    // Reads wait on the lock, as many as the pool has connections; the other tenants' reads wait
    // for a connection, and their callers with them.
    crate::helpers::wait_until(Duration::from_secs(5), "reads wait on the lock", || async {
        reads_waiting_on_the_lock(cluster.database_url()).await > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads_waiting = reads_waiting_on_the_lock(cluster.database_url()).await;

    let terminated = Instant::now();
    cluster.terminate(0);
    let status = cluster.wait_exit(0, Duration::from_secs(10)).await;
    let exited_after = terminated.elapsed();
    assert!(status.success(), "the process exits cleanly: {status:?}");
    for outcome in futures::future::join_all(calls).await {
        let status = outcome.unwrap().expect_err("no read could finish");
        assert_reason(&status, Code::Unavailable, "SHUTTING_DOWN");
    }
    assert!(
        exited_after >= Duration::from_secs(1) && exited_after < Duration::from_secs(3),
        "the calls were cut off when the 1 s grace period ended, not before nor long after: {exited_after:?}"
    );
    lock.release().await;

    let next = cluster.spawn_process().await;
    for tenant in &tenants {
        get_token_within(&mut cluster.client(next), tenant, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("the next process serves {tenant}: {e:?}"));
    }
    assert_eq!(cluster.provider.stats().refresh_requests, 0, "reads, never a refresh");
    record(
        "18-sigterm-past-grace-with-calls-waiting",
        FaultReport {
            fault: "SIGTERM with a 1 s grace period while 200 GetAccessToken calls (10 for each of 20 tenants) wait on cache-miss reads a table lock holds up in Postgres (or on a pooled connection for one)",
            happened: format!(
                "{reads_waiting} reads waited on the lock; every call was answered when the grace period ended and the \
                 process exited 0 ({} ms after SIGTERM); after the lock was released the next process served all 20 \
                 tenants their stored tokens",
                exited_after.as_millis()
            ),
            token_requests: 0,
            tenants_lost: 0,
            callers_saw: "200 × Unavailable SHUTTING_DOWN, then 20 × the stored token".into(),
        },
    );
}

/// A rolling update with a health Watch open, as gRPC clients that check their backends'
/// health keep one on every replica: on SIGTERM the watcher is told NOT_SERVING, its stream
/// ends, and the process exits at once instead of waiting out the grace period for a stream
/// that would never end by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_a_health_watch_open_tells_the_watcher_and_exits_at_once() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

    let mut cluster = Cluster::start(
        1,
        TestOptions::default(),
        None,
        &[("TOKEN_VAULT_SERVER__SHUTDOWN_GRACE", "30s")],
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.processes[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Opened once the process is SERVING (Cluster::start waits for it).
    let mut watch = crate::listener::watch(&mut HealthClient::new(channel))
        .await
        .expect("a Watch opens");

    let terminated = Instant::now();
    cluster.terminate(0);
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(update)) => seen.push(update.status()),
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        }
    })
    .await
    .expect("the Watch ends");
    assert_eq!(
        seen,
        [ServingStatus::NotServing],
        "the watcher was told before its stream ended"
    );
    let ended = ended.expect("the stream ends with a status, not as if the watcher had asked");
    assert_reason(&ended, Code::Unavailable, "SHUTTING_DOWN");
    let status = cluster.wait_exit(0, Duration::from_secs(10)).await;
    let exited_after = terminated.elapsed();
    assert!(status.success(), "a drained process exits cleanly: {status:?}");
    assert!(
        exited_after < Duration::from_secs(5),
        "exited {exited_after:?} after SIGTERM, not at the end of the 30 s grace period"
    );
    record(
        "19-sigterm-with-a-health-watch-open",
        FaultReport {
            fault: "SIGTERM with a 30 s grace period while a client holds a health Watch stream open (as gRPC clients that check their backends' health do)",
            happened: format!(
                "the watcher got NOT_SERVING, then its stream ended; the process exited 0 {} ms after SIGTERM \
                 (before, the stream held the graceful shutdown for the whole grace period)",
                exited_after.as_millis()
            ),
            token_requests: 0,
            tenants_lost: 0,
            callers_saw: "the watcher: 1 × NOT_SERVING, then Unavailable SHUTTING_DOWN".into(),
        },
    );
}

/// `server.call_timeout` bounds a call the database holds up: the caller, whose own deadline is
/// far longer, is answered CANCELLED at the timeout (as tonic's own server timeout answered,
/// which the vault's layer replaced) instead of waiting as long as the database does, and the
/// replica serves the tenant once the database answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_held_up_past_the_call_timeout_is_cancelled_and_the_replica_serves_on() {
    let cluster = Cluster::start(
        1,
        TestOptions::default(),
        None,
        &[
            ("TOKEN_VAULT_VAULT__CACHE_MAX_AGE", "1ms"),
            ("TOKEN_VAULT_SERVER__CALL_TIMEOUT", "5s"),
            // The settings require a call timeout longer than a refresh lease, and a lease
            // longer than a refresh may take (one attempt of 1 s here, which the settings count as 3 s).
            ("TOKEN_VAULT_REFRESH__LEASE_TTL", "4s"),
            ("TOKEN_VAULT_REFRESH__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    cluster.connect_tenant("acme").await;
    let issued = cluster.provider.newest_access_token();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lock = TableLock::take(cluster.database_url()).await;

    let mut client = cluster.client(0);
    let started = Instant::now();
    // A deadline far past the call timeout, so that a server without one fails this test at
    // the assertion below instead of hanging it.
    let mut request = tonic::Request::new(crate::helpers::token_request("acme"));
    request.set_timeout(Duration::from_secs(30));
    let held = client
        .get_access_token(request)
        .await
        .expect_err("the read waits on the lock");
    let waited = started.elapsed();
    assert_eq!(
        (held.code(), held.message()),
        (Code::Cancelled, "Timeout expired"),
        "{held:?}"
    );
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(7),
        "answered at the call timeout, after {waited:?}"
    );

    lock.release().await;
    let served = get_token_within(&mut client, "acme", Duration::from_secs(10))
        .await
        .expect("served once the database answers");
    assert_eq!(served, issued, "the tenant's stored token");
}
