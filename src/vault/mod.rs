//! The flows: begin and complete an authorization, hand out access tokens, refresh them.
//! No SQL and no HTTP here: those belong to `store` and `oauth`; this module decides.
//!
//! Where each flow lives (every file adds an `impl Vault` block or serves one):
//!
//! | flow | file |
//! |---|---|
//! | BeginAuthorization, CompleteAuthorization | `authorize.rs` |
//! | GetAccessToken (cache, database, refresh), GetConnection | `access.rs` |
//! | the refresh: one task per connection, the lease, the provider round | `refresh/` |
//! | one evaluation per key for reads and refreshes | `coalesce.rs` |
//! | this replica's token cache | `cache.rs` |
//! | sealing and opening tokens for the store | `tokens.rs` |
//! | shutdown: stop starting refreshes, drain those in flight | this file |

mod access;
mod authorize;
mod cache;
mod coalesce;
mod error;
mod refresh;
mod tokens;
mod types;

use std::{collections::BTreeMap, sync::Arc};

use tokio_util::sync::CancellationToken;

pub use authorize::ConsumedState;
pub use error::VaultError;
pub use types::*;

use crate::{
    config::{RefreshSettings, Settings, VaultSettings},
    crypto::SharedKeyring,
    oauth::ProviderClient,
    store::{ConnectionRow, Store},
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
    reads: coalesce::Coalescer<ConnectionKey, Result<ConnectionRow, VaultError>>,
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
        let refresher = refresh::Refresher::new(
            store.clone(),
            keyring.clone(),
            cache.clone(),
            refresh_policy(&settings.refresh),
            shutdown,
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
                reads: coalesce::Coalescer::new(READ_JOIN_AGE),
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
    /// get `SHUTTING_DOWN` and retry on another replica); refreshes in flight go on.
    pub fn stop_starting_refreshes(&self) {
        self.inner.refresher.stop_starting();
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
