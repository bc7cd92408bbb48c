//! Postgres: keepalive (the statements behind `store::keepalive`).

use super::Pool;
use crate::store::StoreError;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::store::keepalive::*;

pub(in crate::store) async fn claim(
    pool: &Pool,
    limit: i64,
    ttl: Duration,
    providers: &[String],
) -> Result<Claim, StoreError> {
    async {
        let rows = sqlx::query!(
            r#"UPDATE connections
                  SET keepalive_claimed_until = now() + make_interval(secs => $2)
                WHERE id IN (
                      SELECT id FROM connections
                       WHERE status = 'active' AND keepalive_due_at IS NOT NULL AND keepalive_due_at <= now()
                         AND (keepalive_claimed_until IS NULL OR keepalive_claimed_until <= now())
                         AND (refresh_lease_until IS NULL OR refresh_lease_until <= now())
                         AND provider = ANY($3)
                       ORDER BY keepalive_due_at
                       LIMIT $1
                         FOR UPDATE SKIP LOCKED)
            RETURNING id, tenant_id, provider, generation, keepalive_claimed_until AS "claimed_until!""#,
            limit,
            ttl.as_secs_f64(),
            providers,
        )
        .fetch_all(pool)
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
    pool: &Pool,
    ids: &[i64],
    claimed_until: OffsetDateTime,
) -> Result<u64, StoreError> {
    async {
        let done = sqlx::query!(
            r#"UPDATE connections SET keepalive_claimed_until = NULL
                WHERE id = ANY($1) AND keepalive_claimed_until = $2"#,
            ids,
            claimed_until,
        )
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn note_failure(
    pool: &Pool,
    connection_id: i64,
    generation: i64,
    reason: &str,
    retry_after: Duration,
) -> Result<bool, StoreError> {
    async {
        let done = sqlx::query!(
            r#"UPDATE connections
                  SET last_error = $3, last_error_at = now(),
                      keepalive_claimed_until = now() + make_interval(secs => $4),
                      keepalive_due_at = now() + make_interval(secs => $4), updated_at = now()
                WHERE id = $1 AND generation = $2 AND status = 'active'"#,
            connection_id,
            generation,
            reason,
            retry_after.as_secs_f64(),
        )
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}
