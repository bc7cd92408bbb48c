//! Postgres: pending (the statements behind `store::pending`).

use super::Pool;
use crate::store::StoreError;
use tracing::Instrument;

use crate::store::pending::*;

pub(in crate::store) async fn insert(pool: &Pool, new: NewPendingAuthorization<'_>) -> Result<u64, StoreError> {
    async {
        let mut connection = pool.acquire().await?;
        let mut tx = connection.begin().await?;
        // Serializes the begins of one tenant and provider, so that two at once can't each keep
        // `max_open` of the others and end above it together. Released at commit.
        sqlx::query!(
            r#"SELECT 1 AS "locked!" FROM pg_advisory_xact_lock(hashtext($1), hashtext($2))"#,
            new.key.tenant().as_str(),
            new.key.provider().as_str(),
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            r#"INSERT INTO pending_authorizations
                   (state_hash, tenant_id, provider, redirect_uri, scopes, pkce_verifier, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
            new.state_hash,
            new.key.tenant().as_str(),
            new.key.provider().as_str(),
            new.redirect_uri,
            new.scopes,
            new.pkce_verifier,
            new.expires_at,
        )
        .execute(&mut *tx)
        .await?;
        // The new state is never among those deleted, whatever its created_at (the time its
        // transaction began, possibly before a state committed ahead of it).
        let keep_others = i64::from(new.max_open.max(1) - 1);
        let superseded = sqlx::query!(
            r#"DELETE FROM pending_authorizations
                WHERE state_hash IN (
                    SELECT state_hash FROM pending_authorizations
                     WHERE tenant_id = $1 AND provider = $2 AND state_hash <> $3
                       AND consumed_at IS NULL AND expires_at > now()
                     ORDER BY created_at DESC, expires_at DESC
                    OFFSET $4)"#,
            new.key.tenant().as_str(),
            new.key.provider().as_str(),
            new.state_hash,
            keep_others,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        connection.finished();
        Ok(superseded)
    }
    .instrument(db_span!("INSERT", "pending_authorizations"))
    .await
}

pub(in crate::store) async fn consume(
    pool: &Pool,
    state_hash: &[u8],
) -> Result<Option<PendingAuthorization>, StoreError> {
    async {
        let row = sqlx::query_as!(
            PendingAuthorization,
            r#"DELETE FROM pending_authorizations
                WHERE state_hash = $1 AND consumed_at IS NULL AND expires_at > now()
            RETURNING state_hash, tenant_id, provider, redirect_uri, scopes, pkce_verifier"#,
            state_hash,
        )
        .fetch_optional(pool)
        .await?;
        Ok(row)
    }
    .instrument(db_span!("DELETE", "pending_authorizations"))
    .await
}

pub(in crate::store) async fn delete_finished(pool: &Pool) -> Result<u64, StoreError> {
    let done = sqlx::query!("DELETE FROM pending_authorizations WHERE expires_at <= now() OR consumed_at IS NOT NULL")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
