//! Reloading the keyring file while the vault runs, so a key added to a Kubernetes secret is
//! picked up without a restart.
//!
//! The file is read every `keys.reload_interval` and on SIGHUP (the loop is `crate::reload`'s,
//! which says why polling) and compared by content: a SHA-256 of the bytes, not the mtime,
//! which Kubernetes' symlink swap makes unreliable.
//!
//! A new keyring replaces the old one whole (see `SharedKeyring`), and only if it is safe:
//! it parses, no key id changed its bytes, and every key it drops protects no stored value
//! (checked in the database). Otherwise the old keyring stays and the refusal is logged as an
//! error on every check until the file is fixed or `keys rewrap` has emptied the dropped key.
//!
//! The first comparison is against the bytes the start-up keyring was parsed from (see
//! `LoadedKeyring`), not against the file as it is when the reloader is made: a change in
//! between would otherwise look like the loaded content and never be taken.

use std::{fmt, path::PathBuf, time::Duration};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::status::key_usage;
use crate::{
    config::EncryptionSettings,
    crypto::{KeyId, Keyring, KeyringError, SharedKeyring},
    store::{Store, StoreError},
};

/// The SHA-256 of a keyring file's bytes: how a reload tells that the content changed (the
/// mtime is unreliable under Kubernetes' symlink swap).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyringDigest([u8; 32]);

impl KeyringDigest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Debug for KeyringDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest of key material: nothing an operator needs, so nothing is shown.
        f.write_str("KeyringDigest(..)")
    }
}

/// What a check did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The file's content is what was loaded last.
    Unchanged,
    Replaced {
        added: Vec<KeyId>,
        removed: Vec<KeyId>,
        /// The key that sealed before the reload.
        previous_active: KeyId,
        /// The key that seals from now on.
        active: KeyId,
        /// Keys that open values but do not seal (the first step of a rotation).
        decrypt_only: Vec<KeyId>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new keyring file is not usable: {0}")]
    Keyring(#[from] KeyringError),
    #[error("the new keyring changes the bytes of key(s) {0:?}; a key id must keep its key (values sealed under it would no longer open)")]
    ChangedKey(Vec<KeyId>),
    #[error("the new keyring drops key(s) still protecting stored values: {0}; run `token-vault keys rewrap` first")]
    StillInUse(String),
    #[error("cannot check whether the dropped key(s) still protect stored values: {0}")]
    Store(#[from] StoreError),
}

/// Checks a keyring file and swaps a changed, safe keyring in.
pub struct KeyringReloader {
    path: PathBuf,
    active: Option<String>,
    keyring: SharedKeyring,
    store: Store,
    /// The content last loaded (or refused for good: a broken file is not re-parsed until it
    /// changes).
    last_digest: Option<KeyringDigest>,
}

impl KeyringReloader {
    /// `None` when the keyring does not come from a file (inline keyrings change only with a
    /// restart). `keyring` must be the one loaded from that file at start-up, and
    /// `loaded_digest` the digest of the bytes it was parsed from
    /// (`LoadedKeyring::file_digest`); without it the first check parses the file whatever it
    /// holds.
    pub fn new(
        settings: &EncryptionSettings,
        keyring: SharedKeyring,
        loaded_digest: Option<KeyringDigest>,
        store: Store,
    ) -> Option<Self> {
        let path = settings.keyring_file.clone()?;
        Some(Self {
            path,
            active: settings.active_key.clone(),
            keyring,
            store,
            last_digest: loaded_digest,
        })
    }

    /// Reads the file; if its content changed and the new keyring is safe, puts it in place.
    pub async fn check(&mut self) -> Result<Reload, ReloadError> {
        let bytes = Zeroizing::new(std::fs::read(&self.path).map_err(|source| KeyringError::Io {
            path: self.path.display().to_string(),
            source,
        })?);
        let fresh = KeyringDigest::of(&bytes);
        if self.last_digest == Some(fresh) {
            return Ok(Reload::Unchanged);
        }
        let new = match Keyring::parse_bytes(&bytes, self.active.as_deref()) {
            Ok(ring) => ring,
            Err(e) => {
                // Not retried until the file changes again: the same bytes fail the same way.
                self.last_digest = Some(fresh);
                return Err(e.into());
            }
        };
        let current = self.keyring.current();
        let changed = current.changed_keys(&new);
        if !changed.is_empty() {
            self.last_digest = Some(fresh);
            return Err(ReloadError::ChangedKey(changed));
        }
        let removed: Vec<KeyId> = current
            .key_ids()
            .filter(|id| new.get(id.as_str()).is_none())
            .cloned()
            .collect();
        if !removed.is_empty() {
            // Checked on every attempt (the digest is not recorded): a rewrap may empty the
            // dropped key meanwhile, and then the same file becomes acceptable.
            let usage = key_usage(&self.store).await?;
            let in_use: Vec<String> = removed
                .iter()
                .map(|id| (id, usage.values_under(id.as_str())))
                .filter(|(_, n)| *n > 0)
                .map(|(id, n)| format!("{id} ({n} values)"))
                .collect();
            if !in_use.is_empty() {
                return Err(ReloadError::StillInUse(in_use.join(", ")));
            }
        }
        let added: Vec<KeyId> = new
            .key_ids()
            .filter(|id| current.get(id.as_str()).is_none())
            .cloned()
            .collect();
        let previous_active = current.active().0.clone();
        let active = new.active().0.clone();
        let decrypt_only = new.decrypt_only_ids().cloned().collect();
        self.keyring.replace(new);
        self.last_digest = Some(fresh);
        Ok(Reload::Replaced {
            added,
            removed,
            previous_active,
            active,
            decrypt_only,
        })
    }
}

/// Checks the keyring file every `every` (never, if zero) and on SIGHUP, until `stop`.
pub async fn watch_keyring(reloader: KeyringReloader, every: Duration, stop: CancellationToken) {
    tracing::info!(path = %reloader.path.display(), "the keyring file is re-read while the vault runs");
    crate::reload::watch("the keyring file", every, stop, reloader, check_keyring).await;
}

fn check_keyring(reloader: &mut KeyringReloader) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        match reloader.check().await {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Replaced {
                added,
                removed,
                previous_active,
                active,
                decrypt_only,
            }) => {
                tracing::info!(?added, ?removed, %previous_active, %active, ?decrypt_only, "keyring reloaded: new values are sealed under the active key; decrypt-only keys only open values");
                if added.contains(&active) {
                    tracing::warn!(%active, "the new key {active} was added and made active in one step: replicas that have not loaded it yet cannot open what this one now seals; add a key as decrypt-only first (docs/keys.md)");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %reloader.path.display(), "KEYRING RELOAD REFUSED: the vault keeps its current keyring")
            }
        }
    })
}
