//! The embedded store shared by several vault processes on one machine: SQLite runs one writer
//! at a time, and the refresh lease (taken by one `UPDATE … RETURNING`, which SQLite begins
//! with the write lock, compared with the database's clock) still lets exactly one process
//! refresh per expiry; several processes migrating a new file at once leave one whole schema;
//! and the file is created only when `database.create_if_missing` says so. Runs on SQLite
//! whichever store the rest of the suite uses.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use token_vault::store::NewTokens;

use crate::{
    helpers::{on_rows, settings_toml, Rows, TestDb, TestOptions},
    provider::Fault,
    replicas::Cluster,
};

/// As in `reliability.rs`: tokens live 4 s and need refreshing 2 s after they were issued.
const TTL: u64 = 4;
const UNTIL_EXPIRED: Duration = Duration::from_millis(2100);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_sharing_one_sqlite_file_refresh_once_per_expiry() {
    // Declared first, dropped last: the file outlives the processes.
    let db = TestDb::create_sqlite("tv_test");
    let opts = TestOptions {
        access_ttl: TTL,
        ..Default::default()
    };
    let cluster = Cluster::start(2, opts, Some(db.url.clone()), &[]).await;
    cluster.connect_tenant("acme").await;
    for expiry in 1..=3 {
        tokio::time::sleep(UNTIL_EXPIRED).await;
        let before = cluster.provider.stats().refresh_requests;
        // A slow answer keeps the refresh in flight while every call arrives.
        cluster.provider.push_fault(Fault::Slow(Duration::from_millis(200)));
        let results = cluster.stampede("acme", &[0, 1], 50).await;
        let newest = cluster.provider.newest_access_token();
        for r in &results {
            assert_eq!(
                r.as_ref().unwrap(),
                &newest,
                "expiry {expiry}: every caller of both processes gets the newest token"
            );
        }
        assert_eq!(
            cluster.provider.stats().refresh_requests,
            before + 1,
            "expiry {expiry}: exactly one token request for both processes"
        );
    }
    assert_eq!(
        cluster.provider.stats().reuse_detected,
        0,
        "no refresh token was presented twice"
    );
    let logs = cluster.logs();
    assert!(logs.contains("refreshed"), "the logs were captured");
    for secret in cluster.provider.issued_secrets().iter().chain([&cluster.client_secret]) {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
}

/// A configuration file in `dir` for a vault on `database_url`, for the commands that never
/// call the provider (`migrate`), or that are only started (`serve` refusing to).
fn config_file(dir: &Path, database_url: &str) -> PathBuf {
    let config = dir.join("config.toml");
    let toml = settings_toml(
        "http://127.0.0.1:9",
        database_url,
        "unused-secret",
        &TestOptions::default(),
    );
    std::fs::write(&config, toml).unwrap();
    config
}

/// Starts `token-vault <command> --config <config>` with `env`, not waiting for it.
fn start(command: &str, config: &Path, env: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
        .arg(command)
        .arg("--config")
        .arg(config)
        // A free port, in case `serve` gets as far as binding.
        .env("TOKEN_VAULT_SERVER__LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the token-vault binary starts")
}

/// Waits for a started command, at most 60 s, and returns what it printed with its status.
async fn finish(child: tokio::process::Child, what: &str) -> (Output, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within 60 s"))
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, printed)
}

const CREATE_IF_MISSING: (&str, &str) = ("TOKEN_VAULT_DATABASE__CREATE_IF_MISSING", "true");

