//! One refresh under the lease: the provider round (retries, ambiguous answers, a rejected
//! grant) and the fenced commit of what it received.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use time::OffsetDateTime;

use super::{jitter, RefresherInner, LEASE_SAFETY};
use crate::{
    oauth::{AmbiguousCause, ProviderClient, TokenError},
    store::{ConnectionRow, CurrentRefreshToken, RefreshCause, StoreError},
    vault::{authorize::provider_error, tokens, AccessToken, ConnectionKey, VaultError},
};

/// How one round under the lease ended.
pub(super) enum Round {
    Done(AccessToken),
    /// The connection changed under us: read it again and decide again.
    Again,
}

impl RefresherInner {
    /// One refresh while holding the lease on `row.generation`, with the refresh token read
    /// when the lease was taken.
    pub(super) async fn refresh_under_lease(
        &self,
        key: &ConnectionKey,
        client: &ProviderClient,
        row: &ConnectionRow,
        current: Option<CurrentRefreshToken>,
        lease_taken: Instant,
        cause: RefreshCause,
    ) -> Result<Round, VaultError> {
        let provider = client.config();
        let Some(current) = current else {
            tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, "the access token expired and no refresh token is held");
            return self.mark_dead(key, row, "no_refresh_token").await;
        };
        let refresh_token = match tokens::open_refresh_token(&self.keyring, key, current.generation, &current.token) {
            Ok(t) => t,
            Err(e) => {
                self.release(row).await;
                return Err(e);
            }
        };

        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.draining.is_cancelled() {
                // Nothing was presented in this attempt yet: another replica takes over.
                self.release(row).await;
                return Err(VaultError::ShuttingDown);
            }
            let sent_at = OffsetDateTime::now_utc();
            self.metrics.provider_requests.fetch_add(1, Ordering::Relaxed);
            let error = match client.refresh(&refresh_token).await {
                Ok(response) => {
                    let (new_tokens, token) = tokens::seal_token_response(
                        &self.keyring,
                        provider,
                        key,
                        row.generation + 1,
                        &response,
                        sent_at,
                        &row.scopes,
                    )?;
                    return self.store_refreshed(key, row, &new_tokens, token, cause).await;
                }
                Err(e) => e,
            };
            match error {
                TokenError::Transient {
                    cause,
                    retry_after,
                    http_status,
                } => {
                    // A provider's Retry-After is advice, capped at the lease: nothing here may
                    // wait longer than the exclusion it holds, and no arithmetic may overflow.
                    let retry_after = retry_after.map(|d| d.min(self.policy.lease_ttl));
                    let backoff = retry_after
                        .unwrap_or_else(|| jitter(self.policy.backoff.saturating_mul(1 << (attempt - 1).min(16))));
                    let next_attempt_ends = lease_taken
                        .elapsed()
                        .saturating_add(backoff)
                        .saturating_add(provider.request_timeout)
                        .saturating_add(LEASE_SAFETY);
                    if attempt < self.policy.max_attempts && next_attempt_ends < self.policy.lease_ttl {
                        tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, ?http_status, attempt, "refresh attempt failed transiently; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.draining.cancelled() => {}
                        }
                        continue;
                    }
                    tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, ?http_status, attempt, "refresh failed transiently; the connection stays active");
                    self.release(row).await;
                    return Err(VaultError::ProviderUnavailable {
                        retry_after: Some(retry_after.unwrap_or(self.policy.backoff)),
                    });
                }
                TokenError::Ambiguous { cause, http_status } => {
                    return self
                        .after_ambiguous_answer(key, row, provider.request_timeout, lease_taken, cause, http_status)
                        .await;
                }
                TokenError::InvalidGrant(err) => {
                    // A moved generation means another holder won a race: not a dead grant.
                    let fresh = self.reread(key).await?;
                    if fresh.generation != row.generation {
                        tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, "invalid_grant after another holder refreshed; using its token");
                        return Ok(Round::Again);
                    }
                    tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, description = ?err.description, "the provider rejected the refresh token; the connection needs a new authorization");
                    return self.mark_dead(key, row, "invalid_grant").await;
                }
                other => {
                    self.release(row).await;
                    return Err(provider_error(other, provider, &row.tenant_id));
                }
            }
        }
    }

    /// After an answer that may mean the refresh token was consumed: never present it again
    /// while another presenter may hold its successor. Watches the row for another holder's
    /// write for as long as that holder's request could still be answered (bounded by the
    /// lease); if none lands, keeps the lease until it lapses and says the outcome is unknown.
    pub(super) async fn after_ambiguous_answer(
        &self,
        key: &ConnectionKey,
        row: &ConnectionRow,
        request_timeout: Duration,
        lease_taken: Instant,
        cause: AmbiguousCause,
        http_status: Option<u16>,
    ) -> Result<Round, VaultError> {
        tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, ?http_status, "the provider's answer may mean the refresh token was consumed; it is not presented again while another presenter may hold its successor");
        let lease_ends = lease_taken + self.policy.lease_ttl.saturating_sub(LEASE_SAFETY);
        let watch_until = (Instant::now() + request_timeout + LEASE_SAFETY).min(lease_ends);
        loop {
            match self.reread(key).await {
                Ok(fresh) if fresh.generation != row.generation => {
                    tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, "another presenter's refresh landed; using its token");
                    return Ok(Round::Again);
                }
                Ok(_) | Err(VaultError::StoreUnavailable) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= watch_until || self.draining.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(jitter(self.policy.poll_interval.max(Duration::from_millis(20)))) => {}
                _ = self.draining.cancelled() => {}
            }
        }
        self.metrics.outcome_unknown.fetch_add(1, Ordering::Relaxed);
        // The lease is kept, not released: no replica presents this token before it lapses.
        if let Err(e) = self
            .store
            .connections()
            .note_refresh_outcome_unknown(row.id, row.generation, self.holder)
            .await
        {
            tracing::warn!(tenant_id = %row.tenant_id, error = %e, "could not record the unknown refresh outcome on the connection");
        }
        tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, "refresh outcome unknown: the refresh token is held back until the lease lapses; if the provider consumed it, the connection will need a new authorization");
        Err(VaultError::RefreshOutcomeUnknown {
            retry_after: lease_ends.saturating_duration_since(Instant::now()) + LEASE_SAFETY,
        })
    }

    /// Commits the refreshed tokens, retrying until it works or the process stops: the
    /// provider has already retired the old refresh token, so this one is the only one left.
    /// A fenced store: the row is no longer at the generation this refresh started from. It is
    /// still ours to keep (true) if the row already holds exactly these tokens (an earlier
    /// attempt committed but its answer was lost), or if the database is behind it (it went
    /// back in time: a failover, a restore), in which case the tokens are written back, since
    /// the refresh token they carry is the only valid one. Anything else is another holder's
    /// newer write (false).
    async fn after_fenced_store(
        &self,
        key: &ConnectionKey,
        row: &ConnectionRow,
        new_tokens: &crate::store::NewTokens,
    ) -> Result<bool, StoreError> {
        let Some(now) = self.store.connections().find(key).await? else {
            return Ok(false);
        };
        if now.generation == new_tokens.generation && now.access_token == new_tokens.access_token {
            return Ok(true);
        }
        if now.generation < row.generation && now.authorized_at == row.authorized_at {
            tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, database_generation = now.generation, refreshed_from = row.generation, "the database is behind the generation this refresh started from (a failover or a restore): writing the received tokens back");
            return self
                .store
                .connections()
                .write_back(row.id, row.authorized_at, new_tokens)
                .await;
        }
        Ok(false)
    }

    pub(super) async fn store_refreshed(
        &self,
        key: &ConnectionKey,
        row: &ConnectionRow,
        new_tokens: &crate::store::NewTokens,
        token: AccessToken,
        cause: RefreshCause,
    ) -> Result<Round, VaultError> {
        let connections = self.store.connections();
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u64;
        loop {
            let stored = match connections
                .store_refresh(row.id, row.generation, new_tokens, cause)
                .await
            {
                Err(StoreError::Fenced) => self.after_fenced_store(key, row, new_tokens).await,
                other => other.map(|()| true),
            };
            match stored.and_then(|stored| if stored { Ok(()) } else { Err(StoreError::Fenced) }) {
                Ok(()) => {
                    // Kept, sealed as stored, in case the database loses it (vault::failover).
                    self.failover.remember(key, row.id, row.authorized_at, new_tokens);
                    self.metrics.succeeded.fetch_add(1, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, failures, "the refreshed token was stored after retries");
                    } else {
                        tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, generation = new_tokens.generation, "refreshed");
                    }
                    return Ok(Round::Done(token));
                }
                Err(StoreError::Fenced) => {
                    tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, "the connection changed while refreshing (re-authorized, or this replica's lease lapsed); the tokens this refresh received are discarded");
                    return Ok(Round::Again);
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.unsaved_rotation_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, failures, error = %e, "a refreshed token could not be stored; retrying (it must not be lost)");
                    // Keep the exclusion alive whenever the database answers, so no other
                    // replica refreshes with the refresh token the provider has just retired.
                    let _ = connections
                        .extend_lease(row.id, row.generation, self.holder, self.policy.lease_ttl)
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(pause)) => {}
                        _ = self.shutdown.cancelled() => {
                            tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, "stopping with a refreshed token NOT stored: this connection will likely need a new authorization");
                            return Err(VaultError::ShuttingDown);
                        }
                    }
                    pause = (pause * 2).min(self.policy.store_retry_max_backoff);
                }
            }
        }
    }

    pub(super) async fn mark_dead(
        &self,
        key: &ConnectionKey,
        row: &ConnectionRow,
        reason: &str,
    ) -> Result<Round, VaultError> {
        if !self
            .store
            .connections()
            .mark_reauthorization_required(row.id, row.generation, reason)
            .await?
        {
            return Ok(Round::Again);
        }
        self.cache.remove(key);
        self.metrics
            .marked_reauthorization_required
            .fetch_add(1, Ordering::Relaxed);
        Err(VaultError::ReauthorizationRequired { reason: reason.into() })
    }
}
