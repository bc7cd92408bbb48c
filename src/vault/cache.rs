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
    entries: Cache<ConnectionKey, Entry>,
}

#[derive(Clone)]
enum Entry {
    Token(AccessToken),
    /// The connection was disconnected at this generation: no token of an older generation
    /// may be cached again (a read or a refresh that finished just after the wipe), until the
    /// entry ages out like any other.
    Gone {
        generation: i64,
    },
}

impl Entry {
    fn generation(&self) -> i64 {
        match self {
            Entry::Token(token) => token.generation,
            Entry::Gone { generation } => *generation,
        }
    }
}

impl TokenCache {
    pub fn new(max_entries: u64, max_age: Duration) -> Self {
        Self {
            entries: Cache::builder().max_capacity(max_entries).time_to_live(max_age).build(),
        }
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<AccessToken> {
        match self.entries.get(key)? {
            Entry::Token(token) => Some(token),
            Entry::Gone { .. } => None,
        }
    }

    /// Keeps the newest generation: a slow reader never replaces a newer token with an older.
    pub fn put(&self, key: ConnectionKey, token: AccessToken) {
        self.put_entry(key, Entry::Token(token));
    }

    pub fn remove(&self, key: &ConnectionKey) {
        self.entries.invalidate(key);
    }

    /// Forgets the connection's token after a disconnect that moved it to `generation`, and
    /// keeps any older one from coming back.
    pub fn forget(&self, key: ConnectionKey, generation: i64) {
        self.put_entry(key, Entry::Gone { generation });
    }

    fn put_entry(&self, key: ConnectionKey, entry: Entry) {
        let generation = entry.generation();
        self.entries.entry(key).and_compute_with(|existing| match existing {
            Some(e) if e.value().generation() > generation => moka::ops::compute::Op::Nop,
            _ => moka::ops::compute::Op::Put(entry),
        });
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use time::OffsetDateTime;

    use super::*;

    fn token(generation: i64) -> AccessToken {
        AccessToken {
            token: SecretString::from("t"),
            token_type: "bearer".into(),
            issued_at: OffsetDateTime::now_utc(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
            scopes: Vec::new().into(),
            generation,
        }
    }

    #[test]
    fn a_forgotten_connection_takes_no_older_token_back() {
        let cache = TokenCache::new(10, Duration::from_secs(60));
        let key = ConnectionKey::from_stored("t", "p");
        cache.put(key.clone(), token(3));
        cache.forget(key.clone(), 4);
        assert!(cache.get(&key).is_none());
        // A refresh or read of generation 3 that ends after the disconnect.
        cache.put(key.clone(), token(3));
        assert!(cache.get(&key).is_none());
        // A new authorization moves the generation past the disconnect's.
        cache.put(key.clone(), token(5));
        assert_eq!(cache.get(&key).map(|t| t.generation), Some(5));
    }
}
