//! Pending authorizations: begun by BeginAuthorization, consumed once by CompleteAuthorization.
//! Bounded: at most `max_open` open per tenant and provider (the oldest give way), deleted when
//! consumed, and swept once expired.

use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;

use super::StoreError;
use crate::connection_key::ConnectionKey;

pub struct PendingAuthorizations<'a> {
    pool: &'a PgPool,
}

pub struct NewPendingAuthorization<'a> {
    pub state_hash: &'a [u8],
    pub key: &'a ConnectionKey,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub pkce_verifier: Option<Vec<u8>>,
    pub expires_at: OffsetDateTime,
    /// Open (unconsumed, unexpired) states this tenant and provider may have, this one included.
    pub max_open: u32,
}

#[derive(Debug)]
pub struct PendingAuthorization {
    pub state_hash: Vec<u8>,
    pub tenant_id: String,
    pub provider: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub pkce_verifier: Option<Vec<u8>>,
}

impl<'a> PendingAuthorizations<'a> {
    pub(super) fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// Stores a new state and, in the same transaction, deletes the tenant's oldest open states
    /// beyond `max_open`; returns how many were deleted. Giving way rather than refusing: a
    /// customer who clicks "connect" again and again keeps getting working states, and only the
    /// oldest, most likely abandoned ones stop working (INVALID_STATE on their callback).
    pub async fn insert(&self, new: NewPendingAuthorization<'_>) -> Result<u64, StoreError> {
        async {
            let mut tx = self.pool.begin().await?;
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
            Ok(superseded)
        }
        .instrument(db_span!("INSERT", "pending_authorizations"))
        .await
    }

    /// Deletes the state and returns it, if it exists, is unused and has not expired. One
    /// statement, so two concurrent callbacks with the same state can't both succeed. Nothing
    /// of a used state is kept: a repeated callback finds no row and gets INVALID_STATE, the
    /// answer it got when used rows were kept (`consumed_at` is only set by older versions).
    pub async fn consume(&self, state_hash: &[u8]) -> Result<Option<PendingAuthorization>, StoreError> {
        async {
            let row = sqlx::query_as!(
                PendingAuthorization,
                r#"DELETE FROM pending_authorizations
                    WHERE state_hash = $1 AND consumed_at IS NULL AND expires_at > now()
                RETURNING state_hash, tenant_id, provider, redirect_uri, scopes, pkce_verifier"#,
                state_hash,
            )
            .fetch_optional(self.pool)
            .await?;
            Ok(row)
        }
        .instrument(db_span!("DELETE", "pending_authorizations"))
        .await
    }

    /// Deletes the states that can no longer be completed: expired, or used (rows of older
    /// versions, which kept them); returns how many.
    pub async fn delete_finished(&self) -> Result<u64, StoreError> {
        let done =
            sqlx::query!("DELETE FROM pending_authorizations WHERE expires_at <= now() OR consumed_at IS NOT NULL")
                .execute(self.pool)
                .await?;
        Ok(done.rows_affected())
    }
}
