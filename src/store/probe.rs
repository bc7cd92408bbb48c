//! One connection opened and closed, for `doctor`: unlike a pool, which retries until its
//! acquire timeout and then reports only that it timed out, a single attempt fails with its
//! cause (refused, unknown host, authentication failed, no such database; for SQLite, a file
//! that is missing or unreadable: doctor opens it without creating it, since it writes nothing).

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{ConnectOptions, Connection};

use super::{StoreError, StoreKind};

/// Connects to `url` within `timeout`, runs `SELECT 1`, and closes the connection.
pub async fn probe_connection(url: &SecretString, timeout: Duration) -> Result<(), StoreError> {
    #[cfg(feature = "sqlite")]
    if StoreKind::of_url(url.expose_secret()) == Some(StoreKind::Sqlite) {
        // Named here: SQLite itself would only say "unable to open database file".
        if let Some(path) = super::sqlite::missing_file(url.expose_secret()) {
            return Err(StoreError::MissingFile { path });
        }
    }
    let attempt = async {
        match StoreKind::of_url(url.expose_secret()) {
            #[cfg(feature = "postgres")]
            Some(StoreKind::Postgres) => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url.expose_secret())?;
                let mut conn = options.connect().await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await?;
            }
            #[cfg(feature = "sqlite")]
            Some(StoreKind::Sqlite) => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url.expose_secret())?
                    .create_if_missing(false)
                    .read_only(true);
                let mut conn = options.connect().await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await?;
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(sqlx::Error::Configuration(
                    "database.url: not a store this build has (postgres://, sqlite://)".into(),
                ))
            }
        }
        Ok::<_, sqlx::Error>(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
    }
}
