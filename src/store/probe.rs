//! One connection opened and closed, for `doctor`: unlike a pool, which retries until its
//! acquire timeout and then reports only that it timed out, a single attempt fails with its
//! cause (refused, unknown host, authentication failed, no such database).

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection};

use super::StoreError;

/// Connects to `url` within `timeout`, runs `SELECT 1`, and closes the connection.
pub async fn probe_connection(url: &SecretString, timeout: Duration) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url.expose_secret()).map_err(StoreError::Database)?;
    let attempt = async {
        let mut conn = options.connect().await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await?;
        Ok::<_, sqlx::Error>(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
    }
}
