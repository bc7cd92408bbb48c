//! The flows: begin and complete an authorization, hand out access tokens, refresh them.
//! No SQL and no HTTP here: those belong to `store` and `oauth`; this module decides.
//!
//! Where each flow lives (every file adds an `impl Vault` block or serves one):
//!
//! | flow | file |
//! |---|---|
//! | BeginAuthorization, CompleteAuthorization | `authorize.rs` |
//! | GetAccessToken (cache, database, refresh, a rejected token), GetConnection | `access.rs` |
//! | ImportConnection | `import.rs` |
//! | DeleteConnection (revoke, wipe, disconnect) | `disconnect.rs` |
//! | ListConnections (pages, filtered by the caller's policy) | `listing.rs` |
//! | the refresh: one task per connection, the lease, the provider round | `refresh/` |
//! | one cache-miss read per key at a time | `reads.rs` |
//! | one refresh task per key at a time | `coalesce.rs` |
//! | this replica's token cache | `cache.rs` |
//! | sealing and opening tokens for the store | `tokens.rs` |
//! | keep-alive of idle connections before their refresh token expires | `keeper.rs` |
//! | purging the ciphertexts of rotated refresh tokens past retention | `retention.rs` |
//! | WatchConnectionEvents: the listener, the watchers | `events.rs` |
//! | shutdown: stop starting refreshes, drain those in flight | this file |

mod access;
mod authorize;
mod cache;
mod coalesce;
mod disconnect;
mod error;
mod events;
mod failover;
mod import;
mod keeper;
mod lifetime;
mod listing;
mod reads;
mod refresh;
mod retention;
mod tokens;
mod types;

use std::{collections::BTreeMap, sync::Arc};

use tokio_util::sync::CancellationToken;

pub use authorize::ConsumedState;
pub use disconnect::{Disconnected, Revocation};
pub use error::VaultError;
pub use events::{ConnectionEvent, ConnectionEventKind, EventCursor, EventStream, EventVisibility, WatchEvents};
pub use listing::{ConnectionPage, ListConnections, MAX_PAGE_SIZE};
pub use types::*;

use crate::{
    config::{KeepaliveSettings, RefreshSettings, RetentionSettings, Settings, VaultSettings},
    crypto::SharedKeyring,
    metrics::RefreshCounters,
    oauth::ProviderClient,
    store::{Store, StoredAccessToken},
};

/// The vault: shared by every gRPC call, cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keyring: SharedKeyring,
    /// Each configured provider under its name, made once so that a key costs no allocation.
    providers: BTreeMap<String, (ProviderName, ProviderClient)>,
    default_provider: Option<ProviderName>,
    settings: VaultSettings,
    cache: cache::TokenCache,
    refresher: refresh::Refresher,
    /// The database read behind a cache miss, once per key at a time.
    reads: reads::ReadFlights<ConnectionKey, Result<StoredAccessToken, VaultError>>,
    /// Rotations kept for write-back after the database goes back in time.
    failover: Arc<failover::FailoverGuard>,
    failover_check_interval: std::time::Duration,
    /// The keeper's pace and claims.
    keepalive: KeepaliveSettings,
    /// How long rotated refresh tokens keep their ciphertext.
    retention: RetentionSettings,
    /// Event watchers' wake-ups and slots.
    events: events::EventHub,
}

/// How long callers missing the cache join a read of the same row already in flight; a read
/// older than this (stuck on a dead connection) is not joined.
const READ_JOIN_AGE: std::time::Duration = std::time::Duration::from_secs(2);

