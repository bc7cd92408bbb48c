//! SQLite: the audit trail (the statements behind `store::audit`). Append-only by triggers (see
//! the migration); the sweep says it is the sweep with `audit_sweep.active`, set and cleared
//! inside its own transaction, so no other writer ever sees it set.

use std::time::Duration;

use tracing::Instrument;

use super::{begin_immediate, earlier, ts, ts_opt, SqlitePools};
use crate::store::{audit::*, StoreError};

pub(in crate::store) async fn insert(db: &SqlitePools, rows: &[AuditRow]) -> Result<(), StoreError> {
    async {
        if rows.is_empty() {
            return Ok(());
        }
        // One transaction (one commit, one fsync), however many rows.
        let mut tx = db.writer().begin().await?;
        for r in rows {
            let occurred_at = ts(r.occurred_at);
            let window_end = ts_opt(r.window_end);
            sqlx::query!(
                "INSERT INTO audit_events
                     (occurred_at, window_end, event, caller, tenant_id, provider, outcome, detail, count, replica)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                occurred_at,
                window_end,
                r.event,
                r.caller,
                r.tenant_id,
                r.provider,
                r.outcome,
                r.detail,
                r.count,
                r.replica,
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
    .instrument(db_span!("INSERT", "audit_events", rows = rows.len()))
    .await
}

pub(in crate::store) async fn delete_older_than(db: &SqlitePools, keep: Duration) -> Result<u64, StoreError> {
    async {
        let before = earlier(keep);
        let mut tx = begin_immediate(db).await?;
        sqlx::query!("UPDATE audit_sweep SET active = 1")
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query!(
            "DELETE FROM audit_events WHERE recorded_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
            before,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("UPDATE audit_sweep SET active = 0")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
    .instrument(db_span!("DELETE", "audit_events"))
    .await
}