#[tokio::test]
async fn serve_and_migrate_refuse_a_missing_sqlite_file_unless_create_if_missing_is_on() {
    let db = TestDb::sqlite_not_created("tv_test");
    let dir = db.sqlite_file().unwrap().parent().unwrap().to_path_buf();
    // A path in a directory that does not exist either, as a mistyped one would be.
    let missing_dir = dir.join("typo");
    let file = missing_dir.join("vault.db");
    let url = format!("sqlite://{}", file.display());
    let config = config_file(&dir, &url);

    // Off (the default): each command stops at start, naming the file and the setting, and
    // creates nothing.
    for command in ["migrate", "serve"] {
        let (output, printed) = finish(start(command, &config, &[]), command).await;
        assert!(
            !output.status.success(),
            "{command} started on a missing file:\n{printed}"
        );
        assert!(
            printed.contains(&format!("the SQLite file {} does not exist", file.display())),
            "{command} does not name the file:\n{printed}"
        );
        assert!(
            printed.contains("database.create_if_missing is off"),
            "{command} does not name the setting:\n{printed}"
        );
        assert!(!printed.contains("panicked"), "{command} panicked:\n{printed}");
        assert!(!missing_dir.exists(), "{command} created {}", missing_dir.display());
    }

    // On: `serve` creates the directory and the file, migrates it, and serves from it.
    let cluster = Cluster::start(1, TestOptions::default(), Some(url.clone()), &[CREATE_IF_MISSING]).await;
    assert!(file.is_file(), "serve did not create {}", file.display());
    cluster.connect_tenant("acme").await;
    let tokens = cluster.stampede("acme", &[0], 1).await;
    assert_eq!(tokens[0].as_ref().unwrap(), &cluster.provider.newest_access_token());
    assert!(cluster.logs().contains("created the SQLite file"), "{}", cluster.logs());
    drop(cluster);

    // On, with the file there: left as it is (the tenant is still connected).
    let cluster = Cluster::start(1, TestOptions::default(), Some(url), &[CREATE_IF_MISSING]).await;
    let connection = cluster
        .client(0)
        .get_connection(token_vault::proto::GetConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("the connection made before is still there")
        .into_inner();
    assert_eq!(connection.status(), token_vault::proto::ConnectionStatus::Active);
    assert!(
        !cluster.logs().contains("created the SQLite file"),
        "{}",
        cluster.logs()
    );
}

/// sqlx takes no lock around SQLite migrations; `token-vault migrate` processes started together
/// on a new file (created by them, `database.create_if_missing`) must all succeed and leave
/// each migration applied once. A few rounds, each on a new file, since the collision depends
/// on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_a_new_sqlite_file_at_once_all_succeed_and_apply_each_migration_once() {
    const PROCESSES: usize = 4;
    const ROUNDS: usize = 3;
    let embedded: Vec<i64> = sqlx::migrate!("./migrations/sqlite")
        .iter()
        .map(|m| m.version)
        .collect();
    for round in 1..=ROUNDS {
        let db = TestDb::sqlite_not_created("tv_test");
        let file = db.sqlite_file().unwrap();
        let config = config_file(file.parent().unwrap(), &db.url);

        let children: Vec<_> = (0..PROCESSES)
            .map(|_| start("migrate", &config, &[CREATE_IF_MISSING]))
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let what = format!("round {round}, migrate process {i}");
            let (output, printed) = finish(child, &what).await;
            assert!(output.status.success(), "{what} failed:\n{printed}");
        }

        let rows = Rows::connect(&db.url).await;
        let applied: Vec<(i64, i64, i64)> = on_rows!(rows, |pool| sqlx::query_as(
            "SELECT version, count(*), min(success) FROM _sqlx_migrations GROUP BY version ORDER BY version"
        )
        .fetch_all(pool)
        .await
        .unwrap());
        let expected: Vec<(i64, i64, i64)> = embedded.iter().map(|&v| (v, 1, 1)).collect();
        assert_eq!(
            applied, expected,
            "round {round}: each migration recorded once, succeeded"
        );
        let integrity: String = on_rows!(rows, |pool| sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(pool)
            .await
            .unwrap());
        assert_eq!(integrity, "ok", "round {round}");
        let status = db.store(1).migrations().status().await.unwrap();
        assert!(status.is_current(), "round {round}: {status:?}");
        on_rows!(rows, |pool| pool.close().await);

        if round == ROUNDS {
            // And a vault on that file works: a tenant connects and gets a token.
            let cluster = Cluster::start(1, TestOptions::default(), Some(db.url.clone()), &[]).await;
            cluster.connect_tenant("acme").await;
            let tokens = cluster.stampede("acme", &[0], 1).await;
            assert_eq!(tokens[0].as_ref().unwrap(), &cluster.provider.newest_access_token());
        }
    }
}

