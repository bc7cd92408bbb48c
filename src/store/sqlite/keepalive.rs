//! SQLite: the keeper's claims (the statements behind `store::keepalive`). A claim is one
//! UPDATE statement, which holds the write lock from its start: two keepers on one file can't
//! claim the same connection, and nothing needs skipping (there are no row locks to skip).

use std::time::Duration;

use time::OffsetDateTime;
use tracing::Instrument;

use super::{json_array, later, ts, SqlitePools};
use crate::store::{keepalive::*, StoreError};

pub(in crate::store) async fn claim(
    db: &SqlitePools,
    limit: i64,
    ttl: Duration,
    providers: &[String],
) -> Result<Claim, StoreError> {
    async {
        let until = later(ttl);
        let providers = json_array(providers);
        let rows = sqlx::query_file!("src/store/sqlite/keepalive_claim.sql", limit, until, providers)
            .fetch_all(db.writer())
            .await?;
        let claimed_until = rows.first().map(|r| r.claimed_until);
        Ok(Claim {
            connections: rows
                .into_iter()
                .map(|r| Claimed {
                    id: r.id,
                    tenant_id: r.tenant_id,
                    provider: r.provider,
                    generation: r.generation,
                })
                .collect(),
            claimed_until,
        })
    }
    .instrument(db_span!("UPDATE", "connections", keepalive.limit = limit))
    .await
}

pub(in crate::store) async fn release(
    db: &SqlitePools,
    ids: &[i64],
    claimed_until: OffsetDateTime,
) -> Result<u64, StoreError> {
    async {
        let ids = json_array(ids);
        let claimed_until = ts(claimed_until);
        let done = sqlx::query!(
            "UPDATE connections SET keepalive_claimed_until = NULL
              WHERE id IN (SELECT value FROM json_each(?1)) AND keepalive_claimed_until = ?2",
            ids,
            claimed_until,
        )
        .execute(db.writer())
        .await?;
        Ok(done.rows_affected())
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn note_failure(
    db: &SqlitePools,
    connection_id: i64,
    generation: i64,
    reason: &str,
    retry_after: Duration,
) -> Result<bool, StoreError> {
    async {
        let retry = later(retry_after);
        let done = sqlx::query!(
            "UPDATE connections
                SET last_error = ?3, last_error_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                    keepalive_claimed_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4),
                    keepalive_due_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4),
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
              WHERE id = ?1 AND generation = ?2 AND status = 'active'",
            connection_id,
            generation,
            reason,
            retry,
        )
        .execute(db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}
