//! The connection-count gauge's numbers (`Connections::count_by_status`), kept by triggers
//! instead of a count of the whole table (migration 20261211000001): after any mix of inserts,
//! changes of status, other updates and deletes, by one writer or many at once, with replicas
//! folding the changes at the same time, and on a database that had connections before the
//! migration, they are what `GROUP BY status` over the table says. On both stores.

use std::collections::BTreeMap;

use token_vault::store::Store;

use crate::helpers::{on_rows, Rows, TestDb};

/// A migrated database of the test's own, and the test's handle on its rows.
async fn migrated() -> (TestDb, Rows) {
    let db = TestDb::create_migrated("tv_counts").await;
    let rows = Rows::connect(&db.url).await;
    (db, rows)
}

/// What `GROUP BY status` over the table says: the count the triggers must keep.
async fn counted(rows: &Rows) -> BTreeMap<String, i64> {
    let found: Vec<(String, i64)> = on_rows!(rows, |pool| sqlx::query_as(
        "SELECT status, count(*) FROM connections GROUP BY status"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    found.into_iter().collect()
}

/// What the gauge reports, statuses at zero left out (a status whose last connection left is
/// reported at 0, which `GROUP BY` has no row for).
async fn gauge(store: &Store) -> BTreeMap<String, i64> {
    let counts = store.connections().count_by_status().await.unwrap();
    assert!(counts.iter().all(|(_, n)| *n >= 0), "no status below zero: {counts:?}");
    counts.into_iter().filter(|(_, n)| *n != 0).collect()
}

async fn changes_kept(rows: &Rows) -> i64 {
    on_rows!(rows, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM connection_status_changes"
    )
    .fetch_one(pool)
    .await
    .unwrap())
}

async fn insert(rows: &Rows, tenants: &[String], status: &str) {
    let sql = rows.sql(
        "INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, disconnected_at)
         SELECT t, 'understory', $2, '{booking.read}', 1, 'bearer', '\\x00'::bytea, now(), now() + interval '1 hour',
                now(), CASE WHEN $2 = 'disconnected' THEN now() END
           FROM unnest($1::text[]) AS t",
        "INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, disconnected_at)
         SELECT value, 'understory', $2, '[\"booking.read\"]', 1, 'bearer', X'00', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3600 seconds'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                CASE WHEN $2 = 'disconnected' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
           FROM json_each($1)",
    );
    let inserted = match rows {
        Rows::Postgres(pool) => sqlx::query(sql)
            .bind(tenants)
            .bind(status)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Rows::Sqlite(pool) => {
            let tenants = serde_json::to_string(tenants).unwrap();
            sqlx::query(sql)
                .bind(tenants)
                .bind(status)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        }
    };
    assert_eq!(inserted.unwrap(), tenants.len() as u64);
}

/// Moves the tenants whose id starts with `prefix` to `status`, in one statement.
async fn set_status(rows: &Rows, prefix: &str, status: &str) -> u64 {
    let sql = rows.sql(
        "UPDATE connections SET status = $2, disconnected_at = CASE WHEN $2 = 'disconnected' THEN now() END
          WHERE starts_with(tenant_id, $1)",
        "UPDATE connections SET status = $2,
                disconnected_at = CASE WHEN $2 = 'disconnected' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
          WHERE substr(tenant_id, 1, length($1)) = $1",
    );
    on_rows!(rows, |pool| sqlx::query(sql)
        .bind(prefix)
        .bind(status)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected())
}

/// Runs `sql` on the test's database; the rows it touched.
async fn execute(rows: &Rows, sql: &str) -> u64 {
    on_rows!(rows, |pool| sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected())
}

fn tenants(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

#[tokio::test]
async fn the_gauge_follows_every_kind_of_change_to_the_table() {
    let (db, rows) = migrated().await;
    let store = db.store(2);
    assert_eq!(gauge(&store).await, BTreeMap::new(), "an empty table counts nothing");

    insert(&rows, &tenants("a-", 40), "active").await;
    insert(&rows, &tenants("r-", 7), "reauthorization_required").await;
    insert(&rows, &tenants("d-", 3), "disconnected").await;
    assert_eq!(gauge(&store).await, counted(&rows).await);
    assert_eq!(gauge(&store).await["active"], 40);

    // Changes of status, one row and many at once, there and back.
    assert_eq!(set_status(&rows, "a-0000", "reauthorization_required").await, 10);
    assert_eq!(set_status(&rows, "r-", "active").await, 7);
    assert_eq!(set_status(&rows, "a-0001", "disconnected").await, 10);
    assert_eq!(set_status(&rows, "a-00012", "active").await, 1);
    // An update that leaves status as it was, and one that touches every row but not status
    // (as every refresh does): neither appends a change.
    let kept = changes_kept(&rows).await;
    assert_eq!(set_status(&rows, "d-", "disconnected").await, 3);
    let touched = execute(&rows, "UPDATE connections SET generation = generation + 1").await;
    assert_eq!(touched, 50);
    assert_eq!(
        changes_kept(&rows).await,
        kept,
        "updates that leave status alone append nothing"
    );
    let expected = counted(&rows).await;
    assert_eq!(
        expected,
        BTreeMap::from([
            ("active".to_owned(), 28),
            ("disconnected".to_owned(), 12),
            ("reauthorization_required".to_owned(), 10),
        ])
    );
    assert_eq!(gauge(&store).await, expected);

    // Deletes, then a status none is left in.
    let deleted = execute(
        &rows,
        "DELETE FROM connections WHERE status = 'reauthorization_required' OR tenant_id = 'a-00030'",
    )
    .await;
    assert_eq!(deleted, 11);
    let reported = store.connections().count_by_status().await.unwrap();
    assert!(
        reported.contains(&("reauthorization_required".to_owned(), 0)),
        "a status whose connections all left reads 0 rather than vanishing from the gauge: {reported:?}"
    );
    assert_eq!(gauge(&store).await, counted(&rows).await);

    // Each count folds what it summed: the table holds a row per status, not one per change.
    assert!(
        changes_kept(&rows).await <= 3,
        "{} rows kept",
        changes_kept(&rows).await
    );

    // Emptied all at once (TRUNCATE fires no row trigger on Postgres; SQLite has none).
    let empty = rows.sql("TRUNCATE connections CASCADE", "DELETE FROM connections");
    execute(&rows, empty).await;
    assert_eq!(gauge(&store).await, BTreeMap::new(), "an emptied table counts nothing");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_with_writers_and_replicas_counting_at_once() {
    let (db, rows) = migrated().await;
    // Two replicas' stores, each counting (and folding) in a loop while the writers write.
    let replicas = [db.store(2), db.store(2)];
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let counters: Vec<_> = replicas
        .iter()
        .cloned()
        .map(|store| {
            let writing = writing.clone();
            tokio::spawn(async move {
                // The writers only add connections: a total that went down would be a fold seen
                // half done, or rows lost between replicas' folds.
                let (mut counts, mut last_total) = (0, 0);
                while writing.load(std::sync::atomic::Ordering::Relaxed) || counts < 3 {
                    let total: i64 = gauge(&store).await.values().sum();
                    assert!(
                        (last_total..=8 * 25).contains(&total),
                        "a count of {total} after one of {last_total}"
                    );
                    last_total = total;
                    counts += 1;
                    // Not a busy loop: on SQLite each fold takes the file's write lock.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                counts
            })
        })
        .collect();

    // Eight writers, each its own connections, one statement (one transaction) at a time.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let rows = rows.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let tenant = format!("w{w}-{i:02}");
                    insert(&rows, std::slice::from_ref(&tenant), "active").await;
                    if i % 3 == 0 {
                        set_status(&rows, &tenant, "reauthorization_required").await;
                    }
                    if i % 5 == 0 {
                        set_status(&rows, &tenant, "disconnected").await;
                    }
                    if i % 7 == 0 {
                        set_status(&rows, &tenant, "active").await;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for counter in counters {
        assert!(
            counter.await.unwrap() >= 3,
            "each replica counted while the writers wrote"
        );
    }

    let expected = counted(&rows).await;
    assert_eq!(expected.values().sum::<i64>(), 200);
    for store in &replicas {
        assert_eq!(gauge(store).await, expected);
        store.close().await;
    }
}

#[tokio::test]
async fn a_bulk_load_is_counted_and_folded_to_a_row_per_status() {
    let (db, rows) = migrated().await;
    // More changes than one of SQLite's fold transactions takes (10,000).
    insert(&rows, &tenants("a-", 24_000), "active").await;
    insert(&rows, &tenants("r-", 1_500), "reauthorization_required").await;
    assert_eq!(changes_kept(&rows).await, 25_500);
    let store = db.store(2);
    let expected = BTreeMap::from([
        ("active".to_owned(), 24_000),
        ("reauthorization_required".to_owned(), 1_500),
    ]);
    assert_eq!(gauge(&store).await, expected);
    assert_eq!(changes_kept(&rows).await, 2, "folded to a row per status");
    assert_eq!(gauge(&store).await, expected);
    store.close().await;
}

#[tokio::test]
async fn a_database_with_connections_before_the_migration_counts_them() {
    let db = TestDb::create("tv_counts").await;
    let rows = Rows::connect(&db.url).await;
    // The schema as the release before this migration left it.
    const COUNTED_FROM: i64 = 20261211000001;
    let mut before = match &rows {
        Rows::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        Rows::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
    };
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < COUNTED_FROM)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    on_rows!(rows, |pool| before.run(pool).await.unwrap());
    insert(&rows, &tenants("a-", 30), "active").await;
    insert(&rows, &tenants("r-", 4), "reauthorization_required").await;
    insert(&rows, &tenants("d-", 2), "disconnected").await;

    let store = db.store(2);
    store.migrate().await.unwrap();
    let expected = counted(&rows).await;
    assert_eq!(expected.values().sum::<i64>(), 36);
    assert_eq!(gauge(&store).await, expected);
    // And from then on the triggers keep it.
    set_status(&rows, "a-0000", "disconnected").await;
    assert_eq!(gauge(&store).await, counted(&rows).await);
    store.close().await;
}

#[tokio::test]
async fn a_database_refusing_writes_is_still_counted() {
    let (db, rows) = migrated().await;
    insert(&rows, &tenants("a-", 5), "active").await;
    let Rows::Postgres(pool) = &rows else {
        unreachable!("Postgres only (.config/nextest.toml)")
    };
    // Sessions opened from now on are read-only, as on a standby: the count's fold is refused,
    // its sums are not.
    sqlx::query(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        db.name
    ))
    .execute(pool)
    .await
    .unwrap();
    let store = db.store(1);
    let expected = BTreeMap::from([("active".to_owned(), 5)]);
    assert_eq!(gauge(&store).await, expected);
    assert_eq!(gauge(&store).await, expected);
    assert_eq!(changes_kept(&rows).await, 5, "nothing was folded");
    store.close().await;
}
