//! The Postgres connection pool: deadpool's pool of sqlx connections, used as an sqlx
//! `Executor` like sqlx's own pool, without its round trip on every release.
//!
//! sqlx's pool tests every connection that comes back (it sends a Sync and waits for the
//! server's answer) before another call may have it: one more round trip, in a task of its
//! own, for every statement the vault makes. Most of the time that test learns nothing: a
//! statement that finished read everything up to the server's ReadyForQuery, and the
//! connection is exactly as the next statement needs it. On the refresh path it was 15 % of the
//! vault's CPU (docs/performance.md). So here a connection whose work finished goes straight
//! back, and only one whose work did not (an error, or a caller that gave up and dropped the
//! future mid-statement or mid-transaction) is checked first: at once, by a task of its own,
//! so that a transaction it left open (and the row locks it holds, such as a refresh lease's)
//! ends now and not when the connection is next used. A connection still inside a
//! transaction after the check (see `flush` for how one gets there), or whose check fails, is
//! closed instead.
//!
//! What sqlx's pool does otherwise is kept: an acquire waits at most `acquire_timeout`, over
//! the wait for a free slot and the connect; a connect refused (the server is starting) or
//! answered "not now" is retried with backoff until then; connections are opened lazily and
//! closed when they reach `MAX_LIFETIME`.

use std::{
    fmt,
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Duration,
};

use deadpool::managed::{self, Metrics, Object, PoolError, QueueMode, RecycleError, RecycleResult};
use futures::{future::BoxFuture, stream::BoxStream, TryStreamExt};
use sqlx::{
    postgres::{PgConnectOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo},
    ConnectOptions, Connection, Either, Execute, Executor, PgConnection, Postgres,
};

/// A connection this old is closed when it next comes to hand, as sqlx's pool does by default:
/// after a failover behind one address, every connection has moved within this time.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long the check of a connection left mid-work (`flush`) may take before the connection
/// is closed instead.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens connections with the store's options; a connection taken from the idle ones is
/// handed out as it is unless it is past its lifetime.
struct Manager {
    options: Arc<PgConnectOptions>,
}

impl managed::Manager for Manager {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        // The caller's `acquire_timeout` bounds these retries (`Pool::acquire`).
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.options.connect().await {
                // The server is starting (nothing listens yet), or it said so: 57P03
                // cannot_connect_now; 53300 too_many_connections, which also follows a
                // connection just closed hard that the server has not noticed yet.
                Err(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("57P03" | "53300")) => {}
                other => return other,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn recycle(&self, _: &mut PgConnection, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if metrics.age() > MAX_LIFETIME {
            return Err(RecycleError::message("past its lifetime"));
        }
        Ok(())
    }
}

/// The Postgres store's pool. Cloning it is cheap and shares the connections. Public for the
/// benchmark, whose database floors use the same pool as the vault (`PostgresPool`).
#[derive(Clone)]
pub struct Pool {
    connections: managed::Pool<Manager>,
    options: Arc<PgConnectOptions>,
    acquire_timeout: Duration,
}

impl fmt::Debug for Pool {
    // Never the connect options: they hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.connections.status();
        f.debug_struct("Pool")
            .field("size", &status.size)
            .field("idle", &status.available)
            .field("max_size", &status.max_size)
            .finish()
    }
}

impl Pool {
    /// A pool of at most `max_connections`, none opened yet.
    pub fn new(options: PgConnectOptions, max_connections: u32, acquire_timeout: Duration) -> Self {
        let options = Arc::new(options);
        let connections = managed::Pool::builder(Manager {
            options: Arc::clone(&options),
        })
        .max_size(max_connections as usize)
        // The connection used last goes out first: its server process and its caches are
        // warm, and under light load the others stay idle rather than taking turns (a
        // rotation over 20 connections once cost the refresh path's statements 0.7 to 1.9 ms,
        // docs/performance.md).
        .queue_mode(QueueMode::Lifo)
        .build()
        // Only a missing runtime for timeouts fails a build, and this pool sets none: its one
        // deadline is `acquire_timeout`, kept by `acquire` itself.
        .expect("a pool without deadpool timeouts builds");
        Self {
            connections,
            options,
            acquire_timeout,
        }
    }

