//! Each replica's in-memory cache of decrypted access tokens, so the hot path needs neither
//! the database nor a decryption. Bounded in entries; each entry is trusted for at most
//! `max_age`, which bounds how long a replica can hand out a token that another replica's
//! refresh has replaced.
//!
//! The map is quick_cache's: a sharded table with CLOCK-Pro eviction that keeps key and value
//! inline in one slab slot, ~150 bytes of bookkeeping per entry where moka's concurrent map,
//! access and write deques and entry info took ~330 (docs/performance.md, memory per cached
//! token). It has no time to live of its own, so the age is kept here: every read checks it
//! (an entry past `max_age` is never answered), and [`TokenCache::sweep_expired`], run every
//! `max_age` by the vault, drops aged entries so that plaintext tokens do not stay in memory
//! much past their trust (at most twice `max_age`).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
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
    entries: Arc<Cache<ConnectionKey, Entry>>,
    /// The token types and scope sets the entries share: one copy each instead of one per
    /// connection (docs/performance.md, memory per cached token).
    shared: Arc<Shared>,
    max_age: Duration,
    /// Entries' ages count from here, in milliseconds: 8 bytes an entry instead of an `Instant`'s 16.
    epoch: Instant,
}

/// One connection's slot: its token, or the mark of a disconnect.
#[derive(Clone)]
struct Entry {
    /// When the entry was put, in milliseconds since the cache's epoch.
    cached_at: u64,
    generation: i64,
    /// `None`: the connection was disconnected at `generation`, and no token of an older
    /// generation may be cached again (a read or a refresh that finished just after the
    /// wipe), until the entry ages out like any other.
    token: Option<CachedToken>,
}

