//! Postgres: disconnect (the statements behind `store::disconnect`).

use super::Pool;

use crate::connection_key::ConnectionKey;
use crate::store::{connections::CurrentRefreshToken, StoreError};
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::disconnect::*;

pub(in crate::store) async fn take_disconnect_lease(
    pool: &Pool,
    key: &ConnectionKey,
    holder: Uuid,
    ttl: Duration,
) -> Result<DisconnectLease, StoreError> {
    async {
        let ttl_secs = ttl.as_secs_f64();
        // `target` reads the row as it was before the update beside it (one snapshot), and
        // the refresh token below is read from that snapshot too. The lease is fenced on
        // the snapshot's generation: a re-authorization, an import or a lapsed refresher
        // that commits while this statement waits for the row would otherwise give us the
        // lease on its new generation beside the old refresh token, which we would revoke
        // (harmlessly) before wiping the new one unrevoked. Fenced, the lease is not taken
        // (Busy) and the next attempt reads afresh.
        let row = sqlx::query!(
            r#"WITH target AS (
                   SELECT id, status, disconnected_at, generation FROM connections
                    WHERE tenant_id = $1 AND provider = $2),
               lease AS (
                   UPDATE connections
                      SET refresh_lease_holder = $3, refresh_lease_until = clock_timestamp() + make_interval(secs => $4)
                    WHERE tenant_id = $1 AND provider = $2 AND status <> 'disconnected'
                      AND generation = (SELECT generation FROM target)
                      AND (refresh_lease_until IS NULL OR refresh_lease_until <= now())
                RETURNING id, generation)
               SELECT t.id, t.status, t.disconnected_at, lease.generation AS "leased_generation?",
                      current.generation AS "refresh_generation?", current.token AS "refresh_token?"
                 FROM target t
                 LEFT JOIN lease ON true
                 LEFT JOIN LATERAL (
                      SELECT generation, token FROM refresh_tokens
                       WHERE connection_id = lease.id AND superseded_at IS NULL AND token IS NOT NULL
                       ORDER BY generation DESC LIMIT 1) current ON true"#,
            key.tenant().as_str(),
            key.provider().as_str(),
            holder,
            ttl_secs,
        )
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else {
            return Ok(DisconnectLease::NotFound);
        };
        if row.status == "disconnected" {
            return Ok(DisconnectLease::AlreadyDisconnected {
                disconnected_at: row.disconnected_at,
            });
        }
        let Some(generation) = row.leased_generation else {
            return Ok(DisconnectLease::Busy);
        };
        Ok(DisconnectLease::Taken {
            connection_id: row.id,
            generation,
            refresh_token: match (row.refresh_generation, row.refresh_token) {
                (Some(generation), Some(token)) => Some(CurrentRefreshToken { generation, token }),
                _ => None,
            },
        })
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn disconnect(
    pool: &Pool,
    connection_id: i64,
    generation: i64,
    holder: Uuid,
    last_error: Option<&str>,
    event_reason: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    async {
        let disconnected_at = sqlx::query_scalar!(
            r#"WITH updated AS (
                   UPDATE connections
                      SET generation = generation + 1, status = 'disconnected', status_reason = 'deleted',
                          status_changed_at = now(), disconnected_at = now(), access_token = NULL,
                          keepalive_due_at = NULL, keepalive_claimed_until = NULL,
                          last_error = $4, last_error_at = CASE WHEN $4::text IS NULL THEN NULL ELSE now() END,
                          refresh_lease_holder = NULL, refresh_lease_until = NULL, updated_at = now()
                    WHERE id = $1 AND generation = $2 AND refresh_lease_holder = $3 AND status <> 'disconnected'
                RETURNING id, tenant_id, provider, generation, disconnected_at),
               wiped AS (
                   UPDATE refresh_tokens
                      SET token = NULL, purged_at = COALESCE(purged_at, now()),
                          superseded_at = COALESCE(superseded_at, now())
                    WHERE connection_id = $1 AND EXISTS (SELECT 1 FROM updated)),
               event AS (
                   INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, reason, generation)
                   SELECT id, tenant_id, provider, 'disconnected', 'disconnected', $5, generation FROM updated)
               SELECT disconnected_at AS "disconnected_at!" FROM updated"#,
            connection_id,
            generation,
            holder,
            last_error,
            event_reason,
        )
        .fetch_optional(pool)
        .await?;
        Ok(disconnected_at)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}
