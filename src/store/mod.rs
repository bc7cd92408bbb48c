//! The store: one contract (this facade and its small repositories, one per table) with two
//! implementations behind it, chosen by the database URL's scheme: Postgres (`postgres://`,
//! production, any number of replicas) and SQLite (`sqlite://`, embedded, one node). The vault
//! sees only the facade. Each repository's statements live in `postgres/` and `sqlite/`; every
//! multi-step write is one transaction; every concurrency rule is in SQL (guarded updates on
//! the connection's generation, the refresh lease compared with the database's clock).
//!
//! The cargo features `postgres` and `sqlite` (both on by default) compile each store's
//! statements in or out: `scripts/prepare-queries` checks one store's queries at a time against
//! a live database, since sqlx checks every query of one build against one `DATABASE_URL`.

/// Runs a repository method on whichever store this is: `postgres::<module>::<function>` or
/// `sqlite::<module>::<function>`, with the pool first (SQLite's two, `sqlite::SqlitePools`).
macro_rules! dispatch {
    ($backend:expr, $module:ident :: $function:ident ( $($arg:expr),* $(,)? )) => {
        match $backend {
            #[cfg(feature = "postgres")]
            $crate::store::Backend::Postgres(pool) => $crate::store::postgres::$module::$function(pool $(, $arg)*).await,
            #[cfg(feature = "sqlite")]
            $crate::store::Backend::Sqlite(pool) => $crate::store::sqlite::$module::$function(pool $(, $arg)*).await,
        }
    };
}

mod audit;
mod connections;
mod disconnect;
mod events;
mod identity;
mod keepalive;
mod migrations;
mod pending;
mod probe;
mod retention;
mod sealed_values;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{Pool as PostgresPool, PooledConnection as PostgresConnection};
#[cfg(feature = "sqlite")]
mod sqlite;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use audit::{AuditEvents, AuditRow};
pub use connections::{
    ConnectionFilter, ConnectionRow, ConnectionSummary, Connections, CurrentRefreshToken, DatabaseSeen, Leased,
    NewTokens, Origin, RefreshCause, StoredAccessToken,
};
pub use disconnect::DisconnectLease;
pub use events::{ConnectionEvents, EventBatch, EventNotifications, EventPosition, EventRow};
pub use identity::{DatabaseIdentity, Durability};
pub use keepalive::{Claim, Claimed, Keepalive};
pub use migrations::{MigrationStatus, Migrations};
pub use pending::{NewPendingAuthorization, PendingAuthorization, PendingAuthorizations};
pub use probe::probe_connection;
pub use retention::{Purged, Retention, SweepPosition};
pub use sealed_values::{Batch, Binding, HeaderCount, Position, SealedColumn, SealedRow, SealedValues};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke: worth retrying.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A guarded write found the generation moved: someone else changed the tokens first.
    #[error("the connection changed under us (generation moved)")]
    Fenced,
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite file named in `database.url` does not exist, and this is not the place that
    /// creates it (`Store::create_database_if_missing` is).
    #[error("the SQLite file {} does not exist", path.display())]
    MissingFile { path: std::path::PathBuf },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable(e)
            }
            sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            // SQLite: the file is locked by another writer beyond `busy_timeout` (SQLITE_BUSY,
            // SQLITE_LOCKED and their extended codes): worth retrying, like a Postgres outage.
            #[cfg(feature = "sqlite")]
            sqlx::Error::Database(db) if sqlite::is_busy(db.as_ref()) => StoreError::Unavailable(e),
            // Admin shutdown, crash shutdown, cannot connect now, terminated backend; and what a
            // failover answers: a read-only transaction (25006, a standby not yet promoted),
            // recovery in progress (55000), a serialization failure or deadlock (40001, 40P01).
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("57P") || c.starts_with("08") || matches!(&*c, "25006" | "55000" | "40001" | "40P01")
                }) =>
            {
                StoreError::Unavailable(e)
            }
            _ => StoreError::Database(e),
        }
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Which store, and its pool.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(postgres::Pool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::SqlitePools),
}

/// Which implementation a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Postgres,
    Sqlite,
}

impl StoreKind {
    /// By the URL's scheme: `postgres:`/`postgresql:` or `sqlite:`; anything else is refused.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase())?;
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(StoreKind::Postgres),
            "sqlite" => Some(StoreKind::Sqlite),
            _ => None,
        }
    }
}

/// The database facade: hands out repositories that share one pool.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

fn unsupported(url: &SecretString) -> StoreError {
    // Never the URL itself: it may carry a password.
    let scheme = url
        .expose_secret()
        .split_once(':')
        .map(|(s, _)| s.to_owned())
        .unwrap_or_default();
    StoreError::Database(sqlx::Error::Configuration(
        format!("database.url: scheme {scheme:?} is not a store this build has (postgres://, sqlite://)").into(),
    ))
}

