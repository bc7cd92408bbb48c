//! The keeper: refreshes connections nobody uses before their refresh token expires unused
//! (Hydra's live 30 days from their issue; an idle tenant would otherwise be dead when next
//! needed).
//!
//! * **No leader.** Every replica runs a keeper. Each one claims due connections with one
//!   statement (`FOR UPDATE SKIP LOCKED`, a claim for `keepalive.claim_ttl`), so a connection
//!   is claimed by one replica at a time, and the claim query is an index range scan however
//!   many connections there are (`store::Keepalive::claim`).
//! * **Paced.** Each replica starts at most `keepalive.max_per_second` keep-alive refreshes
//!   per second, and claims no more than it can start in one `keepalive.interval`: a million
//!   connections falling due together never stampede the provider.
//! * **The same refresh as a caller's.** A keep-alive goes through the refresher: joined with
//!   a refresh already in flight here, under the lease across replicas, fenced on the
//!   generation it was claimed at. From that generation it refreshes even though the access
//!   token is still valid (renewing the refresh token is the point); if the generation moved,
//!   someone else refreshed (and their refresh set the next due moment), and their token is
//!   adopted.
//! * **Failures back off.** A failed keep-alive keeps its claim for another `claim_ttl` and
//!   records `last_error`; a rejected refresh token marks the connection
//!   `reauthorization_required` with its event, as a caller's refresh would.
//! * **Stops first.** The keeper stops when the vault stops starting refreshes, before those
//!   in flight are drained; claims it had not started yet are given back.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::{task::JoinSet, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{ConnectionKey, Vault, VaultError};
use crate::{
    connection_key::TenantId,
    store::{Claim, Claimed, RefreshCause},
};

/// The most connections one claim statement takes, whatever the rate and interval say.
const MAX_CLAIM: f64 = 10_000.0;

impl Vault {
    /// Runs this replica's keeper until `stop`, or until the vault stops starting refreshes
    /// (the first step of shutdown), whichever comes first.
    pub async fn keep_alive(&self, stop: CancellationToken) {
        let settings = self.inner.keepalive.clone();
        let stopping = self.inner.refresher.stopping();
        let halted = || async {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = stopping.cancelled() => {}
            }
        };
        let rate = f64::from(settings.max_per_second.max(1));
        let batch = (rate * settings.interval.as_secs_f64()).ceil().clamp(1.0, MAX_CLAIM) as i64;
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        // A slow start (a claim, a busy runtime) never makes up for lost time with a burst.
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut running = JoinSet::new();
        let providers: Vec<String> = self.inner.providers.keys().cloned().collect();
        tracing::info!(
            interval = ?settings.interval,
            max_per_second = settings.max_per_second,
            claim_ttl = ?settings.claim_ttl,
            "the keeper refreshes idle connections before their refresh token expires"
        );
        'claims: loop {
            let keepalive = self.inner.store.keepalive();
            let claim = tokio::select! {
                claim = keepalive.claim(batch, settings.claim_ttl, &providers) => claim,
                _ = halted() => break,
            };
            let claim = match claim {
                Ok(claim) => claim,
                Err(e) => {
                    tracing::warn!(error = %e, "the keeper could not claim due connections");
                    Claim {
                        connections: Vec::new(),
                        claimed_until: None,
                    }
                }
            };
            let full = claim.connections.len() as i64 >= batch;
            if !claim.connections.is_empty() {
                tracing::debug!(
                    claimed = claim.connections.len(),
                    "claimed connections due for a keep-alive"
                );
            }
            let mut due = claim.connections.into_iter();
            while let Some(connection) = due.next() {
                tokio::select! {
                    biased;
                    _ = halted() => {
                        let unstarted: Vec<i64> = std::iter::once(connection.id).chain(due.map(|c| c.id)).collect();
                        self.give_back(&unstarted, claim.claimed_until).await;
                        break 'claims;
                    }
                    _ = pace.tick() => {}
                }
                let vault = self.clone();
                running.spawn(async move { vault.keep_one_alive(connection).await });
                while running.try_join_next().is_some() {}
            }
            while running.try_join_next().is_some() {}
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(settings.interval) => {}
                    _ = halted() => break,
                }
            }
        }
        // Each ends with its refresh, which the vault's drain bounds; they only record how it
        // ended.
        running.detach_all();
        tracing::debug!("the keeper stopped");
    }

    /// Gives back claims not started, so that another replica need not wait for them to lapse.
    async fn give_back(&self, ids: &[i64], claimed_until: Option<time::OffsetDateTime>) {
        let Some(until) = claimed_until else { return };
        if let Err(e) = self.inner.store.keepalive().release(ids, until).await {
            tracing::debug!(error = %e, "could not give back keep-alive claims; they lapse by themselves");
        }
    }

    /// One keep-alive refresh, and what it leaves on the connection when it fails.
    async fn keep_one_alive(&self, claimed: Claimed) {
        let counters = self.inner.refresher.metrics().clone();
        let Some((provider, client)) = self.inner.providers.get(&claimed.provider) else {
            // Claims take only configured providers, so this does not happen; if it did, there
            // is nothing to refresh with.
            self.note_keepalive_failure(&claimed, "provider_not_configured").await;
            return;
        };
        let key = ConnectionKey::new(TenantId::from_stored(&claimed.tenant_id), provider.clone());
        counters.keepalive_started.fetch_add(1, Ordering::Relaxed);
        let refreshed = self
            .inner
            .refresher
            .refresh_because(key, client.clone(), claimed.generation, RefreshCause::Keepalive, None)
            .await;
        match refreshed {
            Ok(token) if token.generation > claimed.generation => {
                counters.keepalive_succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tenant_id = %claimed.tenant_id, provider = %claimed.provider, generation = token.generation, "kept alive");
            }
            Ok(_) => {
                // A valid token was served without a refresh (the database changed moments ago
                // and write-backs may be on their way): the claim lapses and the keeper tries
                // again.
                tracing::info!(tenant_id = %claimed.tenant_id, provider = %claimed.provider, "keep-alive postponed: the database changed recently");
            }
            // The process is stopping before the refresh began: another replica takes over once
            // the claim lapses.
            Err(VaultError::ShuttingDown) => {}
            // Gone or disconnected since the claim: nothing to keep alive.
            Err(VaultError::ConnectionNotFound | VaultError::ConnectionDisconnected) => {}
            Err(VaultError::ReauthorizationRequired { reason }) => {
                // Marked (with its event and last_error) by the refresh itself.
                counters.keepalive_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant_id = %claimed.tenant_id, provider = %claimed.provider, %reason, "keep-alive found the connection dead: it needs a new authorization");
            }
            Err(e) => {
                counters.keepalive_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant_id = %claimed.tenant_id, provider = %claimed.provider, error = %e, retry_after = ?self.inner.keepalive.claim_ttl, "keep-alive failed; it is tried again after the claim");
                self.note_keepalive_failure(&claimed, &e.reason().to_ascii_lowercase())
                    .await;
            }
        }
    }

    async fn note_keepalive_failure(&self, claimed: &Claimed, reason: &str) {
        let noted = self
            .inner
            .store
            .keepalive()
            .note_failure(claimed.id, claimed.generation, reason, self.inner.keepalive.claim_ttl)
            .await;
        if let Err(e) = noted {
            tracing::warn!(tenant_id = %claimed.tenant_id, error = %e, "could not record a failed keep-alive; its claim lapses by itself");
        }
    }
}
