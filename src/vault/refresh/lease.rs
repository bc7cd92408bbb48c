//! Taking the refresh exclusion: the lease on the connection's row, fenced on the generation
//! whose access token is stale, or the token another holder refreshed meanwhile.

use std::time::Instant;

use time::OffsetDateTime;

use super::{jitter, RefresherInner};
use crate::{
    store::{ConnectionRow, Leased},
    vault::{access, tokens, AccessToken, ConnectionKey, VaultError},
};

/// What trying to take the exclusion found.
pub(super) enum Acquired {
    /// The lease is ours: the connection under it and the refresh token to present.
    Lease(Leased),
    /// Another holder refreshed meanwhile: its token, still valid.
    Theirs(AccessToken),
}

impl RefresherInner {
    pub(super) async fn reread(&self, key: &ConnectionKey) -> Result<ConnectionRow, VaultError> {
        access::active_connection(&self.store, key).await
    }

    /// Takes the lease (with the refresh token to use), or returns the token someone else
    /// refreshed meanwhile.
    pub(super) async fn acquire(&self, key: &ConnectionKey, generation: &mut i64) -> Result<Acquired, VaultError> {
        // A database blip while waiting is ridden out for up to a lease's lifetime: the callers
        // are bounded by their own deadlines, and answering all of them UNAVAILABLE because a
        // restart took a second helps nobody.
        let give_up_at = Instant::now() + self.policy.lease_ttl;
        let mut waiting_since = None;
        loop {
            if self.draining.is_cancelled() {
                return Err(VaultError::ShuttingDown);
            }
            match self.try_acquire(key, generation).await {
                Ok(Some(outcome)) => {
                    if let Some(since) = waiting_since {
                        crate::metrics::get()
                            .lease_wait_duration
                            .record(Instant::elapsed(&since).as_secs_f64(), &[]);
                    }
                    return Ok(outcome);
                }
                Ok(None) => {
                    waiting_since.get_or_insert_with(Instant::now);
                }
                Err(VaultError::StoreUnavailable) if Instant::now() < give_up_at => {}
                Err(e) => return Err(e),
            };
            let pause = jitter(self.policy.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.draining.cancelled() => return Err(VaultError::ShuttingDown),
            }
        }
    }

    /// One look; `None` while another holder is still at it. Moves `generation` on when the
    /// connection has moved on.
    async fn try_acquire(&self, key: &ConnectionKey, generation: &mut i64) -> Result<Option<Acquired>, VaultError> {
        let connections = self.store.connections();
        loop {
            if let Some(leased) = connections
                .try_acquire_lease(key, *generation, self.holder, self.policy.lease_ttl)
                .await?
            {
                return Ok(Some(Acquired::Lease(leased)));
            }
            let fresh = self.reread(key).await?;
            let moved = fresh.generation != *generation;
            *generation = fresh.generation;
            if !moved {
                return Ok(None);
            }
            // Someone else refreshed. Their token is used as long as it has not expired, even
            // if it is shorter-lived than the margin asks: refreshing again would kill it for
            // whoever already holds it. An expired one is refreshed from the new generation.
            let token = tokens::open_access_token(&self.keyring, key, &fresh)?;
            if token.expires_at > OffsetDateTime::now_utc() {
                return Ok(Some(Acquired::Theirs(token)));
            }
        }
    }

    pub(super) async fn release(&self, row: &ConnectionRow) {
        if let Err(e) = self.store.connections().release_lease(row.id, self.holder).await {
            tracing::warn!(tenant_id = %row.tenant_id, error = %e, "could not release the refresh lease; it will lapse by itself");
        }
    }
}