/// A process's writes go through one connection of their own and queue for it, rather than
/// for SQLite's lock in the busy handler (`store::sqlite::SqlitePools`). Many refreshes of
/// different connections at once, each a lease and then the store of rotated tokens: every
/// one commits, each connection ends one generation on with exactly one current refresh token,
/// and only one connection was ever opened: every statement here writes (the migration, the
/// authorizations, the leases and the stores), so all went through the writer, and no reader
/// was needed however many writes were in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_of_one_process_all_commit_through_its_one_writer() {
    use token_vault::{
        connection_key::ConnectionKey,
        store::{Origin, RefreshCause},
    };
    const READERS: u32 = 4;
    const CONNECTIONS: usize = 64;
    let db = TestDb::create_sqlite("tv_test");
    let store = db.store(READERS);
    store.migrate().await.unwrap();
    let key = |i: usize| ConnectionKey::from_stored(&format!("tenant-{i:02}"), "understory");
    for i in 0..CONNECTIONS {
        store
            .connections()
            .store_authorization(&key(i), None, &stored_tokens(1), Origin::Authorization)
            .await
            .unwrap();
    }

    let refreshes: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (store, key, tokens) = (store.clone(), key(i), stored_tokens(2));
            tokio::spawn(async move {
                let leased = store
                    .connections()
                    .try_acquire_lease(&key, 1, uuid::Uuid::new_v4(), Duration::from_secs(30))
                    .await?
                    .expect("nobody else holds this connection's lease");
                store
                    .connections()
                    .store_refresh(leased.connection.id, 1, &tokens, RefreshCause::Caller)
                    .await
            })
        })
        .collect();
    let mut peak_open = 0;
    for refresh in refreshes {
        refresh.await.unwrap().expect("every refresh commits");
        peak_open = peak_open.max(store.pool_usage().0);
    }

    let rows = Rows::connect(&db.url).await;
    let per_connection: Vec<(i64, i64)> = on_rows!(rows, |pool| sqlx::query_as(
        "SELECT c.generation, (SELECT count(*) FROM refresh_tokens r
                                WHERE r.connection_id = c.id AND r.superseded_at IS NULL)
           FROM connections c ORDER BY c.tenant_id"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(
        per_connection,
        vec![(2, 1); CONNECTIONS],
        "(generation, current refresh tokens)"
    );
    assert_eq!(
        peak_open, 1,
        "connections open: the writer only, with {CONNECTIONS} writes in flight and {READERS} readers allowed"
    );
    on_rows!(rows, |pool| pool.close().await);
    store.close().await;
}

