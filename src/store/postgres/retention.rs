//! Postgres: retention (the statements behind `store::retention`).

use super::Pool;
use crate::store::StoreError;
use std::time::Duration;
use tracing::Instrument;

use crate::store::retention::*;

pub(in crate::store) async fn purge_superseded(
    pool: &Pool,
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
        .fetch_one(pool)
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
