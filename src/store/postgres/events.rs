//! Postgres: events (the statements behind `store::events`).
//!
//! Order: by (txid, id), the writing transaction's id then the row's. A reader takes only rows
//! of transactions below its snapshot's xmin, i.e. finished ones: every transaction still
//! running, and every one that starts later, has a txid at or above it. So once a reader has
//! passed a position, no row can ever appear behind it; ordering by id alone would skip a row
//! whose transaction took its id early and committed late.

use crate::store::StoreError;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::Pool;
use tracing::Instrument;

use crate::store::events::*;

/// The channel the table's trigger notifies after every insert (the migration's
/// `connection_events_notify`).
const CHANNEL: &str = "token_vault_connection_events";

/// A listener on a connection of its own.
pub(in crate::store) async fn listen(pool: &Pool) -> Result<PgListener, StoreError> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn txid(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Database(sqlx::Error::Decode(format!("txid {text:?} is not a number").into())))
}

pub(in crate::store) async fn head(pool: &Pool) -> Result<EventPosition, StoreError> {
    async {
        let row = sqlx::query!(
            r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS "xmin!",
                      txid::text AS "pruned_txid!", id AS pruned_id
                 FROM connection_events_pruned LIMIT 1"#
        )
        .fetch_one(pool)
        .await?;
        let now = EventPosition {
            txid: txid(&row.xmin)?,
            id: 0,
        };
        let pruned = EventPosition {
            txid: txid(&row.pruned_txid)?,
            id: row.pruned_id,
        };
        Ok(now.max(pruned))
    }
    .instrument(db_span!("SELECT", "connection_events"))
    .await
}

pub(in crate::store) async fn after(pool: &Pool, after: EventPosition, limit: i64) -> Result<EventBatch, StoreError> {
    async {
        let rows = sqlx::query!(
            r#"SELECT (p.txid, p.id) > ($1::text::xid8, $2::bigint) AS "expired!",
                      $1::text::xid8 > pg_snapshot_xmax(pg_current_snapshot()) AS "unknown!",
                      EXISTS (SELECT 1 FROM connection_events
                               WHERE (txid, id) > ($1::text::xid8, $2::bigint)
                                 AND txid >= pg_snapshot_xmin(pg_current_snapshot())) AS "held!",
                      e.id AS "id?", e.txid::text AS "txid?", e.occurred_at AS "occurred_at?",
                      e.tenant_id AS "tenant_id?", e.provider AS "provider?", e.kind AS "kind?",
                      e.status AS "status?", e.reason
                 FROM (SELECT txid, id FROM connection_events_pruned LIMIT 1) p
                 LEFT JOIN LATERAL (
                      SELECT id, txid, occurred_at, tenant_id, provider, kind, status, reason
                        FROM connection_events
                       WHERE (txid, id) > ($1::text::xid8, $2::bigint)
                         AND txid < pg_snapshot_xmin(pg_current_snapshot())
                       ORDER BY txid, id
                       LIMIT $3) e ON true
                ORDER BY e.txid, e.id"#,
            after.txid.to_string(),
            after.id,
            limit,
        )
        .fetch_all(pool)
        .await?;
        let Some(first) = rows.first() else {
            return Err(StoreError::Database(sqlx::Error::RowNotFound));
        };
        if first.unknown {
            return Ok(EventBatch::Unknown);
        }
        if first.expired {
            return Ok(EventBatch::Expired);
        }
        let held = first.held;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            // The LEFT JOIN's one row of NULLs when nothing is new.
            let (Some(id), Some(tx), Some(occurred_at), Some(tenant_id), Some(provider), Some(kind), Some(status)) = (
                row.id,
                row.txid,
                row.occurred_at,
                row.tenant_id,
                row.provider,
                row.kind,
                row.status,
            ) else {
                continue;
            };
            events.push(EventRow {
                position: EventPosition { txid: txid(&tx)?, id },
                occurred_at,
                tenant_id,
                provider,
                kind,
                status,
                reason: row.reason,
            });
        }
        Ok(EventBatch::Events { rows: events, held })
    }
    .instrument(db_span!("SELECT", "connection_events"))
    .await
}

pub(in crate::store) async fn delete_older_than(
    pool: &Pool,
    keep: std::time::Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    async {
        let deleted = sqlx::query_scalar!(
            r#"WITH doomed AS (
                   SELECT id FROM connection_events
                    WHERE occurred_at < now() - make_interval(secs => $1)
                    ORDER BY occurred_at
                    LIMIT $2
                      FOR UPDATE SKIP LOCKED),
               gone AS (
                   DELETE FROM connection_events e USING doomed d WHERE e.id = d.id
                   RETURNING e.txid, e.id),
               newest AS (
                   SELECT txid, id FROM gone ORDER BY txid DESC, id DESC LIMIT 1),
               marked AS (
                   UPDATE connection_events_pruned p SET txid = n.txid, id = n.id
                     FROM newest n
                    WHERE (n.txid, n.id) > (p.txid, p.id)
                   RETURNING 1)
               SELECT count(*) AS "deleted!" FROM gone"#,
            keep.as_secs_f64(),
            batch,
        )
        .fetch_one(pool)
        .await?;
        Ok(u64::try_from(deleted).unwrap_or_default())
    }
    .instrument(db_span!("DELETE", "connection_events"))
    .await
}