impl Store {
    /// Connects lazily: the pool opens connections on first use, so the process starts (and
    /// reports NOT_SERVING) even while the database is down. The store is chosen by the URL's
    /// scheme. A SQLite file that does not exist is refused now (`StoreError::MissingFile`):
    /// that is a wrong path, not an outage, and the pool never creates it.
    pub fn connect_lazy(url: &SecretString, options: &PoolOptions) -> Result<Self, StoreError> {
        let backend = match StoreKind::of_url(url.expose_secret()) {
            #[cfg(feature = "postgres")]
            Some(StoreKind::Postgres) => Backend::Postgres(postgres::connect_lazy(url, options)?),
            #[cfg(feature = "sqlite")]
            Some(StoreKind::Sqlite) => Backend::Sqlite(sqlite::connect_lazy(url, options)?),
            #[allow(unreachable_patterns)]
            _ => return Err(unsupported(url)),
        };
        Ok(Self { backend })
    }

    /// Which store this is.
    pub fn kind(&self) -> StoreKind {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => StoreKind::Postgres,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => StoreKind::Sqlite,
        }
    }

    /// Creates the database named in `url` when it does not exist (`database.create_if_missing`,
    /// a development convenience): a Postgres database on its server, or a SQLite file and its
    /// directory. Nothing else creates one: without this, a pool on a missing SQLite file is
    /// refused (`StoreError::MissingFile`).
    pub async fn create_database_if_missing(url: &SecretString) -> Result<(), StoreError> {
        match StoreKind::of_url(url.expose_secret()) {
            #[cfg(feature = "postgres")]
            Some(StoreKind::Postgres) => postgres::create_database_if_missing(url).await,
            #[cfg(feature = "sqlite")]
            Some(StoreKind::Sqlite) => sqlite::create_database_if_missing(url).await,
            #[allow(unreachable_patterns)]
            _ => Err(unsupported(url)),
        }
    }

    /// Applies the store's own migrations (`migrations/postgres` or `migrations/sqlite`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                // `run_direct`, sqlx's way around `run`'s `Acquire` bound on `&mut PgConnection`,
                // which callers that spawn this future can't prove `Send` for every lifetime.
                sqlx::migrate!("./migrations/postgres")
                    .run_direct(&mut *connection)
                    .await?;
                connection.finished();
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => sqlite::migrate(db).await?,
        }
        Ok(())
    }

    /// One round trip; used by the health reporter. On SQLite through a reader: the writer
    /// opens the same file with the same settings, and a write it can't make fails on its own.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => {
                sqlx::query("SELECT 1").execute(db.readers()).await?;
            }
        }
        Ok(())
    }

    /// Closes the pool: waits for connections in use to come back and closes every one. A
    /// process that opens stores for a while (a tool, a benchmark) calls it rather than relying
    /// on the last clone's drop, which leaves the pool's connections to close in the background.
    pub async fn close(&self) {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => pool.close().await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => db.close().await,
        }
    }

    /// Connections open in the pool, and how many of them are idle (a test that every call
    /// gave its connection back).
    pub fn pool_usage(&self) -> (u32, usize) {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => pool.usage(),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => db.usage(),
        }
    }

    pub fn pending(&self) -> PendingAuthorizations<'_> {
        PendingAuthorizations::new(&self.backend)
    }

    pub fn connections(&self) -> Connections<'_> {
        Connections::new(&self.backend)
    }

    /// Status changes of connections, for watchers and the retention sweep.
    pub fn events(&self) -> ConnectionEvents<'_> {
        ConnectionEvents::new(&self.backend)
    }

    /// Wake-ups for event watchers: a connection of its own, listening.
    pub async fn event_notifications(&self) -> Result<EventNotifications, StoreError> {
        EventNotifications::listen(&self.backend).await
    }

    /// Which database this is, and whether it changed (a failover, a restore).
    pub fn identity(&self) -> DatabaseIdentity<'_> {
        DatabaseIdentity::new(&self.backend)
    }

    /// The keeper's claims on connections whose refresh token nears its end.
    pub fn keepalive(&self) -> Keepalive<'_> {
        Keepalive::new(&self.backend)
    }

    /// Purging the ciphertexts of rotated refresh tokens.
    pub fn retention(&self) -> Retention<'_> {
        Retention::new(&self.backend)
    }

    pub fn audit(&self) -> AuditEvents<'_> {
        AuditEvents::new(&self.backend)
    }

    /// The applied migrations against the embedded ones (`doctor`).
    pub fn migrations(&self) -> Migrations<'_> {
        Migrations::new(&self.backend)
    }

    /// Every sealed column, seen by key (`keys status`, `keys rewrap`).
    pub fn sealed_values(&self) -> SealedValues<'_> {
        SealedValues::new(&self.backend)
    }
}
