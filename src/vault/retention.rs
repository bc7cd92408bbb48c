//! Retention of rotated refresh tokens. A superseded refresh token is never presented again
//! (the provider has retired it); its ciphertext is kept only as evidence for an
//! investigation, and purged once it is outside both bounds of `[retention]`: not among the
//! newest `keep_generations` superseded generations of its connection, and superseded more
//! than `keep_for` ago. The row (generation, source, issue and supersede times, `purged_at`)
//! stays as history; the current token is never purged.
//!
//! Nothing in the vault reads a superseded ciphertext: a refresh presents the current token
//! only, and the failover write-back (`vault::failover`) writes back rotations this replica
//! keeps in memory, never old rows.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::Vault;
use crate::store::SweepPosition;

/// Superseded tokens looked at per statement: short statements, however large the table.
const BATCH: i64 = 1000;

impl Vault {
    /// Purges superseded ciphertexts outside retention every `retention.sweep_interval` until
    /// `stop`. Every replica runs it; rows another replica is purging are skipped.
    pub async fn purge_rotated_refresh_tokens(&self, stop: CancellationToken) {
        let settings = self.inner.retention.clone();
        loop {
            match self.purge_rotated_refresh_tokens_once(&stop).await {
                Ok(0) => {}
                Ok(purged) => {
                    tracing::info!(purged, keep_generations = settings.keep_generations, keep_for = ?settings.keep_for, "purged the ciphertexts of rotated refresh tokens past retention");
                }
                Err((purged, e)) => {
                    tracing::warn!(purged, error = %e, "could not purge rotated refresh tokens past retention");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(settings.sweep_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One sweep: statements of BATCH candidates each, from the oldest superseded token to the
    /// newest. How many were purged.
    async fn purge_rotated_refresh_tokens_once(
        &self,
        stop: &CancellationToken,
    ) -> Result<u64, (u64, crate::store::StoreError)> {
        let settings = &self.inner.retention;
        let counters = self.inner.refresher.metrics();
        let mut purged = 0;
        let mut from = SweepPosition::default();
        loop {
            let done = self
                .inner
                .store
                .retention()
                .purge_superseded(settings.keep_generations, settings.keep_for, BATCH, from)
                .await
                .map_err(|e| (purged, e))?;
            purged += done.purged;
            counters.retention_purged.fetch_add(done.purged, Ordering::Relaxed);
            if done.examined < BATCH as u64 || stop.is_cancelled() {
                return Ok(purged);
            }
            from = done.next;
        }
    }
}
