//! Retention of rotated refresh tokens: the ciphertexts of superseded generations are purged
//! once outside both bounds; their rows (the history) stay.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;

use super::StoreError;

pub struct Retention<'a> {
    pool: &'a PgPool,
}

/// Where a sweep has got to in the superseded tokens still holding a ciphertext, in the order
/// they were superseded: `None` before the first statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepPosition(Option<(OffsetDateTime, i64, i64)>);

/// What one purge statement did.
#[derive(Debug, Clone, Copy)]
pub struct Purged {
    /// Ciphertexts purged.
    pub purged: u64,
    /// Superseded tokens looked at (purged or kept): fewer than the limit means the sweep is
    /// done.
    pub examined: u64,
    /// Where the next statement of the same sweep starts.
    pub next: SweepPosition,
}

impl<'a> Retention<'a> {
    pub(super) fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// Looks at up to `limit` superseded refresh tokens still holding a ciphertext, superseded
    /// more than `keep_for` ago, after `from` in the order they were superseded; purges
    /// (token = NULL, purged_at = now()) those not among the newest `keep_generations`
    /// superseded generations of their connection. Outside BOTH bounds, then; the current
    /// token (superseded_at NULL) is never touched.
    ///
    /// Bounded by what it looks at, not by what it purges: tokens kept by the generation bound
    /// stay candidates by age, and a statement that had to walk past all of them to fill its
    /// purge quota would be one long statement. The candidates come in order from the partial
    /// index `refresh_tokens_superseded`. A concurrent sweep on another replica waits for the
    /// rows this one updates and then skips them (their token is NULL by then).
    pub async fn purge_superseded(
        &self,
        keep_generations: u32,
        keep_for: Duration,
        limit: i64,
        from: SweepPosition,
    ) -> Result<Purged, StoreError> {
        async {
            let (after_at, after_connection, after_generation) = match from.0 {
                Some((at, connection, generation)) => (Some(at), Some(connection), Some(generation)),
                None => (None, None, None),
            };
            let row = sqlx::query!(
                r#"WITH candidates AS (
                       SELECT connection_id, generation, superseded_at
                         FROM refresh_tokens
                        WHERE superseded_at IS NOT NULL AND token IS NOT NULL
                          AND superseded_at < now() - make_interval(secs => $2)
                          AND ($4::timestamptz IS NULL OR superseded_at >= $4)
                          AND ($4::timestamptz IS NULL
                               OR (superseded_at, connection_id, generation) > ($4, $5::bigint, $6::bigint))
                        ORDER BY superseded_at, connection_id, generation
                        LIMIT $3),
                   purged AS (
                       UPDATE refresh_tokens r
                          SET token = NULL, purged_at = now()
                         FROM candidates c
                        WHERE r.connection_id = c.connection_id AND r.generation = c.generation
                          AND r.token IS NOT NULL
                          AND (SELECT count(*) FROM refresh_tokens n
                                WHERE n.connection_id = c.connection_id
                                  AND n.superseded_at IS NOT NULL
                                  AND n.generation > c.generation) >= $1
                    RETURNING 1),
                   last AS (
                       SELECT superseded_at, connection_id, generation FROM candidates
                        ORDER BY superseded_at DESC, connection_id DESC, generation DESC LIMIT 1)
                   SELECT (SELECT count(*) FROM purged) AS "purged!",
                          (SELECT count(*) FROM candidates) AS "examined!",
                          (SELECT superseded_at FROM last) AS "last_at?",
                          (SELECT connection_id FROM last) AS "last_connection?",
                          (SELECT generation FROM last) AS "last_generation?""#,
                i64::from(keep_generations),
                keep_for.as_secs_f64(),
                limit,
                after_at,
                after_connection,
                after_generation,
            )
            .fetch_one(self.pool)
            .await?;
            let next = match (row.last_at, row.last_connection, row.last_generation) {
                (Some(at), Some(connection), Some(generation)) => SweepPosition(Some((at, connection, generation))),
                _ => from,
            };
            Ok(Purged {
                purged: u64::try_from(row.purged).unwrap_or(0),
                examined: u64::try_from(row.examined).unwrap_or(0),
                next,
            })
        }
        .instrument(db_span!("UPDATE", "refresh_tokens"))
        .await
    }
}
