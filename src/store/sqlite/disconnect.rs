//! SQLite: DeleteConnection's lease and wipe (the statements behind `store::disconnect`), each
//! one `BEGIN IMMEDIATE` transaction.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{begin_immediate, connections::event, later, SqlitePools};
use crate::{
    connection_key::ConnectionKey,
    store::{connections::CurrentRefreshToken, disconnect::*, StoreError},
};

pub(in crate::store) async fn take_disconnect_lease(
    db: &SqlitePools,
    key: &ConnectionKey,
    holder: Uuid,
    ttl: Duration,
) -> Result<DisconnectLease, StoreError> {
    async {
        let (tenant, provider) = (key.tenant().as_str(), key.provider().as_str());
        let until = later(ttl);
        let mut tx = begin_immediate(db).await?;
        let target = sqlx::query!(
            r#"SELECT id AS "id!", status AS "status!", disconnected_at AS "disconnected_at: OffsetDateTime",
                      generation AS "generation!"
                 FROM connections WHERE tenant_id = ?1 AND provider = ?2"#,
            tenant,
            provider,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(target) = target else {
            return Ok(DisconnectLease::NotFound);
        };
        if target.status == "disconnected" {
            return Ok(DisconnectLease::AlreadyDisconnected {
                disconnected_at: target.disconnected_at,
            });
        }
        // Fenced on the generation just read, as on Postgres (here nothing can commit in
        // between: the write lock is ours).
        let leased = sqlx::query!(
            "UPDATE connections
                SET refresh_lease_holder = ?2, refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3)
              WHERE id = ?1 AND status <> 'disconnected' AND generation = ?4
                AND (refresh_lease_until IS NULL OR refresh_lease_until <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            target.id,
            holder,
            until,
            target.generation,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if leased != 1 {
            return Ok(DisconnectLease::Busy);
        }
        let refresh_token = sqlx::query_as!(
            CurrentRefreshToken,
            r#"SELECT generation AS "generation!", token AS "token!: Vec<u8>" FROM refresh_tokens
                WHERE connection_id = ?1 AND superseded_at IS NULL AND token IS NOT NULL
                ORDER BY generation DESC LIMIT 1"#,
            target.id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DisconnectLease::Taken {
            connection_id: target.id,
            generation: target.generation,
            refresh_token,
        })
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn disconnect(
    db: &SqlitePools,
    connection_id: i64,
    generation: i64,
    holder: Uuid,
    last_error: Option<&str>,
    event_reason: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    async {
        let mut tx = begin_immediate(db).await?;
        let updated = sqlx::query!(
            r#"UPDATE connections
                  SET generation = generation + 1, status = 'disconnected', status_reason = 'deleted',
                      status_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                      disconnected_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), access_token = NULL,
                      keepalive_due_at = NULL, keepalive_claimed_until = NULL,
                      last_error = ?4,
                      last_error_at = CASE WHEN ?4 IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END,
                      refresh_lease_holder = NULL, refresh_lease_until = NULL,
                      updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                WHERE id = ?1 AND generation = ?2 AND refresh_lease_holder = ?3 AND status <> 'disconnected'
            RETURNING tenant_id AS "tenant_id!", provider AS "provider!", generation AS "generation!",
                      disconnected_at AS "disconnected_at!: OffsetDateTime""#,
            connection_id,
            generation,
            holder,
            last_error,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(updated) = updated else {
            tx.commit().await?;
            return Ok(None);
        };
        sqlx::query!(
            "UPDATE refresh_tokens
                SET token = NULL, purged_at = COALESCE(purged_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                    superseded_at = COALESCE(superseded_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
              WHERE connection_id = ?1",
            connection_id,
        )
        .execute(&mut *tx)
        .await?;
        event(
            &mut tx,
            connection_id,
            &updated.tenant_id,
            &updated.provider,
            "disconnected",
            "disconnected",
            Some(event_reason),
            updated.generation,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(updated.disconnected_at))
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}
