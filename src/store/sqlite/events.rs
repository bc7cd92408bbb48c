//! SQLite: connection events (the statements behind `store::events`).
//!
//! Order: by id alone. SQLite runs one writing transaction at a time, and an AUTOINCREMENT id
//! is taken inside it, so ids are handed out in commit order: once a reader has passed an id,
//! no row with a smaller one can appear (Postgres needs the writing transaction's id for
//! this). A position's `txid` is always 0 here. No LISTEN/NOTIFY: watchers poll.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::Instrument;

use super::{begin_immediate, earlier, SqlitePools};
use crate::store::{events::*, StoreError};

/// The newest id ever handed out (deleted or not) and the pruned mark, read in one snapshot.
async fn marks(conn: &mut sqlx::SqliteConnection) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query!(
        r#"SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'connection_events'), 0) AS "newest!: i64",
                  (SELECT id FROM connection_events_pruned) AS "pruned!: i64""#
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.newest, row.pruned))
}

pub(in crate::store) async fn head(db: &SqlitePools) -> Result<EventPosition, StoreError> {
    async {
        let mut conn = db.readers().acquire().await?;
        let (newest, pruned) = marks(&mut conn).await?;
        Ok(EventPosition {
            txid: 0,
            id: newest.max(pruned),
        })
    }
    .instrument(db_span!("SELECT", "connection_events"))
    .await
}

pub(in crate::store) async fn after(
    db: &SqlitePools,
    after: EventPosition,
    limit: i64,
) -> Result<EventBatch, StoreError> {
    async {
        // One read transaction: the marks and the rows from one snapshot, so a sweep
        // committing in between can't make events vanish unnoticed.
        let mut tx = db.readers().begin().await?;
        let (newest, pruned) = marks(&mut tx).await?;
        if after.txid != 0 || after.id > newest {
            return Ok(EventBatch::Unknown);
        }
        if pruned > after.id {
            return Ok(EventBatch::Expired);
        }
        let rows = sqlx::query!(
            r#"SELECT id AS "id!", occurred_at AS "occurred_at!: OffsetDateTime", tenant_id AS "tenant_id!",
                      provider AS "provider!", kind AS "kind!", status AS "status!", reason
                 FROM connection_events WHERE id > ?1 ORDER BY id LIMIT ?2"#,
            after.id,
            limit,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(EventBatch::Events {
            rows: rows
                .into_iter()
                .map(|r| EventRow {
                    position: EventPosition { txid: 0, id: r.id },
                    occurred_at: r.occurred_at,
                    tenant_id: r.tenant_id,
                    provider: r.provider,
                    kind: r.kind,
                    status: r.status,
                    reason: r.reason,
                })
                .collect(),
            // Nothing committed is ever held back behind a running writer here.
            held: false,
        })
    }
    .instrument(db_span!("SELECT", "connection_events"))
    .await
}

pub(in crate::store) async fn delete_older_than(
    db: &SqlitePools,
    keep: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    async {
        let before = earlier(keep);
        let mut tx = begin_immediate(db).await?;
        let gone = sqlx::query_scalar!(
            r#"DELETE FROM connection_events
                WHERE id IN (SELECT id FROM connection_events
                              WHERE occurred_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)
                              ORDER BY occurred_at LIMIT ?2)
            RETURNING id AS "id!""#,
            before,
            batch,
        )
        .fetch_all(&mut *tx)
        .await?;
        if let Some(newest) = gone.iter().max() {
            sqlx::query!("UPDATE connection_events_pruned SET id = max(id, ?1)", newest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }
    .instrument(db_span!("DELETE", "connection_events"))
    .await
}