/// The lease is one `UPDATE … RETURNING` on SQLite, outside any explicit transaction: SQLite
/// begins such a statement's transaction with the write lock, so attempts racing from two
/// stores on one file (two writers, as two processes have) still take a lease once per
/// generation. The winner's lease carries what the refresh needs (the current refresh token,
/// the file's identity, the database's clock), read in the same statement; another holder
/// gets it only once it is released or has lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_racing_from_two_stores_on_one_file_are_taken_once() {
    use token_vault::{
        connection_key::ConnectionKey,
        store::{Origin, RefreshCause},
    };
    const ATTEMPTS_PER_STORE: usize = 32;
    let db = TestDb::create_sqlite("tv_test");
    let (first, second) = (db.store(4), db.store(4));
    first.migrate().await.unwrap();
    let key = ConnectionKey::from_stored("tenant-racing", "understory");
    first
        .connections()
        .store_authorization(&key, None, &stored_tokens(1), Origin::Authorization)
        .await
        .unwrap();
    let identity = first.identity().current().await.unwrap();
    first.identity().record_first(&identity).await.unwrap();
    // One refresh first, so that the connection has a superseded refresh token beside its
    // current one: the lease must carry the current one. Leases here outlast the test's
    // steps however slow the machine; only the last one is let lapse.
    let ttl = Duration::from_secs(60);
    let lease = |store: &token_vault::store::Store, generation: i64, holder: uuid::Uuid, ttl: Duration| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            store
                .connections()
                .try_acquire_lease(&key, generation, holder, ttl)
                .await
        }
    };
    let leased = lease(&first, 1, uuid::Uuid::new_v4(), ttl)
        .await
        .unwrap()
        .expect("a free lease");
    let refreshed = stored_tokens(2);
    first
        .connections()
        .store_refresh(leased.connection.id, 1, &refreshed, RefreshCause::Caller)
        .await
        .unwrap();

    let attempts: Vec<_> = (0..2 * ATTEMPTS_PER_STORE)
        .map(|i| {
            let store = if i % 2 == 0 { &first } else { &second };
            let holder = uuid::Uuid::new_v4();
            let attempt = lease(store, 2, holder, ttl);
            tokio::spawn(async move { (holder, attempt.await) })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        let (holder, leased) = attempt.await.unwrap();
        if let Some(leased) = leased.expect("every attempt gets an answer, not a busy error") {
            winners.push((holder, leased));
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "leases taken on generation 2 by {} racing attempts",
        2 * ATTEMPTS_PER_STORE
    );
    let (holder, leased) = winners.pop().unwrap();
    assert_eq!(leased.connection.generation, 2);
    assert_eq!(leased.connection.access_token, refreshed.access_token);
    let refresh_token = leased
        .refresh_token
        .expect("the lease carries the current refresh token");
    assert_eq!((refresh_token.generation, refresh_token.token), (2, vec![2; 32]));
    assert_eq!(
        leased.database.identity, identity,
        "the file's identity, read with the lease"
    );
    assert_eq!(
        leased.database.recorded.as_deref(),
        Some(identity.as_str()),
        "the identity last recorded, read with the lease"
    );
    assert!(leased.database.changed_at.is_some(), "and when it was recorded");
    assert!(
        (leased.database.now - time::OffsetDateTime::now_utc()).abs() < time::Duration::seconds(5),
        "the database's clock, read with the lease: {}",
        leased.database.now
    );

    let rows = Rows::connect(&db.url).await;
    let recorded: (Option<Vec<u8>>,) = on_rows!(rows, |pool| sqlx::query_as(
        "SELECT refresh_lease_holder FROM connections WHERE tenant_id = 'tenant-racing'"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(
        recorded.0.as_deref(),
        Some(&holder.as_bytes()[..]),
        "the winner's lease is the one stored"
    );
    on_rows!(rows, |pool| pool.close().await);

    let late = uuid::Uuid::new_v4();
    assert!(
        lease(&second, 2, late, ttl).await.unwrap().is_none(),
        "held: no second lease while the winner's runs"
    );
    first
        .connections()
        .release_lease(leased.connection.id, holder)
        .await
        .unwrap();
    let brief = Duration::from_secs(2);
    lease(&second, 2, late, brief)
        .await
        .unwrap()
        .expect("a released lease is free");
    let next = uuid::Uuid::new_v4();
    assert!(lease(&first, 2, next, ttl).await.unwrap().is_none(), "held again");
    tokio::time::sleep(brief + Duration::from_millis(200)).await;
    let after = lease(&first, 2, next, ttl)
        .await
        .unwrap()
        .expect("a lapsed lease is taken again");
    assert_eq!(after.refresh_token.map(|t| t.generation), Some(2));
    first.close().await;
    second.close().await;
}

/// The keeper's claim among many connections is a range scan of its partial index, due order
/// included, not a read of every connection of the provider and a sort: the claim holds the
/// write lock while it runs. SQLite's planner took an equality on `provider` or `status` over
/// that index's range; the statement names its index (`INDEXED BY`), and no index may be
/// searched by status first (the migration that dropped one says why). Checked on the
/// statement's own file, on a fleet with no planner statistics, as the vault's files are
/// (nothing runs `ANALYZE`; with statistics the planner found the index by itself).
#[tokio::test]
async fn the_keepers_claim_reads_its_partial_index_in_due_order() {
    use sqlx::{Connection, SqliteConnection};
    let db = TestDb::create_sqlite("tv_test");
    let store = db.store(4);
    store.migrate().await.unwrap();
    store.close().await;
    let mut conn = SqliteConnection::connect(&db.url).await.unwrap();

    let led_by_status: Vec<(String,)> = sqlx::query_as(
        "SELECT il.name FROM pragma_index_list('connections') il
          WHERE (SELECT ii.name FROM pragma_index_info(il.name) ii WHERE ii.seqno = 0) = 'status'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        led_by_status.is_empty(),
        "indexes searched by status first: {led_by_status:?}"
    );

    // A fleet, one in a hundred due.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1999)
         INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, keepalive_due_at)
         SELECT printf('tenant-%04d', i), 'understory', 'active', '[]', 1, 'bearer', zeroblob(900),
                '2026-12-07T00:00:00.000Z', '2026-12-07T01:00:00.000Z', '2026-12-07T00:00:00.000Z',
                CASE WHEN i % 100 = 0 THEN '2026-12-07T00:00:00.000Z' ELSE '2999-01-01T00:00:00.000Z' END
           FROM n",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let claim = include_str!("../../src/store/sqlite/keepalive_claim.sql");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {claim}"))
        .bind(200_i64)
        .bind("+30.000 seconds")
        .bind(r#"["understory"]"#)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let steps: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("SEARCH connections USING INDEX connections_keepalive_due (keepalive_due_at")),
        "the due connections are found by a range of the partial index: {steps:?}"
    );
    assert!(
        !steps.iter().any(|s| s.contains("TEMP B-TREE")),
        "and come in due order from it, unsorted: {steps:?}"
    );
    conn.close().await.unwrap();
}

/// Tokens at `generation` as the store keeps them (bytes standing for sealed tokens: sealing is
/// not what these tests are about), each byte the generation.
fn stored_tokens(generation: i64) -> NewTokens {
    let now = time::OffsetDateTime::now_utc();
    NewTokens {
        generation,
        scopes: vec!["bookings".into()],
        token_type: "bearer".into(),
        access_token: vec![generation as u8; 64],
        access_token_issued_at: now,
        access_token_expires_at: now + time::Duration::hours(1),
        refresh_token: Some(vec![generation as u8; 32]),
        refresh_token_expires_at: None,
        keepalive_due_at: None,
    }
}
