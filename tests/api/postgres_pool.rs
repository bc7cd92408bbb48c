//! The Postgres store's pool on its own (`token_vault::store::PostgresPool`): a connection left
//! mid-work goes back to the pool only after its check passes.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use token_vault::store::PostgresPool;

use crate::helpers::TestDb;

/// Sessions on `database` other than the asking one.
async fn sessions(url: &str, database: &str) -> i64 {
    let mut admin = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// A connection dropped inside a transaction, whose check never runs because its runtime
/// shuts down first, is closed rather than put back: afterwards the pool holds no connection
/// and the server no session of it. Put back unchecked, the connection would carry the open
/// transaction to its next user.
#[test]
fn a_connection_whose_check_never_ran_is_closed_not_put_back() {
    let setup = tokio::runtime::Runtime::new().unwrap();
    let db = setup.block_on(TestDb::create("tv_pool"));
    let pool = PostgresPool::new(db.url.parse().unwrap(), 4, Duration::from_secs(5));

    let work = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    work.block_on(async {
        let mut connection = pool.acquire().await.unwrap();
        let mut transaction = connection.begin().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *transaction).await.unwrap();
        drop(transaction);
        // Unfinished: its check is spawned on this runtime, and block_on returns before the
        // task is ever polled.
        drop(connection);
    });
    assert_eq!(pool.usage(), (1, 0), "the connection waits for its check");
    drop(work);
    assert_eq!(pool.usage(), (0, 0), "the connection left the pool with its check");

    setup.block_on(async {
        let started = Instant::now();
        loop {
            let open = sessions(&db.url, &db.name).await;
            if open == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{open} sessions of the pool are still open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
