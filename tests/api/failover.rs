//! A database failover with two real Postgres clusters of the test's own: a primary and a
//! streaming standby (`initdb`, `pg_basebackup -R`), the replication link and the vaults'
//! database address each behind a TCP switch. A refresh commits a rotation on the primary while
//! replication is held back; the primary crashes, the standby is promoted, the vaults' address
//! is switched. The promoted database has gone back in time by one generation. Two vault
//! processes: only one of them performed the rotation. Skipped, saying so, where the machine
//! has no Postgres server binaries.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tonic::Code;

use crate::{
    helpers::{get_token_within, TestOptions},
    private_postgres::PrivatePostgres,
    replicas::Cluster,
    report::{record, FaultReport},
    tcp_switch::TcpSwitch,
};

const TTL: u64 = 4;
const UNTIL_EXPIRED: Duration = Duration::from_millis(2100);

async fn sql(url: &str, statement: &str) {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(statement).execute(&mut db).await.unwrap();
}

/// Waits until the standby has replayed everything the primary has written so far.
async fn wait_until_replayed(primary: &str, standby: &str) {
    let mut p = PgConnection::connect(primary).await.unwrap();
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut p)
        .await
        .unwrap();
    let mut s = PgConnection::connect(standby).await.unwrap();
    let started = Instant::now();
    loop {
        let caught_up: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&lsn)
            .fetch_one(&mut s)
            .await
            .unwrap();
        if caught_up {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the standby never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn generation(url: &str) -> (i64, String) {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT generation, status FROM connections")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

async fn get_token(cluster: &Cluster, process: usize) -> Result<String, tonic::Status> {
    get_token_within(&mut cluster.client(process), "acme", Duration::from_secs(10)).await
}

/// Asks `process` until it serves a token, at most `limit`; returns the token and what the
/// caller saw before it (UNAVAILABLE `DATABASE_FAILOVER` while write-backs may be on their way).
async fn served_eventually(cluster: &Cluster, process: usize, limit: Duration) -> (String, Vec<String>) {
    let started = Instant::now();
    let mut saw = Vec::new();
    loop {
        match get_token(cluster, process).await {
            Ok(token) => return (token, saw),
            Err(status) => {
                let reason = tonic_types::StatusExt::get_error_details(&status)
                    .error_info()
                    .map(|i| i.reason.clone())
                    .unwrap_or_else(|| format!("{:?}", status.code()));
                assert!(
                    matches!(status.code(), Code::Unavailable),
                    "only UNAVAILABLE while the database fails over, got {status:?}"
                );
                saw.push(reason);
            }
        }
        assert!(started.elapsed() < limit, "never served after the failover: {saw:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// "3 × DATABASE_FAILOVER", or "nothing".
fn counted(reasons: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in reasons {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "nothing".into();
    }
    counts
        .iter()
        .map(|(r, n)| format!("{n} × {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A primary, its streaming standby (replication through a switch), and two vault processes
/// whose database address is another switch, with one connected tenant already on both
/// databases.
struct Pair {
    primary: PrivatePostgres,
    standby: PrivatePostgres,
    replication: TcpSwitch,
    database: TcpSwitch,
    cluster: Cluster,
}

/// `None` (and a message saying the test is skipped) without Postgres server binaries.
async fn start_pair(synchronous: bool, env: &[(&str, &str)]) -> Option<Pair> {
    if !PrivatePostgres::available() {
        eprintln!("SKIPPED: no Postgres server binaries under /usr/lib/postgresql for a primary and a standby");
        return None;
    }
    let primary = PrivatePostgres::start();
    sql(&primary.url("postgres"), "CREATE DATABASE vault").await;
    let replication = TcpSwitch::start(primary.addr()).await;
    let standby = PrivatePostgres::standby_of(replication.addr);
    if synchronous {
        sql(
            &primary.url("postgres"),
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )
        .await;
        sql(&primary.url("postgres"), "SELECT pg_reload_conf()").await;
    }
    let database = TcpSwitch::start(primary.addr()).await;
    let vault_url = format!("postgres://postgres@{}/vault", database.addr);
    let mut settings = vec![
        ("TOKEN_VAULT_FAILOVER__CHECK_INTERVAL", "300ms"),
        ("TOKEN_VAULT_FAILOVER__GRACE", "3s"),
        ("TOKEN_VAULT_DATABASE__ACQUIRE_TIMEOUT", "2s"),
    ];
    settings.extend_from_slice(env);
    let cluster = Cluster::start(
        2,
        TestOptions {
            access_ttl: TTL,
            ..Default::default()
        },
        Some(vault_url),
        &settings,
    )
    .await;
    cluster.connect_tenant("acme").await;
    wait_until_replayed(&primary.url("vault"), &standby.url("vault")).await;
    // Where the WAL position can't be read (a standby in recovery, some managed services) the
    // identity is 'unknown' rather than an error that would stop every refresh lease.
    let mut on_standby = PgConnection::connect(&standby.url("vault")).await.unwrap();
    let identity: String = sqlx::query_scalar("SELECT token_vault_database_identity()")
        .fetch_one(&mut on_standby)
        .await
        .unwrap();
    assert_eq!(identity, "unknown");
    Some(Pair {
        primary,
        standby,
        replication,
        database,
        cluster,
    })
}

impl Pair {
    /// The primary crashes, the standby is promoted, the vaults' address leads there.
    fn fail_over(&self) {
        self.primary.crash();
        self.standby.promote();
        self.database.switch(Some(self.standby.addr()));
    }
}

/// One failover: `synchronous` makes the primary wait for the standby on every commit.
async fn fail_over(synchronous: bool) -> Option<FaultReport<'static>> {
    let Pair {
        primary,
        standby,
        replication,
        database,
        cluster,
    } = start_pair(synchronous, &[]).await?;

    tokio::time::sleep(UNTIL_EXPIRED).await;
    let (rotated_token, pending) = if synchronous {
        // Every commit waits for the standby, the lease's too: replication is held back only
        // once the refresh is at the provider, so that the rotation's commit is the one that
        // waits. The refresh task keeps its received tokens and keeps trying to store them.
        // Well inside the vault's 1 s request timeout here.
        cluster
            .provider
            .push_fault(crate::provider::Fault::Slow(Duration::from_millis(500)));
        let pending = tokio::spawn({
            let mut client = cluster.client(0);
            async move { get_token_within(&mut client, "acme", Duration::from_secs(30)).await }
        });
        let started = Instant::now();
        while cluster.provider.stats().refresh_requests < 1 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the refresh never reached the provider"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        replication.switch(None);
        // The answer arrives; its commit now waits for a standby that does not confirm.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            !pending.is_finished(),
            "a synchronous commit cannot complete without the standby"
        );
        (None, Some(pending))
    } else {
        // Replication held back: the rotation below reaches the primary only.
        replication.switch(None);
        let rotated = get_token(&cluster, 0).await.expect("the rotation is served");
        assert_eq!(generation(&primary.url("vault")).await.0, 2, "committed on the primary");
        (Some(rotated), None)
    };
    assert_eq!(cluster.provider.stats().refresh_requests, 1);
    assert_eq!(generation(&standby.url("vault")).await.0, 1, "not on the standby");

    // The primary dies; the standby is promoted; the vaults' address now leads there.
    let pair = Pair {
        primary,
        standby,
        replication,
        database,
        cluster,
    };
    pair.fail_over();
    let Pair { standby, cluster, .. } = &pair;
    let failed_over = Instant::now();
    if let Some(pending) = pending {
        // The store retry lands on the promoted standby: the waiting caller is served.
        pending
            .await
            .unwrap()
            .expect("the rotation is stored on the promoted standby and served");
        assert_eq!(generation(&standby.url("vault")).await.0, 2);
    }

    // The replica that knows nothing is asked first, once the rotated access token is stale,
    // until a refresh after the failover has served a fresh token: meanwhile it may answer
    // DATABASE_FAILOVER, or the still valid rotated token.
    tokio::time::sleep(UNTIL_EXPIRED).await;
    let before = cluster.provider.newest_access_token();
    let mut saw = Vec::new();
    let token = loop {
        let (token, waited) = served_eventually(cluster, 1, Duration::from_secs(30)).await;
        saw.extend(waited);
        if token != before {
            break token;
        }
        assert!(
            failed_over.elapsed() < Duration::from_secs(30),
            "never refreshed after the failover"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let after = failed_over.elapsed();
    let (token0, _) = served_eventually(cluster, 0, Duration::from_secs(30)).await;
    assert_eq!(token0, token, "both replicas serve the same token");
    if let Some(rotated) = &rotated_token {
        assert_ne!(&token, rotated, "a fresh token from the written-back rotation");
    }
    let stats = cluster.provider.stats();
    assert_eq!(stats.reuse_detected, 0, "no spent refresh token was presented");
    assert_eq!(
        (stats.refresh_requests, stats.refreshes_ok),
        (2, 2),
        "one refresh before the failover, one after, both good"
    );
    let (generation, status) = generation(&standby.url("vault")).await;
    assert_eq!((generation, status.as_str()), (3, "active"));
    let logs = cluster.logs();
    if synchronous {
        assert!(
            logs.contains("commits wait for a synchronous standby"),
            "the durability was reported"
        );
    } else {
        assert!(logs.contains("NO SYNCHRONOUS STANDBY"), "the risk was reported");
        assert!(
            logs.contains("wrote back a rotation the database had lost"),
            "the rotation was written back"
        );
    }
    Some(FaultReport {
        fault: if synchronous {
            "failover to a SYNCHRONOUS standby with replication held back at the rotation: the commit waits, the primary crashes, the standby is promoted; 2 replicas, one rotated"
        } else {
            "failover to an ASYNCHRONOUS standby that missed the rotation's commit: the primary crashes, the standby is promoted (one generation behind); 2 replicas, one rotated"
        },
        happened: if synchronous {
            format!(
                "the rotating replica's store retry landed on the promoted standby; the other replica was served {} ms after the promotion (before that: {})",
                after.as_millis(),
                counted(&saw)
            )
        } else {
            format!(
                "the rotating replica saw the new timeline and wrote its rotation back; the other replica waited out the grace and was served {} ms after the promotion (before that: {})",
                after.as_millis(),
                counted(&saw)
            )
        },
        token_requests: stats.refresh_requests,
        tenants_lost: 0,
        callers_saw: format!(
            "{} × Unavailable on the replica that knew nothing, then 1 × token on each replica",
            saw.len()
        ),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_to_an_asynchronous_standby_that_missed_a_rotation_loses_no_grant() {
    if let Some(report) = fail_over(false).await {
        record("13-failover-async", report);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_to_a_synchronous_standby_loses_no_grant() {
    if let Some(report) = fail_over(true).await {
        record("14-failover-sync", report);
    }
}

/// The replica that rotated is gone with its memory (killed) when the database goes back in
/// time; the other replica had read the rotated generation. Nobody can write the rotation back,
/// and the stored refresh token is spent: the vault never presents it. It serves the newer
/// token while that is valid, then reports the rotation lost and marks the connection so, for
/// a person to authorize again, instead of triggering the provider's reuse detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_nobody_holds_after_a_failover_is_reported_never_presented() {
    let Some(mut pair) = start_pair(false, &[("TOKEN_VAULT_VAULT__CACHE_MAX_AGE", "1h")]).await else {
        return;
    };
    pair.replication.switch(None);
    tokio::time::sleep(UNTIL_EXPIRED).await;
    let rotated = get_token(&pair.cluster, 0).await.expect("the rotation is served");
    assert_eq!(
        get_token(&pair.cluster, 1).await.expect("the other replica reads it"),
        rotated
    );
    pair.cluster.kill(0).await;
    pair.fail_over();
    assert_eq!(
        generation(&pair.standby.url("vault")).await.0,
        1,
        "the rotation is lost"
    );

    let started = Instant::now();
    let mut saw = Vec::new();
    let refused = loop {
        match get_token(&pair.cluster, 1).await {
            Ok(token) => {
                assert_eq!(token, rotated, "only the newer token is ever served");
                saw.push("token".to_owned());
            }
            Err(status) if status.code() == Code::Unavailable => saw.push("UNAVAILABLE".into()),
            Err(status) => break status,
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never settled: {saw:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let metadata = crate::helpers::assert_reason(&refused, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");
    assert_eq!(metadata["status_reason"], "rotation_lost");
    let stats = pair.cluster.provider.stats();
    assert_eq!(stats.reuse_detected, 0, "the spent refresh token was never presented");
    assert_eq!(stats.refresh_requests, 1, "nothing was refreshed from the older row");
    assert_eq!(
        generation(&pair.standby.url("vault")).await.1,
        "reauthorization_required"
    );
    assert!(pair
        .cluster
        .logs()
        .contains("the database lost a rotation no replica wrote back"));
    record(
        "15-failover-rotation-lost",
        FaultReport {
            fault: "failover to an ASYNCHRONOUS standby that missed a rotation, and the replica that rotated killed first (its memory gone); the other replica had read the rotated token",
            happened: format!(
                "the spent refresh token was never presented; the newer token was served while valid, then the rotation was reported lost and the connection marked rotation_lost ({})",
                counted(&saw)
            ),
            token_requests: stats.refresh_requests,
            tenants_lost: 1,
            callers_saw: format!("{}, then 1 × FailedPrecondition (REAUTHORIZATION_REQUIRED, rotation_lost)", counted(&saw)),
        },
    );
}
