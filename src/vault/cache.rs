//! Each replica's in-memory cache of decrypted access tokens, so the hot path needs neither
//! the database nor a decryption. Bounded in entries; each entry is trusted for at most
//! `max_age`, which bounds how long a replica can hand out a token that another replica's
//! refresh has replaced.

use std::{sync::Arc, time::Duration};

use moka::sync::Cache;

use super::AccessToken;

#[derive(Clone)]
pub(super) struct TokenCache {
    entries: Cache<CacheKey, AccessToken>,
}

/// Provider and tenant. An `Arc<str>` pair keeps clones cheap.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct CacheKey(Arc<str>, Arc<str>);

impl CacheKey {
    pub fn new(provider: &str, tenant_id: &str) -> Self {
        Self(provider.into(), tenant_id.into())
    }

    pub fn provider(&self) -> &str {
        &self.0
    }

    pub fn tenant_id(&self) -> &str {
        &self.1
    }
}

impl TokenCache {
    pub fn new(max_entries: u64, max_age: Duration) -> Self {
        Self {
            entries: Cache::builder().max_capacity(max_entries).time_to_live(max_age).build(),
        }
    }

    pub fn get(&self, key: &CacheKey) -> Option<AccessToken> {
        self.entries.get(key)
    }

    /// Keeps the newest generation: a slow reader never replaces a newer token with an older.
    pub fn put(&self, key: CacheKey, token: AccessToken) {
        let generation = token.generation;
        self.entries.entry(key).and_compute_with(|existing| match existing {
            Some(e) if e.value().generation > generation => moka::ops::compute::Op::Nop,
            _ => moka::ops::compute::Op::Put(token),
        });
    }

    pub fn remove(&self, key: &CacheKey) {
        self.entries.invalidate(key);
    }
}
