//! SQLite: pending authorizations (the statements behind `store::pending`). The begins of one
//! tenant are serialised by the write lock (`BEGIN IMMEDIATE`), as Postgres's advisory lock does.

use tracing::Instrument;

use super::{begin_immediate, scopes_from, scopes_json, ts, SqlitePools};
use crate::store::{pending::*, StoreError};

pub(in crate::store) async fn insert(db: &SqlitePools, new: NewPendingAuthorization<'_>) -> Result<u64, StoreError> {
    async {
        let (tenant, provider) = (new.key.tenant().as_str(), new.key.provider().as_str());
        let scopes = scopes_json(new.scopes);
        let expires_at = ts(new.expires_at);
        let mut tx = begin_immediate(db).await?;
        sqlx::query!(
            "INSERT INTO pending_authorizations
                 (state_hash, tenant_id, provider, redirect_uri, scopes, pkce_verifier, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            new.state_hash,
            tenant,
            provider,
            new.redirect_uri,
            scopes,
            new.pkce_verifier,
            expires_at,
        )
        .execute(&mut *tx)
        .await?;
        let keep_others = i64::from(new.max_open.max(1) - 1);
        let superseded = sqlx::query!(
            "DELETE FROM pending_authorizations
              WHERE state_hash IN (
                  SELECT state_hash FROM pending_authorizations
                   WHERE tenant_id = ?1 AND provider = ?2 AND state_hash <> ?3
                     AND consumed_at IS NULL AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                   ORDER BY created_at DESC, expires_at DESC
                   LIMIT -1 OFFSET ?4)",
            tenant,
            provider,
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

pub(in crate::store) async fn consume(
    db: &SqlitePools,
    state_hash: &[u8],
) -> Result<Option<PendingAuthorization>, StoreError> {
    async {
        // One statement: two callbacks with the same state can't both get the row. Fetched to
        // its end (`fetch_all`, at most one row: state_hash is unique) so that its implicit
        // transaction's commit is part of the statement, not of sqlx's reset after the first
        // row, whose failure sqlx drops: a failed commit must not hand the state out.
        let rows = sqlx::query!(
            r#"DELETE FROM pending_authorizations
                WHERE state_hash = ?1 AND consumed_at IS NULL
                  AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
            RETURNING state_hash AS "state_hash!: Vec<u8>", tenant_id AS "tenant_id!", provider AS "provider!",
                      redirect_uri AS "redirect_uri!", scopes AS "scopes!", pkce_verifier AS "pkce_verifier: Vec<u8>""#,
            state_hash,
        )
        .fetch_all(db.writer())
        .await?;
        rows.into_iter()
            .next()
            .map(|r| {
                Ok(PendingAuthorization {
                    state_hash: r.state_hash,
                    tenant_id: r.tenant_id,
                    provider: r.provider,
                    redirect_uri: r.redirect_uri,
                    scopes: scopes_from(&r.scopes)?,
                    pkce_verifier: r.pkce_verifier,
                })
            })
            .transpose()
    }
    .instrument(db_span!("DELETE", "pending_authorizations"))
    .await
}

pub(in crate::store) async fn delete_finished(db: &SqlitePools) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "DELETE FROM pending_authorizations
          WHERE expires_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') OR consumed_at IS NOT NULL"
    )
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected())
}
