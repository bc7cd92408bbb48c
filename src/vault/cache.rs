//! Each replica's in-memory cache of decrypted access tokens, so the hot path needs neither
//! the database nor a decryption. Bounded in entries; each entry is trusted for at most
//! `max_age`, which bounds how long a replica can hand out a token that another replica's
//! refresh has replaced.

use std::time::Duration;

use moka::sync::Cache;

use super::{AccessToken, ConnectionKey};

#[derive(Clone)]
pub(super) struct TokenCache {
    /// Keyed by connection; the key's two `Arc<str>` keep clones cheap.
    entries: Cache<ConnectionKey, AccessToken>,
}

impl TokenCache {
    pub fn new(max_entries: u64, max_age: Duration) -> Self {
        Self {
            entries: Cache::builder().max_capacity(max_entries).time_to_live(max_age).build(),
        }
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<AccessToken> {
        self.entries.get(key)
    }

    /// Keeps the newest generation: a slow reader never replaces a newer token with an older.
    pub fn put(&self, key: ConnectionKey, token: AccessToken) {
        let generation = token.generation;
        self.entries.entry(key).and_compute_with(|existing| match existing {
            Some(e) if e.value().generation > generation => moka::ops::compute::Op::Nop,
            _ => moka::ops::compute::Op::Put(token),
        });
    }

    pub fn remove(&self, key: &ConnectionKey) {
        self.entries.invalidate(key);
    }
}
