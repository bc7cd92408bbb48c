//! Pending authorizations: begun by BeginAuthorization, consumed once by CompleteAuthorization.

use sqlx::PgPool;
use time::OffsetDateTime;

use super::StoreError;

pub struct PendingAuthorizations<'a> {
    pool: &'a PgPool,
}

pub struct NewPendingAuthorization<'a> {
    pub state_hash: &'a [u8],
    pub tenant_id: &'a str,
    pub provider: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub pkce_verifier: Option<Vec<u8>>,
    pub expires_at: OffsetDateTime,
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

    #[tracing::instrument(name = "db", skip_all, fields(otel.kind = "client", otel.name = "INSERT pending_authorizations", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "pending_authorizations"))]
    pub async fn insert(&self, new: NewPendingAuthorization<'_>) -> Result<(), StoreError> {
        sqlx::query!(
            r#"INSERT INTO pending_authorizations
                   (state_hash, tenant_id, provider, redirect_uri, scopes, pkce_verifier, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
            new.state_hash,
            new.tenant_id,
            new.provider,
            new.redirect_uri,
            new.scopes,
            new.pkce_verifier,
            new.expires_at,
        )
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Marks the state used and returns it, if it exists, is unused and has not expired. One
    /// statement, so two concurrent callbacks with the same state can't both succeed.
    #[tracing::instrument(name = "db", skip_all, fields(otel.kind = "client", otel.name = "UPDATE pending_authorizations", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "pending_authorizations"))]
    pub async fn consume(&self, state_hash: &[u8]) -> Result<Option<PendingAuthorization>, StoreError> {
        let row = sqlx::query_as!(
            PendingAuthorization,
            r#"UPDATE pending_authorizations
                  SET consumed_at = now()
                WHERE state_hash = $1 AND consumed_at IS NULL AND expires_at > now()
            RETURNING state_hash, tenant_id, provider, redirect_uri, scopes, pkce_verifier"#,
            state_hash,
        )
        .fetch_optional(self.pool)
        .await?;
        Ok(row)
    }

    /// Deletes flows that expired more than `keep` ago; returns how many.
    pub async fn delete_expired(&self, keep: std::time::Duration) -> Result<u64, StoreError> {
        let keep_secs = keep.as_secs_f64();
        let done = sqlx::query!(
            "DELETE FROM pending_authorizations WHERE expires_at < now() - make_interval(secs => $1)",
            keep_secs,
        )
        .execute(self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