impl Vault {
    pub fn new(
        settings: &Settings,
        store: Store,
        keyring: SharedKeyring,
        providers: BTreeMap<String, ProviderClient>,
        shutdown: CancellationToken,
    ) -> Self {
        let cache = cache::TokenCache::new(settings.vault.cache_max_entries, settings.vault.cache_max_age);
        let counters = Arc::new(RefreshCounters::default());
        // Unknown until the first durability check.
        counters
            .synchronous_standby
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let failover = Arc::new(failover::FailoverGuard::new(&settings.failover, counters.clone()));
        let refresher = refresh::Refresher::new(
            store.clone(),
            keyring.clone(),
            cache.clone(),
            refresh_policy(&settings.refresh),
            shutdown,
            failover.clone(),
            counters,
        );
        let providers: BTreeMap<_, _> = providers
            .into_iter()
            .map(|(name, client)| {
                let interned = ProviderName::new(&name);
                (name, (interned, client))
            })
            .collect();
        let default_provider = settings
            .default_provider()
            .and_then(|name| providers.get(&name).map(|(interned, _)| interned.clone()));
        Self {
            inner: Arc::new(Inner {
                store,
                keyring,
                providers,
                default_provider,
                settings: settings.vault.clone(),
                cache,
                refresher,
                reads: reads::ReadFlights::new(READ_JOIN_AGE),
                failover,
                failover_check_interval: settings.failover.check_interval,
                keepalive: settings.keepalive.clone(),
                retention: settings.retention.clone(),
                events: events::EventHub::new(&settings.events),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn refresh_metrics(&self) -> &std::sync::Arc<crate::metrics::RefreshCounters> {
        self.inner.refresher.metrics()
    }

    /// The first step of shutdown: no refresh starts from now on (callers that would need one
    /// get `SHUTTING_DOWN` and retry on another replica; the keeper stops); refreshes in
    /// flight go on.
    pub fn stop_starting_refreshes(&self) {
        self.inner.refresher.stop_starting();
    }

    /// Checks, every `failover.check_interval` until `stop`, which database this is (a change
    /// means a failover or a restore: this replica's kept rotations are written back) and
    /// whether commits wait for a synchronous standby; says so when either changes.
    pub async fn watch_database(&self, stop: CancellationToken) {
        let counters = self.inner.refresher.metrics().clone();
        let mut synchronous = None;
        loop {
            if let Err(e) = self.inner.failover.check(&self.inner.store).await {
                tracing::debug!(error = %e, "could not check which database this is");
            }
            match self.inner.store.identity().durability().await {
                Ok(durability) => {
                    let now = durability.has_synchronous_standby();
                    counters
                        .synchronous_standby
                        .store(u64::from(now), std::sync::atomic::Ordering::Relaxed);
                    if synchronous != Some(now) {
                        if !durability.can_fail_over {
                            tracing::info!("the store is one local file: no standby and no failover; commits are on this machine's disk");
                        } else if now {
                            tracing::info!(synchronous_standby_names = %durability.synchronous_standby_names, synchronous_commit = %durability.synchronous_commit, "commits wait for a synchronous standby: a failover keeps every rotation");
                        } else {
                            tracing::warn!(synchronous_standby_names = %durability.synchronous_standby_names, synchronous_commit = %durability.synchronous_commit, "NO SYNCHRONOUS STANDBY: a failover may lose rotated refresh tokens committed moments before; replicas keep their rotations in memory for failover.rotation_window and write them back, but a replica that stops meanwhile takes them along (see docs/deploy.md)");
                        }
                        synchronous = Some(now);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not read the database's durability settings"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.failover_check_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Drops aged entries from this replica's token cache every `vault.cache_max_age` (within
    /// 1 s to 1 min) until `stop`: reads never answer them, and this keeps their plaintext
    /// tokens from staying in memory until the cache happens to evict them.
    pub async fn sweep_token_cache(&self, stop: CancellationToken) {
        let every = self.inner.cache.sweep_interval();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.inner.cache.sweep_expired(),
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Waits up to `budget` for every refresh in flight to end, its received refresh token
    /// stored. Returns how many were still running when the budget ran out.
    pub async fn drain_refreshes(&self, budget: std::time::Duration) -> usize {
        self.inner.refresher.drain(budget).await
    }

    /// The connection a request names, its provider resolved: an empty name is the default
    /// provider. Built once at the API boundary; everything below takes the key. A name that
    /// is not configured still makes a key (the policy may refuse it first); the flows answer
    /// it with INVALID_ARGUMENT.
    pub fn connection_key(&self, asked: ConnectionRequest) -> Result<ConnectionKey, VaultError> {
        let provider = if asked.provider.is_empty() {
            self.inner.default_provider.clone().ok_or_else(|| {
                VaultError::invalid(
                    "provider",
                    "is required: several providers are configured and none is the default",
                )
            })?
        } else {
            match self.inner.providers.get(&asked.provider) {
                Some((interned, _)) => interned.clone(),
                None => ProviderName::new(&asked.provider),
            }
        };
        Ok(ConnectionKey::new(asked.tenant_id, provider))
    }

    /// The client of the provider a key names.
    fn provider(&self, key: &ConnectionKey) -> Result<&ProviderClient, VaultError> {
        self.provider_named(key.provider().as_str())
    }

    /// The client of a configured provider, by name (its client secrets, for status and tests).
    pub fn provider_client(&self, name: &str) -> Option<&ProviderClient> {
        self.inner.providers.get(name).map(|(_, client)| client)
    }

    fn provider_named(&self, name: &str) -> Result<&ProviderClient, VaultError> {
        self.inner
            .providers
            .get(name)
            .map(|(_, client)| client)
            .ok_or_else(|| VaultError::invalid("provider", "names no configured provider"))
    }
}

fn refresh_policy(refresh: &RefreshSettings) -> refresh::RefreshPolicy {
    refresh::RefreshPolicy {
        lease_ttl: refresh.lease_ttl,
        poll_interval: refresh.poll_interval,
        max_attempts: refresh.max_attempts,
        backoff: refresh.backoff,
        store_retry_max_backoff: refresh.store_retry_max_backoff,
    }
}
