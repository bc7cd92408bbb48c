//! The Postgres store: the pool, and each repository's statements. Production, and the only
//! store for replicas: row locks, `SKIP LOCKED`, LISTEN/NOTIFY and the database's identity
//! across failovers are Postgres's.

/// A `db` client span around one repository call, named as OpenTelemetry's database
/// conventions ask (`<OPERATION> <table>`); extra fields may follow. Its target is
/// `telemetry::DB_SPAN_TARGET`'s, which keeps it in traces and out of the logs.
macro_rules! db_span {
    ($operation:literal, $table:literal $(, $($field:tt)+)?) => {
        tracing::info_span!(
            target: "token_vault::db",
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

pub(super) mod audit;
pub(super) mod connections;
pub(super) mod disconnect;
pub(super) mod events;
pub(super) mod identity;
pub(super) mod keepalive;
pub(super) mod pending;
mod pool;
pub(super) mod retention;
pub(super) mod sealed_values;

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection};

pub use pool::{Pool, PooledConnection};

use super::{PoolOptions, StoreError};

pub(super) fn connect_lazy(url: &SecretString, options: &PoolOptions) -> Result<Pool, StoreError> {
    let connect = PgConnectOptions::from_str(url.expose_secret())
        .map_err(StoreError::Database)?
        // Statements are logged at debug only: parameters are never logged by sqlx, but
        // there is nothing to learn from every hot-path SELECT at info.
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    // No ping before a connection is handed out, nor after it comes back (see `pool`). A
    // connection that died (a database restart) fails its next query, is discarded, and that
    // one call answers UNAVAILABLE; refresh commits and waits retry on their own.
    Ok(Pool::new(connect, options.max_connections, options.acquire_timeout))
}

/// Creates the database named in `url` when it does not exist (development convenience).
pub(super) async fn create_database_if_missing(url: &SecretString) -> Result<(), StoreError> {
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
