//! The keyring: every key that may still protect a stored value, and the one new values use.
//! A key can be in the keyring as decrypt-only: it opens values but is never chosen to seal, so
//! a rotation can give every replica the new key before any replica writes with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
};

use aes_gcm::{
    aead::{Aead, KeyInit},
    Aes256Gcm, Nonce,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use zeroize::Zeroizing;

/// A key's name as framed into every value it seals: 1 to 32 characters of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The longest key id a sealed value can frame (its length is stored in one byte, and short
    /// ids keep every stored value small).
    pub const MAX_LEN: usize = 32;

    pub fn parse(id: &str) -> Result<Self, KeyringError> {
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(id.to_owned()))
        } else if id.chars().count() > Self::MAX_LEN {
            // Too long to be an id: most likely key material on the wrong side of the colon,
            // which must not reach a log line.
            Err(KeyringError::InvalidKeyId(format!(
                "<{} characters, not shown>",
                id.chars().count()
            )))
        } else {
            Err(KeyringError::InvalidKeyId(id.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// One AES-256 key. The cipher keeps its own copy of the key schedule; the raw bytes are wiped
/// as soon as the cipher is built.
#[derive(Clone)]
pub struct Key {
    pub(super) cipher: Aes256Gcm,
}

impl Key {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyringError> {
        if bytes.len() != 32 {
            return Err(KeyringError::InvalidKeyLength(bytes.len()));
        }
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| KeyringError::InvalidKeyLength(bytes.len()))?;
        Ok(Self { cipher })
    }

    /// A fresh random key, for development keyrings and tests.
    pub fn generate() -> (Self, Zeroizing<[u8; 32]>) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system's random source failed");
        let key = Self::from_bytes(bytes.as_ref()).expect("32 bytes is a valid AES-256 key");
        (key, bytes)
    }
}

impl Key {
    /// Whether two keys are the same bytes, found by sealing one fixed block with each. The
    /// result never leaves memory, so the fixed nonce reveals nothing.
    fn same_as(&self, other: &Key) -> bool {
        let probe = |key: &Key| key.cipher.encrypt(Nonce::from_slice(&[0u8; 12]), &[0u8; 16][..]).ok();
        match (probe(self), probe(other)) {
            (Some(a), Some(b)) => subtle::ConstantTimeEq::ct_eq(a.as_slice(), b.as_slice()).into(),
            _ => false,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key([redacted])")
    }
}

/// The word after a key, on its keyring line, that makes the key decrypt-only.
pub const DECRYPT_ONLY: &str = "decrypt-only";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("invalid key id {0:?}: use 1 to 32 characters of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidKeyId(String),
    #[error("a key must be 32 bytes (AES-256), this one has {0}")]
    InvalidKeyLength(usize),
    #[error("key {0} is not valid base64")]
    InvalidBase64(KeyId),
    #[error("key id {0} appears twice")]
    DuplicateKeyId(KeyId),
    #[error("the keyring is empty")]
    Empty,
    #[error("the active key {0} is not in the keyring")]
    UnknownActiveKey(KeyId),
    #[error("the active key {0} is marked decrypt-only in the keyring")]
    ActiveKeyDecryptOnly(KeyId),
    #[error("every key in the keyring is decrypt-only: at least one must be able to seal")]
    NoSealingKey,
    #[error("keyring line {line}: expected `<key-id>:<base64 of 32 bytes>`")]
    Malformed { line: usize },
    // What follows the key is not shown: a stray space inside the base64 would put key material
    // there.
    #[error("keyring line {line}: after the key only `decrypt-only` may follow")]
    UnknownMarker { line: usize },
    #[error("cannot read the keyring file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The keys the vault knows. The active key seals new values; every key opens values it sealed.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<KeyId, Key>,
    /// Keys that open values but are never made active.
    decrypt_only: BTreeSet<KeyId>,
    active: KeyId,
}

impl Keyring {
    /// A keyring of `keys` in listing order, every one able to seal.
    pub fn new(keys: Vec<(KeyId, Key)>, active: Option<KeyId>) -> Result<Self, KeyringError> {
        Self::with_decrypt_only(keys.into_iter().map(|(id, key)| (id, key, false)).collect(), active)
    }

    /// A keyring of `(id, key, decrypt-only)` in listing order.
    pub fn with_decrypt_only(keys: Vec<(KeyId, Key, bool)>, active: Option<KeyId>) -> Result<Self, KeyringError> {
        let mut map = BTreeMap::new();
        let mut decrypt_only = BTreeSet::new();
        let mut last_sealing = None;
        for (id, key, opens_only) in keys {
            if map.insert(id.clone(), key).is_some() {
                return Err(KeyringError::DuplicateKeyId(id));
            }
            if opens_only {
                decrypt_only.insert(id);
            } else {
                last_sealing = Some(id);
            }
        }
        if map.is_empty() {
            return Err(KeyringError::Empty);
        }
        // Without an explicit choice the last key listed is the newest, and so the active one:
        // rotation is "append a line, reload". Decrypt-only keys are passed over, which is how
        // a key reaches every replica before any of them seals with it.
        let active = match active {
            Some(id) if !map.contains_key(&id) => return Err(KeyringError::UnknownActiveKey(id)),
            Some(id) if decrypt_only.contains(&id) => return Err(KeyringError::ActiveKeyDecryptOnly(id)),
            Some(id) => id,
            None => last_sealing.ok_or(KeyringError::NoSealingKey)?,
        };
        Ok(Self {
            keys: map,
            decrypt_only,
            active,
        })
    }

    /// Parses the keyring text format: one `<key-id>:<base64 key>` per line or separated by
    /// commas, optionally followed by `decrypt-only`; blank lines and lines starting with `#`
    /// are ignored.
    pub fn parse(text: &str, active: Option<&str>) -> Result<Self, KeyringError> {
        let mut keys = Vec::new();
        let entries = text
            .lines()
            .enumerate()
            .flat_map(|(n, line)| line.split(',').map(move |part| (n + 1, part.trim())))
            .filter(|(_, part)| !part.is_empty() && !part.starts_with('#'));
        for (line, entry) in entries {
            let (id, rest) = entry.split_once(':').ok_or(KeyringError::Malformed { line })?;
            let id = KeyId::parse(id.trim())?;
            let mut words = rest.split_whitespace();
            let b64 = words.next().unwrap_or_default();
            let decrypt_only = match (words.next(), words.next()) {
                (None, _) => false,
                (Some(DECRYPT_ONLY), None) => true,
                _ => return Err(KeyringError::UnknownMarker { line }),
            };
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(b64)
                    .map_err(|_| KeyringError::InvalidBase64(id.clone()))?,
            );
            keys.push((id, Key::from_bytes(&bytes)?, decrypt_only));
        }
        let active = active.map(KeyId::parse).transpose()?;
        Self::with_decrypt_only(keys, active)
    }

    /// As `parse`, for the bytes of a keyring file.
    pub fn parse_bytes(bytes: &[u8], active: Option<&str>) -> Result<Self, KeyringError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyringError::Malformed { line: 1 })?;
        Self::parse(text, active)
    }

    pub fn load_file(path: &Path, active: Option<&str>) -> Result<Self, KeyringError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        })?);
        Self::parse(&text, active)
    }

    /// A keyring of one fresh random key, and its text form to persist.
    pub fn generate_with_id(id: &str) -> Result<(Self, Zeroizing<String>), KeyringError> {
        let id = KeyId::parse(id)?;
        let (key, bytes) = Key::generate();
        let text = Zeroizing::new(format!("{id}:{}\n", STANDARD.encode(bytes.as_ref())));
        let ring = Self::new(vec![(id, key)], None)?;
        Ok((ring, text))
    }

    /// A keyring line for a fresh random key, marked decrypt-only if asked: the first step of
    /// a rotation (docs/keys.md).
    pub fn generate_line(id: &str, decrypt_only: bool) -> Result<Zeroizing<String>, KeyringError> {
        let (_, line) = Self::generate_with_id(id)?;
        if !decrypt_only {
            return Ok(line);
        }
        Ok(Zeroizing::new(format!("{} {DECRYPT_ONLY}\n", line.trim_end())))
    }

    /// As `generate_with_id`, for ids known to be valid.
    pub fn generate(id: &str) -> (Self, Zeroizing<String>) {
        Self::generate_with_id(id).expect("the id is a valid key id")
    }

    pub fn active(&self) -> (&KeyId, &Key) {
        let key = self
            .keys
            .get(&self.active)
            .expect("the active key is checked at construction");
        (&self.active, key)
    }

    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|(k, _)| k.as_str() == id).map(|(_, key)| key)
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Whether `id` is in the keyring as decrypt-only (false for an id that is not in it).
    pub fn is_decrypt_only(&self, id: &str) -> bool {
        self.decrypt_only.iter().any(|k| k.as_str() == id)
    }

    /// The keys that open values but do not seal.
    pub fn decrypt_only_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.decrypt_only.iter()
    }

    /// Ids in both keyrings whose key bytes differ. An id must never change its key: every
    /// value sealed under the old bytes would fail to open.
    pub fn changed_keys(&self, other: &Keyring) -> Vec<KeyId> {
        self.keys
            .iter()
            .filter(|(id, key)| other.keys.get(*id).is_some_and(|o| !key.same_as(o)))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("decrypt_only", &self.decrypt_only)
            .field("active", &self.active)
            .finish()
    }
}
