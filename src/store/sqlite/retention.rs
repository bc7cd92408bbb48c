//! SQLite: purging the ciphertexts of rotated refresh tokens (the statements behind
//! `store::retention`): the candidates and their purge in one `BEGIN IMMEDIATE` transaction.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::Instrument;

use super::{begin_immediate, earlier, ts_opt, SqlitePools};
use crate::store::{retention::*, StoreError};

pub(in crate::store) async fn purge_superseded(
    db: &SqlitePools,
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
        let after_at = ts_opt(after_at);
        let before = earlier(keep_for);
        let keep_generations = i64::from(keep_generations);
        let mut tx = begin_immediate(db).await?;
        let candidates = sqlx::query!(
            r#"SELECT connection_id AS "connection_id!", generation AS "generation!",
                      superseded_at AS "superseded_at!: OffsetDateTime"
                 FROM refresh_tokens
                WHERE superseded_at IS NOT NULL AND token IS NOT NULL
                  AND superseded_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)
                  AND (?2 IS NULL OR (superseded_at, connection_id, generation) > (?2, ?3, ?4))
                ORDER BY superseded_at, connection_id, generation
                LIMIT ?5"#,
            before,
            after_at,
            after_connection,
            after_generation,
            limit,
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut purged = 0;
        for c in &candidates {
            purged += sqlx::query!(
                "UPDATE refresh_tokens SET token = NULL, purged_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                  WHERE connection_id = ?1 AND generation = ?2 AND token IS NOT NULL
                    AND (SELECT count(*) FROM refresh_tokens n
                          WHERE n.connection_id = ?1 AND n.superseded_at IS NOT NULL
                            AND n.generation > ?2) >= ?3",
                c.connection_id,
                c.generation,
                keep_generations,
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        let next = candidates
            .last()
            .map(|c| SweepPosition(Some((c.superseded_at, c.connection_id, c.generation))))
            .unwrap_or(from);
        Ok(Purged {
            purged,
            examined: candidates.len() as u64,
            next,
        })
    }
    .instrument(db_span!("UPDATE", "refresh_tokens"))
    .await
}
