//! GetAccessToken's decision (cache, database, or refresh), a caller's report that the
//! provider rejected a token, and GetConnection.

use std::time::Instant;

use futures::FutureExt;
use time::OffsetDateTime;

use super::{
    tokens, AccessToken, AccessTokenRequest, ConnectionInfo, ConnectionKey, ConnectionStatus, TokenDigest, TokenSource,
    Vault, VaultError,
};
use crate::{
    oauth::ProviderClient,
    store::{ConnectionRow, Store, StoredAccessToken},
};

/// How many refreshes one rejection report may wait on before giving up. The second is needed
/// only when the first one this caller joined had started from an older generation and adopted
/// the very token reported rejected.
const REJECTED_ROUNDS: usize = 3;

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

        if let Some(rejected) = req.rejected {
            return self.after_rejection(key, client, rejected, margin, deadline).await;
        }

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

        let stored = self.read_active_access_token(&key).await?;
        let token = tokens::open_access_token(&self.inner.keyring, &key, stored)?;
        self.inner.cache.put(key.clone(), token.clone());
        self.read_or_refreshed(key, client, token, margin, deadline).await
    }

    /// A token read from the database, if it is valid for `margin`; else a refresh from its
    /// generation.
    async fn read_or_refreshed(
        &self,
        key: ConnectionKey,
        client: &ProviderClient,
        token: AccessToken,
        margin: std::time::Duration,
        deadline: Option<Instant>,
    ) -> Result<(AccessToken, TokenSource), VaultError> {
        let fraction = self.inner.settings.max_margin_fraction;
        if token.is_valid_for(margin, fraction, OffsetDateTime::now_utc()) {
            return Ok((token, TokenSource::Database));
        }
        let token = self
            .inner
            .refresher
            .refresh(key, client.clone(), token.generation, deadline)
            .await?;
        Ok((token, TokenSource::Refresh))
    }

    /// GetAccessToken with a token the provider rejected. This replica's cache is not asked:
    /// another replica may have refreshed, and the cache may hold the very token rejected. The
    /// row decides. If its token is not the rejected one, it is newer (or at least not known
    /// dead) and is served as usual, without a refresh. If it is, the connection is refreshed
    /// from the row's generation through the refresher, which coalesces every reporter on this
    /// replica into one task and fences across replicas on the generation: if it moved
    /// meanwhile, the newer token is adopted, never refreshed away. So a report never refreshes
    /// a token that is no longer current, and a naive "force refresh" (which would kill tokens
    /// other callers hold) never happens.
    async fn after_rejection(
        &self,
        key: ConnectionKey,
        client: &ProviderClient,
        rejected: TokenDigest,
        margin: std::time::Duration,
        deadline: Option<Instant>,
    ) -> Result<(AccessToken, TokenSource), VaultError> {
        let stored = self.read_active_access_token(&key).await?;
        let row_generation = stored.generation;
        let current = tokens::open_access_token(&self.inner.keyring, &key, stored)?;
        if !rejected.matches(&current.token) {
            self.inner.cache.put(key.clone(), current.clone());
            // A read joined a moment before this replica stored a newer generation would be
            // older than the cache: serve the newer of the two (the cache keeps the newest).
            let newest = self
                .inner
                .cache
                .get(&key)
                .filter(|t| t.generation > current.generation && !rejected.matches(&t.token))
                .unwrap_or(current);
            return self.read_or_refreshed(key, client, newest, margin, deadline).await;
        }
        tracing::info!(tenant_id = %key.tenant(), provider = %key.provider(), generation = row_generation, "a caller reports the current access token rejected by the provider; refreshing");
        let mut generation = row_generation;
        for _ in 0..REJECTED_ROUNDS {
            let token = self
                .inner
                .refresher
                .refresh(key.clone(), client.clone(), generation, deadline)
                .await?;
            if !rejected.matches(&token.token) {
                return Ok((token, TokenSource::Refresh));
            }
            // The refresh joined had started from an older generation and adopted the token
            // reported rejected: refresh from that token's own generation.
            generation = token.generation;
        }
        Err(VaultError::Internal(
            "the refreshes joined kept handing out the token reported rejected".into(),
        ))
    }

    /// The connection's access token, read once however many callers miss the cache for it at
    /// once.
    async fn read_active_access_token(&self, key: &ConnectionKey) -> Result<StoredAccessToken, VaultError> {
        // Owned, not borrowed: a read whose caller gave up goes on for those still waiting.
        let store = self.inner.store.clone();
        let read_key = key.clone();
        self.inner
            .reads
            .run(key, move || {
                async move {
                    let stored = store
                        .connections()
                        .find_access_token(&read_key)
                        .await?
                        .ok_or(VaultError::ConnectionNotFound)?;
                    ensure_active(&stored.status, stored.status_reason.as_deref())?;
                    Ok(stored)
                }
                .boxed()
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

/// The tenant's connection, which must exist and be active: the refresh's re-reads.
pub(super) async fn active_connection(store: &Store, key: &ConnectionKey) -> Result<ConnectionRow, VaultError> {
    let row = store
        .connections()
        .find(key)
        .await?
        .ok_or(VaultError::ConnectionNotFound)?;
    ensure_active(&row.status, row.status_reason.as_deref())?;
    Ok(row)
}

/// The error a connection in `status` answers with, if it is not active. Shared by the
/// cache-miss read and the refresh's re-reads, so that both answer alike.
fn ensure_active(status: &str, status_reason: Option<&str>) -> Result<(), VaultError> {
    match ConnectionStatus::from_stored(status) {
        ConnectionStatus::Active => Ok(()),
        ConnectionStatus::Disconnected => Err(VaultError::ConnectionDisconnected),
        ConnectionStatus::ReauthorizationRequired => Err(VaultError::ReauthorizationRequired {
            reason: status_reason.unwrap_or("unknown").into(),
        }),
    }
}
