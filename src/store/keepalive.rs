//! The keeper's work queue: connections whose refresh token nears its end, claimed by one
//! replica at a time through Postgres (no leader), and what a failed keep-alive leaves behind.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;

use super::StoreError;

pub struct Keepalive<'a> {
    pool: &'a PgPool,
}

/// A connection a keeper claimed: refresh it from `generation`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub tenant_id: String,
    pub provider: String,
    pub generation: i64,
}

/// One claim statement's connections, and until when they are this replica's.
#[derive(Debug, Clone)]
pub struct Claim {
    pub connections: Vec<Claimed>,
    /// The same for every row of one statement (`now()` is the transaction's start).
    pub claimed_until: Option<OffsetDateTime>,
}

impl<'a> Keepalive<'a> {
    pub(super) fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// Claims up to `limit` due connections, most overdue first, for `ttl`: other replicas'
    /// keepers skip them meanwhile (rows another keeper is claiming right now are skipped,
    /// not waited for), and a keep-alive that fails keeps its claim, so the connection is tried
    /// again only once the claim lapses. A connection whose refresh lease is held is being
    /// refreshed already and is left alone. The inner SELECT is a range scan of the partial
    /// index `connections_keepalive_due`, however many connections there are.
    ///
    /// Only connections of `providers` (those configured) are claimed: a connection whose
    /// provider left the configuration can't be refreshed, and claiming it would spend the
    /// keeper's pace on it again and again, ahead of connections that can be kept alive.
    pub async fn claim(&self, limit: i64, ttl: Duration, providers: &[String]) -> Result<Claim, StoreError> {
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
            .fetch_all(self.pool)
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

    /// Gives back claims this replica took and will not start (it is stopping), so that
    /// another replica need not wait for them to lapse. Only claims still exactly as taken.
    pub async fn release(&self, ids: &[i64], claimed_until: OffsetDateTime) -> Result<u64, StoreError> {
        async {
            let done = sqlx::query!(
                r#"UPDATE connections SET keepalive_claimed_until = NULL
                    WHERE id = ANY($1) AND keepalive_claimed_until = $2"#,
                ids,
                claimed_until,
            )
            .execute(self.pool)
            .await?;
            Ok(done.rows_affected())
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }

    /// Records a failed keep-alive (a stable reason, never a secret) and claims the connection
    /// for `retry_after` from now: the backoff before a keeper tries again. Its due moment
    /// moves to then too, so that claims, which take the most overdue first, reach connections
    /// that have not failed before coming back to it: a provider that stays down can't starve
    /// the keep-alive of the others. Fenced on the
    /// generation the keep-alive started from, so a newer refresh's clean state stays.
    pub async fn note_failure(
        &self,
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
            .execute(self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }
}