/// A cached token, as compact as the token's fields allow: the token itself (one exact-size
/// allocation, shared with the callers it is handed to), the token type and scopes shared with
/// other entries, the rest inline.
#[derive(Clone)]
struct CachedToken {
    token: Arc<SecretString>,
    token_type: Arc<str>,
    scopes: Arc<[String]>,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
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
            entries: Arc::new(Self::map(max_entries)),
            shared: Arc::default(),
            max_age,
            epoch: Instant::now(),
        }
    }

    /// The map, with room for a tenth of its entries' keys as ghosts (recently evicted keys,
    /// which CLOCK-Pro uses to admit a returning key as hot) instead of the default half: a
    /// ghost takes a slot as big as a live entry's, and in a standalone run of 100,000 entries
    /// swept six times with twice as many keys, half left ~474 bytes per entry beyond the token
    /// and a tenth ~265. Tenants come back at their callers' pace, not in scans, so the
    /// shorter memory of evictions costs little.
    fn map(max_entries: u64) -> Cache<ConnectionKey, Entry> {
        let entries = usize::try_from(max_entries).unwrap_or(usize::MAX).max(1);
        match quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(entries)
            .weight_capacity(entries as u64)
            .ghost_allocation(0.1)
            .build()
        {
            Ok(options) => Cache::with_options(options, Default::default(), Default::default(), Default::default()),
            Err(_) => Cache::new(entries),
        }
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<AccessToken> {
        let entry = self.entries.get(key)?;
        if self.is_expired(&entry, self.now()) {
            // Only this aged entry: one put since the read above is newer and stays.
            self.entries.remove_if(key, |e| {
                e.cached_at == entry.cached_at && e.generation == entry.generation
            });
            return None;
        }
        let cached = entry.token?;
        Some(AccessToken {
            token: cached.token,
            token_type: cached.token_type.to_string(),
            issued_at: cached.issued_at,
            expires_at: cached.expires_at,
            scopes: cached.scopes,
            generation: entry.generation,
        })
    }

    /// Keeps the newest generation: a slow reader never replaces a newer token with an older.
    pub fn put(&self, key: ConnectionKey, token: AccessToken) {
        let cached = CachedToken {
            token: token.token,
            token_type: self.shared.token_type(&token.token_type),
            scopes: self.shared.scopes(&token.scopes),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
        };
        self.put_entry(&key, token.generation, Some(cached));
    }

    pub fn remove(&self, key: &ConnectionKey) {
        self.entries.remove(key);
    }

    /// Forgets the connection's token after a disconnect that moved it to `generation`, and
    /// keeps any older one from coming back.
    pub fn forget(&self, key: ConnectionKey, generation: i64) {
        self.put_entry(&key, generation, None);
    }

    /// Drops every entry older than `max_age`. Reads never answer one; this frees them.
    pub fn sweep_expired(&self) {
        let now = self.now();
        self.entries.retain(|_, entry| !self.is_expired(entry, now));
    }

    /// How often the vault sweeps: every `max_age`, within 1 s to 1 min.
    pub fn sweep_interval(&self) -> Duration {
        self.max_age.clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    fn put_entry(&self, key: &ConnectionKey, generation: i64, token: Option<CachedToken>) {
        let now = self.now();
        let mut new = Some(Entry {
            cached_at: now,
            generation,
            token,
        });
        // Compared and replaced under the shard's lock: two puts racing on one key cannot
        // leave the older generation behind.
        let placed = self.entries.entry(key, None, |_, existing| {
            if self.is_expired(existing, now) || existing.generation <= generation {
                if let Some(entry) = new.take() {
                    *existing = entry;
                }
            }
            EntryAction::Retain(())
        });
        if let EntryResult::Vacant(slot) = placed {
            if let Some(entry) = new.take() {
                let _ = slot.insert(entry);
            }
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_expired(&self, entry: &Entry, now: u64) -> bool {
        now.saturating_sub(entry.cached_at) as u128 >= self.max_age.as_millis()
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
            token: Arc::new(SecretString::from("t")),
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
    fn an_entry_is_not_answered_past_its_age_and_the_sweep_frees_it() {
        // Steps of 600 ms against an age of 1 s: a loaded machine may oversleep by 400 ms.
        let cache = TokenCache::new(10, Duration::from_secs(1));
        let (kept, aged) = (
            ConnectionKey::from_stored("kept", "p"),
            ConnectionKey::from_stored("aged", "p"),
        );
        cache.put(aged.clone(), token(1));
        std::thread::sleep(Duration::from_millis(600));
        cache.put(kept.clone(), token(1));
        std::thread::sleep(Duration::from_millis(600));
        assert!(cache.get(&aged).is_none(), "past max_age: not answered");
        assert!(cache.get(&kept).is_some(), "the age counts from each entry's own put");
        cache.put(aged.clone(), token(1));
        std::thread::sleep(Duration::from_millis(600));
        cache.sweep_expired();
        assert!(cache.entries.get(&kept).is_none(), "the sweep dropped the aged entry");
        assert!(cache.get(&aged).is_some(), "a put starts the age again");
    }

    #[test]
    fn an_aged_disconnect_mark_lets_an_older_generation_in_again() {
        let cache = TokenCache::new(10, Duration::from_secs(1));
        let key = ConnectionKey::from_stored("t", "p");
        cache.forget(key.clone(), 4);
        cache.put(key.clone(), token(3));
        assert!(cache.get(&key).is_none(), "the mark holds while it is young");
        std::thread::sleep(Duration::from_millis(1100));
        cache.put(key.clone(), token(3));
        assert_eq!(
            cache.get(&key).map(|t| t.generation),
            Some(3),
            "as when moka's time to live ended it"
        );
    }

    #[test]
    fn racing_puts_leave_the_newest_generation() {
        let cache = TokenCache::new(100, Duration::from_secs(60));
        let key = ConnectionKey::from_stored("t", "p");
        std::thread::scope(|s| {
            for worker in 0..4 {
                let (cache, key) = (cache.clone(), key.clone());
                s.spawn(move || {
                    for generation in 0..500 {
                        cache.put(key.clone(), token(generation * 4 + worker));
                    }
                });
            }
        });
        assert_eq!(cache.get(&key).map(|t| t.generation), Some(499 * 4 + 3));
    }

    #[test]
    fn the_cache_holds_no_more_than_its_bound() {
        let cache = TokenCache::new(1_000, Duration::from_secs(60));
        for i in 0..10_000 {
            cache.put(ConnectionKey::from_stored(&format!("t{i}"), "p"), token(1));
        }
        assert!(cache.entries.len() <= 1_000, "{} entries", cache.entries.len());
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
        assert!(
            Arc::ptr_eq(&got_a.token, &first.token) && Arc::ptr_eq(&cache.get(&a).unwrap().token, &first.token),
            "the put and every hit share one copy of the plaintext"
        );
    }
}
