//! Taking the refresh exclusion: the lease on the connection's row, fenced on the generation
//! whose access token is stale, or the token another holder refreshed meanwhile.

use std::time::Instant;

use time::OffsetDateTime;

use super::{jitter, RefresherInner};
use crate::vault::failover::Verdict;
use crate::{
    store::{ConnectionRow, Leased},
    vault::{access, tokens, AccessToken, ConnectionKey, VaultError},
};

/// What trying to take the exclusion found.
pub(super) enum Acquired {
    /// The lease is ours: the connection under it and the refresh token to present, and when
    /// the lease statement was sent, which is no later than the database started the lease:
    /// the holder budgets its time from there, never from after its own checks.
    Lease(Box<Leased>, Instant),
    /// Another holder refreshed meanwhile: its token, still valid.
    Theirs(AccessToken),
}

impl RefresherInner {
    /// Before anything is presented under a fresh lease: is this the database the vault
    /// relied on, and is the row as new as what this replica knows? `None` after writing a
    /// lost rotation back (the caller reads again). See `vault::failover`.
    async fn check_database(
        &self,
        key: &ConnectionKey,
        leased: Leased,
        sent: Instant,
    ) -> Result<Option<Acquired>, VaultError> {
        let row = &leased.connection;
        let verdict = self.failover.judge(&self.store, &leased.database).await?;
        if let Some(rotation) = self.failover.newer_rotation(key, row.generation) {
            // The database lost this replica's own rotation: write it back (it also frees the
            // lease) and adopt it.
            if self.failover.write_back(&self.store, key, &rotation).await? {
                return Ok(None);
            }
        }
        let cached = self.cache.get(key).filter(|token| token.generation > row.generation);
        match (verdict, cached) {
            (Verdict::Proceed, None) => Ok(Some(Acquired::Lease(Box::new(leased), sent))),
            (Verdict::Grace { remaining }, cached) => {
                self.release(row).await;
                let now = OffsetDateTime::now_utc();
                // A still valid token is served meanwhile: the newer one this replica saw, else
                // the row's own.
                let valid = match cached.filter(|t| t.expires_at > now) {
                    Some(token) => Some(token),
                    None => Some(tokens::open_access_token(&self.keyring, key, leased.connection)?)
                        .filter(|t| t.expires_at > now),
                };
                match valid {
                    Some(token) => Ok(Some(Acquired::Theirs(token))),
                    None => Err(VaultError::DatabaseFailover { retry_after: remaining }),
                }
            }
            (Verdict::Proceed, Some(token)) => {
                // This replica saw a newer generation than the database has, and nobody wrote
                // it back within the grace: the refresh token stored is already spent. Marked
                // at once (fenced, so counted once), so that no replica presents it; the newer
                // access token is still served here while it lasts.
                if self
                    .store
                    .connections()
                    .mark_reauthorization_required(row.id, row.generation, "rotation_lost")
                    .await?
                {
                    self.failover.lost(key, row.generation, token.generation);
                    self.metrics
                        .marked_reauthorization_required
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if token.expires_at > OffsetDateTime::now_utc() {
                    return Ok(Some(Acquired::Theirs(token)));
                }
                self.cache.remove(key);
                Err(VaultError::ReauthorizationRequired {
                    reason: "rotation_lost".into(),
                })
            }
        }
    }

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
            let sent = Instant::now();
            if let Some(leased) = connections
                .try_acquire_lease(key, *generation, self.holder, self.policy.lease_ttl)
                .await?
            {
                let held = leased.connection.clone();
                match self.check_database(key, leased, sent).await {
                    Ok(Some(outcome)) => return Ok(Some(outcome)),
                    // This replica wrote a lost rotation back: the row moved on; read it again.
                    Ok(None) => continue,
                    Err(e) => {
                        // Nothing was presented: the lease goes back rather than blocking the
                        // connection until it lapses.
                        self.release(&held).await;
                        return Err(e);
                    }
                }
            }
            let fresh = self.reread(key).await?;
            if fresh.generation == *generation {
                return Ok(None);
            }
            let went_back = fresh.generation < *generation;
            *generation = fresh.generation;
            if went_back {
                // The database is behind what this replica knew (a failover, a restore): its
                // token is no one's to adopt. Take the lease on what it has, and let
                // `check_database` decide.
                continue;
            }
            // Someone else refreshed. Their token is used as long as it has not expired, even
            // if it is shorter-lived than the margin asks: refreshing again would kill it for
            // whoever already holds it. An expired one is refreshed from the new generation.
            let token = tokens::open_access_token(&self.keyring, key, fresh)?;
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
