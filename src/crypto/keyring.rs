//! The keyring: every key that may still protect a stored value, and the one new values use.

use std::{collections::BTreeMap, fmt, path::Path};

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
    #[error("keyring line {line}: expected `<key-id>:<base64 of 32 bytes>`")]
    Malformed { line: usize },
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
    active: KeyId,
}

impl Keyring {
    pub fn new(keys: Vec<(KeyId, Key)>, active: Option<KeyId>) -> Result<Self, KeyringError> {
        let mut map = BTreeMap::new();
        let mut last = None;
        for (id, key) in keys {
            if map.insert(id.clone(), key).is_some() {
                return Err(KeyringError::DuplicateKeyId(id));
            }
            last = Some(id);
        }
        // Without an explicit choice the last key listed is the newest, and so the active one:
        // rotation is "append a line, restart".
        let active = active.or(last).ok_or(KeyringError::Empty)?;
        if !map.contains_key(&active) {
            return Err(KeyringError::UnknownActiveKey(active));
        }
        Ok(Self { keys: map, active })
    }

    /// Parses the keyring text format: one `<key-id>:<base64 key>` per line or separated by
    /// commas; blank lines and lines starting with `#` are ignored.
    pub fn parse(text: &str, active: Option<&str>) -> Result<Self, KeyringError> {
        let mut keys = Vec::new();
        let entries = text
            .lines()
            .enumerate()
            .flat_map(|(n, line)| line.split(',').map(move |part| (n + 1, part.trim())))
            .filter(|(_, part)| !part.is_empty() && !part.starts_with('#'));
        for (line, entry) in entries {
            let (id, b64) = entry.split_once(':').ok_or(KeyringError::Malformed { line })?;
            let id = KeyId::parse(id.trim())?;
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(b64.trim())
                    .map_err(|_| KeyringError::InvalidBase64(id.clone()))?,
            );
            keys.push((id, Key::from_bytes(&bytes)?));
        }
        let active = active.map(KeyId::parse).transpose()?;
        Self::new(keys, active)
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
            .field("active", &self.active)
            .finish()
    }
}
