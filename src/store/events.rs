//! Table `connection_events`, read in commit-safe order: every status change of a connection,
//! written by the transaction that made it (`connections.rs`), read here by watchers and
//! pruned by the retention sweep.
//!
//! Order: by (txid, id), the writing transaction's id then the row's. A reader takes only rows
//! of transactions below its snapshot's xmin, i.e. finished ones: every transaction still
//! running, and every one that starts later, has a txid at or above it. So once a reader has
//! passed a position, no row can ever appear behind it; ordering by id alone would skip a row
//! whose transaction took its id early and committed late.

use sqlx::{
    postgres::{PgListener, PgPoolOptions},
    PgPool,
};
use time::OffsetDateTime;
use tracing::Instrument;

use super::StoreError;

/// The channel the table's trigger notifies after every insert (the migration's
/// `connection_events_notify`).
const CHANNEL: &str = "token_vault_connection_events";

/// Notifications of new events, on one connection of its own: outside the vault's pool, so that
/// a listener held for the replica's whole life never takes a connection from the calls.
pub struct EventNotifications {
    listener: PgListener,
}

impl EventNotifications {
    pub(super) async fn listen(pool: &PgPool) -> Result<Self, StoreError> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen(CHANNEL).await?;
        Ok(Self { listener })
    }

    /// The next notification (true), or false when the connection was lost: the next call
    /// reconnects and listens again, and notifications sent meanwhile are lost.
    pub async fn next(&mut self) -> Result<bool, StoreError> {
        Ok(self.listener.try_recv().await?.is_some())
    }
}

/// A place in the events' order: after (txid, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPosition {
    pub txid: u64,
    pub id: i64,
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub position: EventPosition,
    pub occurred_at: OffsetDateTime,
    pub tenant_id: String,
    pub provider: String,
    /// `authorized`, `refreshed_by_keepalive`, … (the table's check constraint).
    pub kind: String,
    /// The connection's status after the change.
    pub status: String,
    pub reason: Option<String>,
}

/// One read after a position.
#[derive(Debug)]
pub enum EventBatch {
    /// The next finished events, in order (possibly none).
    Events {
        rows: Vec<EventRow>,
        /// Events after the position are committed but held back behind a transaction still
        /// running (anywhere on the Postgres cluster): read again soon, as no notification
        /// will say when it ends.
        held: bool,
    },
    /// The sweep deleted events after the position: the reader can't continue from it.
    Expired,
    /// The position names a transaction this database never started (a forged cursor, or one
    /// from another database).
    Unknown,
}

pub struct ConnectionEvents<'a> {
    pool: &'a PgPool,
}

fn txid(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Database(sqlx::Error::Decode(format!("txid {text:?} is not a number").into())))
}

impl<'a> ConnectionEvents<'a> {
    pub fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// "Now": every event of a transaction finished so far lies before it, every later one
    /// after it. Never before the pruned mark: a transaction older than the newest deleted event
    /// still running (possible only with a retention shorter than that transaction's life)
    /// must not make a fresh start look expired.
    pub async fn head(&self) -> Result<EventPosition, StoreError> {
        async {
            let row = sqlx::query!(
                r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS "xmin!",
                          txid::text AS "pruned_txid!", id AS pruned_id
                     FROM connection_events_pruned LIMIT 1"#
            )
            .fetch_one(self.pool)
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

    /// Up to `limit` finished events after `after`, in order; or why the position can't be read
    /// from. Whether the sweep passed the position is read in the same statement (one snapshot)
    /// as the events, so a sweep committing in between can't make events vanish unnoticed.
    /// Unfiltered: a watcher filters what it reads, so that its position moves past events it
    /// does not want instead of scanning them again on every read.
    pub async fn after(&self, after: EventPosition, limit: i64) -> Result<EventBatch, StoreError> {
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
            .fetch_all(self.pool)
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

    /// Deletes up to `batch` events that occurred more than `keep` ago and moves the pruned
    /// mark past them, in one statement; returns how many were deleted. Replicas sweeping at
    /// once skip each other's rows.
    pub async fn delete_older_than(&self, keep: std::time::Duration, batch: i64) -> Result<u64, StoreError> {
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
            .fetch_one(self.pool)
            .await?;
            Ok(u64::try_from(deleted).unwrap_or_default())
        }
        .instrument(db_span!("DELETE", "connection_events"))
        .await
    }
}
