//! Postgres: the pool, migrations, and small repositories for each table. Every multi-step
//! write is one transaction; every concurrency rule is in SQL (guarded updates on the
//! connection's generation, the refresh lease compared with the database's clock).

/// A `db` client span around one repository call, named as OpenTelemetry's database
/// conventions ask (`<OPERATION> <table>`); extra fields may follow.
macro_rules! db_span {
    ($operation:literal, $table:literal $(, $($field:tt)+)?) => {
        tracing::info_span!(
            "db",
            otel.kind = "client",
            otel.name = concat!($operation, " ", $table),
            db.system.name = "postgresql",
            db.operation.name = $operation,
            db.collection.name = $table
            $(, $($field)+)?
        )
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

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, Connection, PgPool,
};

pub use audit::{AuditEvents, AuditRow};
pub use connections::{
    ConnectionFilter, ConnectionRow, ConnectionSummary, Connections, CurrentRefreshToken, DatabaseSeen, Leased,
    NewTokens, Origin, RefreshCause,
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
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable(e)
            }
            sqlx::Error::Tls(_) => StoreError::Unavailable(e),
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

/// The database facade: hands out repositories that share one pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Store {
    /// Connects lazily: the pool opens connections on first use, so the process starts (and
    /// reports NOT_SERVING) even while the database is down.
    pub fn connect_lazy(url: &SecretString, options: &PoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url.expose_secret())
            .map_err(StoreError::Database)?
            // Statements are logged at debug only: parameters are never logged by sqlx, but
            // there is nothing to learn from every hot-path SELECT at info.
            .log_statements(tracing::log::LevelFilter::Debug)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // No ping before every query: it doubles the round trips of every call. A
            // connection that died (a database restart) fails its next query, is discarded, and
            // that one call answers UNAVAILABLE; refresh commits and waits retry on their own.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the database named in `url` when it does not exist (development convenience).
    pub async fn create_database_if_missing(url: &SecretString) -> Result<(), StoreError> {
        let options = PgConnectOptions::from_str(url.expose_secret()).map_err(StoreError::Database)?;
        let Some(name) = options.get_database().map(str::to_owned) else {
            return Ok(());
        };
        let mut admin = options.database("postgres").connect().await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
        if !exists {
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&format!("CREATE DATABASE {quoted}"))
                .execute(&mut admin)
                .await
            {
                Ok(_) => tracing::info!(database = %name, "created the database"),
                // Another replica created it at the same moment.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e.into()),
            }
        }
        admin.close().await.ok();
        Ok(())
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// One round trip; used by the health reporter.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn pending(&self) -> PendingAuthorizations<'_> {
        PendingAuthorizations::new(&self.pool)
    }

    pub fn connections(&self) -> Connections<'_> {
        Connections::new(&self.pool)
    }

    /// Status changes of connections, for watchers and the retention sweep.
    pub fn events(&self) -> ConnectionEvents<'_> {
        ConnectionEvents::new(&self.pool)
    }

    /// Wake-ups for event watchers: a connection of its own, listening.
    pub async fn event_notifications(&self) -> Result<EventNotifications, StoreError> {
        EventNotifications::listen(&self.pool).await
    }

    /// Which database this is, and whether it changed (a failover, a restore).
    pub fn identity(&self) -> DatabaseIdentity<'_> {
        DatabaseIdentity::new(&self.pool)
    }

    /// The keeper's claims on connections whose refresh token nears its end.
    pub fn keepalive(&self) -> Keepalive<'_> {
        Keepalive::new(&self.pool)
    }

    /// Purging the ciphertexts of rotated refresh tokens.
    pub fn retention(&self) -> Retention<'_> {
        Retention::new(&self.pool)
    }

    pub fn audit(&self) -> AuditEvents<'_> {
        AuditEvents::new(&self.pool)
    }

    /// The applied migrations against the embedded ones (`doctor`).
    pub fn migrations(&self) -> Migrations<'_> {
        Migrations::new(&self.pool)
    }

    /// Every sealed column, seen by key (`keys status`, `keys rewrap`).
    pub fn sealed_values(&self) -> SealedValues<'_> {
        SealedValues::new(&self.pool)
    }
}
