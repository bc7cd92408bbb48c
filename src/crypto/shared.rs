//! A keyring that can be replaced while the vault runs (a reloaded keyring file), with the same
//! `seal`/`open` API as [`Keyring`].

use std::{
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{Aad, Keyring, SealError};

/// The keyring every flow uses, swapped whole on reload: a call sees the old keyring or the new
/// one, never a mixture. Cheap to clone (all clones share the one slot).
///
/// A `RwLock<Arc<_>>` rather than a lock-free swap: readers hold the lock only to clone the
/// `Arc` (no cryptography under it), the keyring is read only when a token comes from the
/// database (the hot path serves from the cache), and writers come once per reload. That is
/// not worth a dependency.
#[derive(Clone)]
pub struct SharedKeyring {
    slot: Arc<RwLock<Arc<Keyring>>>,
}

impl SharedKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self {
            slot: Arc::new(RwLock::new(Arc::new(keyring))),
        }
    }

    /// The keyring as it is now. Hold it across several operations that must agree (a value
    /// opened and resealed with the same keys).
    pub fn current(&self) -> Arc<Keyring> {
        // A poisoned lock only means a writer panicked between taking the lock and assigning an
        // `Arc`, which cannot leave the slot half-written; the value inside is still whole.
        self.slot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `keyring` in place for every later call; returns the one it replaces.
    pub fn replace(&self, keyring: Keyring) -> Arc<Keyring> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, Arc::new(keyring))
    }

    pub fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.current().seal(aad, plaintext)
    }

    pub fn seal_str(&self, aad: &Aad<'_>, plaintext: &SecretString) -> Result<Vec<u8>, SealError> {
        self.current().seal_str(aad, plaintext)
    }

    pub fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.current().open(aad, sealed)
    }

    pub fn open_str(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<SecretString, SealError> {
        self.current().open_str(aad, sealed)
    }
}

impl From<Keyring> for SharedKeyring {
    fn from(keyring: Keyring) -> Self {
        Self::new(keyring)
    }
}

impl fmt::Debug for SharedKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keyring's own Debug shows key ids only.
        f.debug_tuple("SharedKeyring").field(&*self.current()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crypto::Purpose;

    fn aad() -> Aad<'static> {
        Aad::for_generation(Purpose::AccessToken, "t", "p", 1)
    }

    #[test]
    fn a_replacement_is_seen_by_every_clone() {
        let (old, old_text) = Keyring::generate("old");
        let shared = SharedKeyring::new(old);
        let other_handle = shared.clone();
        let sealed_old = shared.seal(&aad(), b"a").unwrap();

        let (_, new_text) = Keyring::generate("new");
        let both = Keyring::parse(&format!("{}{}", old_text.as_str(), new_text.as_str()), None).unwrap();
        let replaced = shared.replace(both);
        assert_eq!(replaced.active().0.as_str(), "old");

        let sealed_new = other_handle.seal(&aad(), b"b").unwrap();
        assert_eq!(crate::crypto::sealed_key_id(&sealed_new), Ok("new"));
        assert_eq!(other_handle.open(&aad(), &sealed_old).unwrap().as_slice(), b"a");
        assert!(!format!("{shared:?}").contains(old_text.split(':').nth(1).unwrap().trim()));
    }
}
