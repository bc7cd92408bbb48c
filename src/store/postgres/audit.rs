//! Postgres: audit (the statements behind `store::audit`).

use super::Pool;
use crate::store::StoreError;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::audit::*;

pub(in crate::store) async fn insert(pool: &Pool, rows: &[AuditRow]) -> Result<(), StoreError> {
    async {
        if rows.is_empty() {
            return Ok(());
        }
        let occurred_at: Vec<OffsetDateTime> = rows.iter().map(|r| r.occurred_at).collect();
        let window_end: Vec<Option<OffsetDateTime>> = rows.iter().map(|r| r.window_end).collect();
        let event: Vec<String> = rows.iter().map(|r| r.event.to_owned()).collect();
        let caller: Vec<String> = rows.iter().map(|r| r.caller.clone()).collect();
        let tenant_id: Vec<Option<String>> = rows.iter().map(|r| r.tenant_id.clone()).collect();
        let provider: Vec<Option<String>> = rows.iter().map(|r| r.provider.clone()).collect();
        let outcome: Vec<String> = rows.iter().map(|r| r.outcome.clone()).collect();
        let detail: Vec<Option<String>> = rows.iter().map(|r| r.detail.clone()).collect();
        let count: Vec<i64> = rows.iter().map(|r| r.count).collect();
        let replica: Vec<Uuid> = rows.iter().map(|r| r.replica).collect();
        sqlx::query!(
            r#"INSERT INTO audit_events
                   (occurred_at, window_end, event, caller, tenant_id, provider, outcome, detail, count, replica)
               SELECT * FROM UNNEST($1::timestamptz[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::text[], $8::text[], $9::int8[], $10::uuid[])"#,
            &occurred_at,
            &window_end as &[Option<OffsetDateTime>],
            &event,
            &caller,
            &tenant_id as &[Option<String>],
            &provider as &[Option<String>],
            &outcome,
            &detail as &[Option<String>],
            &count,
            &replica,
        )
        .execute(pool)
        .await?;
        Ok(())
    }
    .instrument(db_span!("INSERT", "audit_events", rows = rows.len()))
    .await
}

pub(in crate::store) async fn delete_older_than(pool: &Pool, keep: std::time::Duration) -> Result<u64, StoreError> {
    async {
        let keep_secs = keep.as_secs_f64();
        let mut connection = pool.acquire().await?;
        let mut tx = connection.begin().await?;
        sqlx::query!("SELECT set_config('token_vault.audit_sweep', 'on', true)")
            .fetch_one(&mut *tx)
            .await?;
        let done = sqlx::query!(
            "DELETE FROM audit_events WHERE recorded_at < now() - make_interval(secs => $1)",
            keep_secs,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        connection.finished();
        Ok(done.rows_affected())
    }
    .instrument(db_span!("DELETE", "audit_events"))
    .await
}