    /// The options every connection is opened with (a listener opens its own with them).
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// A connection, within `acquire_timeout`: a free one, or a new one while the pool is
    /// below its size. Call `PooledConnection::finished` once its work has ended well.
    pub async fn acquire(&self) -> Result<PooledConnection, sqlx::Error> {
        match tokio::time::timeout(self.acquire_timeout, self.connections.get()).await {
            Ok(Ok(object)) => Ok(PooledConnection {
                object: Some(object),
                finished: false,
            }),
            Ok(Err(PoolError::Backend(e))) => Err(e),
            Ok(Err(PoolError::Closed)) => Err(sqlx::Error::PoolClosed),
            Ok(Err(_)) | Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// Connections open, and how many of them are idle.
    pub fn usage(&self) -> (u32, usize) {
        let status = self.connections.status();
        (status.size as u32, status.available)
    }

    /// Closes the idle connections, refuses new acquires, then waits (up to `acquire_timeout`)
    /// for the connections in use, and the checks under way, to end, each closed as it comes
    /// back.
    pub async fn close(&self) {
        // The idle ones first, each told to end its session (Terminate) so that the server has
        // forgotten it when this returns; then no more acquires.
        let idle = self.connections.retain(|_, _| false).removed;
        let closes = idle.into_iter().map(|connection| connection.close());
        tokio::time::timeout(self.acquire_timeout, futures::future::join_all(closes))
            .await
            .ok();
        self.connections.close();
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        while self.connections.status().size > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A connection out of the pool. Dropped after `finished`, it goes back as it is; dropped
/// without, it is checked first, and closed if it can't go back (`flush`).
pub struct PooledConnection {
    object: Option<Object<Manager>>,
    finished: bool,
}

impl PooledConnection {
    /// The work on this connection ended with the server's answer read to its end: the
    /// connection is ready for the next statement as it stands.
    pub fn finished(mut self) {
        self.finished = true;
    }

    /// Begins a transaction on this connection. Dropped without its commit, the transaction
    /// queues its ROLLBACK, which `flush` sends.
    pub async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        Connection::begin(&mut **self).await
    }
}

impl Deref for PooledConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.object.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.object.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else { return };
        if self.finished {
            return; // `object`'s drop puts it back
        }
        let unchecked = Unchecked(Some(object));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(flush(unchecked));
            }
            // No runtime left to check it on (the process is ending): `unchecked` closes it.
            Err(_) => drop(unchecked),
        }
    }
}

/// A connection left mid-work, on its way through `flush`. It goes back to the pool only when
/// the check passes; dropped any other way (the check's task dropped unrun or unfinished, as a
/// runtime that is shutting down does) it is taken out of the pool and closed.
struct Unchecked(Option<Object<Manager>>);

impl Drop for Unchecked {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
        }
    }
}

/// Finds out whether a connection left mid-work can go back: one statement, after which the
/// connection goes back only if it is outside any transaction; otherwise it is taken out of
/// the pool and closed, and the server ends its session and any transaction with it.
///
/// Running the statement first sends what the dropped work left queued (a transaction's
/// ROLLBACK) and reads the server's answers up to their end. A ping would do that much, and
/// sqlx's pool stops there. But sqlx's own bookkeeping can't say whether the server is still
/// inside a transaction: a caller that gives up while its BEGIN is in flight leaves the
/// session inside the transaction the BEGIN opened with nothing queued to end it (sqlx counts
/// the transaction only once BEGIN's answer is read). The next user's statements would then
/// run inside that transaction and commit with nobody, a refresh's rotated token among them.
/// The server knows: `transaction_timestamp()` equals `statement_timestamp()` only in the
/// first statement of a transaction, so only outside an open transaction block; inside an
/// aborted one the statement fails.
async fn flush(mut unchecked: Unchecked) {
    let Some(object) = unchecked.0.as_mut() else { return };
    let outside_any_transaction = tokio::time::timeout(
        FLUSH_TIMEOUT,
        sqlx::query_scalar::<_, bool>("SELECT transaction_timestamp() = statement_timestamp()")
            .fetch_one(&mut **object),
    )
    .await;
    let Some(object) = unchecked.0.take() else { return };
    if matches!(outside_any_transaction, Ok(Ok(true))) {
        return; // `object`'s drop puts it back
    }
    tracing::debug!("a connection left mid-work did not come back outside a transaction; closing it");
    // Terminate tells the server to end the session (and roll its transaction back) now,
    // rather than when it notices the socket gone.
    tokio::time::timeout(FLUSH_TIMEOUT, Object::take(object).close())
        .await
        .ok();
}

impl<'p> Executor<'p> for &'_ Pool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.clone();
        Box::pin(async_stream::try_stream! {
            let mut connection = pool.acquire().await?;
            {
                let mut results = connection.fetch_many(query);
                while let Some(result) = results.try_next().await? {
                    yield result;
                }
            }
            connection.finished();
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.clone();
        Box::pin(async move {
            let mut connection = pool.acquire().await?;
            let row = connection.fetch_optional(query).await?;
            connection.finished();
            Ok(row)
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>> {
        let pool = self.clone();
        Box::pin(async move {
            let mut connection = pool.acquire().await?;
            let statement = connection.prepare_with(sql, parameters).await?;
            connection.finished();
            Ok(statement)
        })
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>> {
        let pool = self.clone();
        Box::pin(async move {
            let mut connection = pool.acquire().await?;
            let description = connection.describe(sql).await?;
            connection.finished();
            Ok(description)
        })
    }
}
