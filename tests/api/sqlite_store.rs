//! The embedded store shared by several vault processes on one machine: SQLite runs one writer
//! at a time, and the refresh lease (taken in a `BEGIN IMMEDIATE` transaction, compared with
//! the database's clock) still lets exactly one process refresh per expiry. Runs on SQLite
//! whichever store the rest of the suite uses.

use std::time::Duration;

use crate::{
    helpers::{TestDb, TestOptions},
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
