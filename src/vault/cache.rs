//! Each replica's in-memory cache of decrypted access tokens, so the hot path needs neither
//! the database nor a decryption. Bounded in entries; each entry is trusted for at most
//! `max_age`, which bounds how long a replica can hand out a token that another replica's
//! refresh has replaced.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use moka::sync::Cache;
use secrecy::SecretString;
use time::OffsetDateTime;

use super::{AccessToken, ConnectionKey};

/// How many distinct token types and scope sets the cache shares between entries. Providers
/// grant a handful of each; past this, further values are kept per entry, so a provider that
/// granted a different scope set to every connection cannot grow the tables without bound.
const MAX_SHARED: usize = 256;

#[derive(Clone)]
pub(super) struct TokenCache {
    /// Keyed by connection; the key's two `Arc<str>` keep clones cheap.
    entries: Cache<ConnectionKey, Entry>,
    /// The token types and scope sets the entries share: one copy each instead of one per
    /// connection (docs/performance.md, memory per cached token).
    shared: Arc<Shared>,
}

/// A cached token, as compact as the token's fields allow: the token itself (one exact-size
/// allocation), the token type and scopes shared with other entries, the rest inline.
#[derive(Clone)]
enum Entry {
    Token {
        token: SecretString,
        token_type: Arc<str>,
        scopes: Arc<[String]>,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
        generation: i64,
    },
    /// The connection was disconnected at this generation: no token of an older generation
    /// may be cached again (a read or a refresh that finished just after the wipe), until the
    /// entry ages out like any other.
    Gone { generation: i64 },
}

impl Entry {
    fn generation(&self) -> i64 {
        match self {
            Entry::Token { generation, .. } | Entry::Gone { generation } => *generation,
        }
    }
}

/// Values many entries hold alike, kept once.
#[derive(Default)]
struct Shared {
    token_types: Mutex<HashSet<Arc<str>>>,
    scopes: Mutex<HashSet<Arc<[String]>>>,
}

impl Shared {
    fn token_type(&self, token_type: &str) -> Arc<str> {
        share(&self.token_types, token_type, |t| Arc::from(t))
    }

    fn scopes(&self, scopes: &Arc<[String]>) -> Arc<[String]> {
        share(&self.scopes, &**scopes, |_| scopes.clone())
    }
}

/// The shared copy of `value`, made by `make` the first time while the table has room.
fn share<T: ?Sized + Eq + std::hash::Hash>(
    table: &Mutex<HashSet<Arc<T>>>,
    value: &T,
    make: impl FnOnce(&T) -> Arc<T>,
) -> Arc<T> {
    // The table holds only shared copies, so a panic elsewhere cannot leave it inconsistent.
    let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = table.get(value) {
        return shared.clone();
    }
    let made = make(value);
    if table.len() < MAX_SHARED {
        table.insert(made.clone());
    }
    made
}

impl TokenCache {
    pub fn new(max_entries: u64, max_age: Duration) -> Self {
        Self {
            entries: Cache::builder().max_capacity(max_entries).time_to_live(max_age).build(),
            shared: Arc::default(),
        }
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<AccessToken> {
        match self.entries.get(key)? {
            Entry::Token {
                token,
                token_type,
                scopes,
                issued_at,
                expires_at,
                generation,
            } => Some(AccessToken {
                token,
                token_type: token_type.to_string(),
                issued_at,
                expires_at,
                scopes,
                generation,
            }),
            Entry::Gone { .. } => None,
        }
    }

    /// Keeps the newest generation: a slow reader never replaces a newer token with an older.
    pub fn put(&self, key: ConnectionKey, token: AccessToken) {
        let entry = Entry::Token {
            token: token.token,
            token_type: self.shared.token_type(&token.token_type),
            scopes: self.shared.scopes(&token.scopes),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            generation: token.generation,
        };
        self.put_entry(key, entry);
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
    #![allow(clippy::unwrap_used)]

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

    #[test]
    fn entries_share_their_token_type_and_scopes_and_give_them_back_unchanged() {
        let cache = TokenCache::new(10, Duration::from_secs(60));
        let (a, b) = (
            ConnectionKey::from_stored("a", "p"),
            ConnectionKey::from_stored("b", "p"),
        );
        let mut first = token(1);
        first.scopes = vec!["offline".to_string(), "read".to_string()].into();
        let mut second = token(2);
        second.scopes = vec!["offline".to_string(), "read".to_string()].into();
        cache.put(a.clone(), first.clone());
        cache.put(b.clone(), second);
        let (got_a, got_b) = (cache.get(&a).unwrap(), cache.get(&b).unwrap());
        assert!(Arc::ptr_eq(&got_a.scopes, &got_b.scopes), "one copy of the scope set");
        assert_eq!(&*got_a.scopes, &*first.scopes);
        assert_eq!(got_a.token_type, "bearer");
        assert_eq!(got_a.expires_at, first.expires_at);
        assert_eq!(got_a.issued_at, first.issued_at);
        assert_eq!(got_b.generation, 2);
        use secrecy::ExposeSecret;
        assert_eq!(got_a.token.expose_secret(), "t");
    }
}
