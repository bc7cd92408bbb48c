//! GetAccessToken's decision (cache, database, or refresh) and GetConnection.

use std::time::Instant;

use futures::FutureExt;
use time::OffsetDateTime;

use super::{tokens, AccessToken, AccessTokenRequest, ConnectionInfo, ConnectionKey, TokenSource, Vault, VaultError};
use crate::store::{ConnectionRow, Store};

impl Vault {
    /// Returns a token valid for the requested margin: from this replica's cache, else from the
    /// database, else by a refresh (coalesced in-process, excluded across replicas). A caller
    /// whose `deadline` passes while waiting gets `DeadlineExceeded`; the refresh goes on.
    pub async fn get_access_token(
        &self,
        key: ConnectionKey,
        req: AccessTokenRequest,
        deadline: Option<Instant>,
    ) -> Result<(AccessToken, TokenSource), VaultError> {
        let client = self.provider(&key)?;
        let margin = req.min_valid_for.unwrap_or(self.inner.settings.default_min_valid_for);
        let fraction = self.inner.settings.max_margin_fraction;

        if let Some(token) = self.inner.cache.get(&key) {
            if token.is_valid_for(margin, fraction, OffsetDateTime::now_utc()) {
                return Ok((token, TokenSource::Cache));
            }
            if let Some(refreshed) = self.inner.refresher.join(&key, deadline).await {
                return refreshed.map(|token| (token, TokenSource::Refresh));
            }
            // Stale, and nobody here is refreshing it: refresh from its generation without
            // reading the row first. Taking the lease reads it; if another replica refreshed
            // meanwhile, the refresh finds that and hands out its token instead.
            let token = self
                .inner
                .refresher
                .refresh(key, client.clone(), token.generation, deadline)
                .await?;
            return Ok((token, TokenSource::Refresh));
        }

        let row = self.read_active_connection(&key).await?;
        let token = tokens::open_access_token(&self.inner.keyring, &key, &row)?;
        self.inner.cache.put(key.clone(), token.clone());
        if token.is_valid_for(margin, fraction, OffsetDateTime::now_utc()) {
            return Ok((token, TokenSource::Database));
        }
        let token = self
            .inner
            .refresher
            .refresh(key, client.clone(), row.generation, deadline)
            .await?;
        Ok((token, TokenSource::Refresh))
    }

    /// The connection's row, read once however many callers miss the cache for it at once.
    async fn read_active_connection(&self, key: &ConnectionKey) -> Result<ConnectionRow, VaultError> {
        let store = self.inner.store.clone();
        let read_key = key.clone();
        self.inner
            .reads
            .run(key.clone(), move || {
                async move { active_connection(&store, &read_key).await }.boxed()
            })
            .await
    }

    pub async fn get_connection(&self, key: &ConnectionKey) -> Result<ConnectionInfo, VaultError> {
        self.provider(key)?;
        let summary = self
            .inner
            .store
            .connections()
            .describe(key)
            .await?
            .ok_or(VaultError::ConnectionNotFound)?;
        Ok(summary.into())
    }
}

/// The tenant's connection, which must exist and be active. Shared by the cache-miss read and
/// the refresh's re-reads.
pub(super) async fn active_connection(store: &Store, key: &ConnectionKey) -> Result<ConnectionRow, VaultError> {
    let row = store
        .connections()
        .find(key)
        .await?
        .ok_or(VaultError::ConnectionNotFound)?;
    if row.status == "disconnected" {
        return Err(VaultError::ConnectionDisconnected);
    }
    if !row.is_active() {
        return Err(VaultError::ReauthorizationRequired {
            reason: row.status_reason.unwrap_or_else(|| "unknown".into()),
        });
    }
    Ok(row)
}
