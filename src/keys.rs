//! Keys over time. Where the keyring comes from (a file or the environment in production; in
//! development, a keyring generated once and kept on disk, announced loudly), how a keyring
//! file is reloaded while the vault runs (`reload`), which key protects how many stored values
//! (`status`), and re-sealing every stored value under the active key (`rewrap`).

mod reload;
mod rewrap;
mod status;

use std::path::Path;

pub use reload::{watch_keyring, KeyringDigest, KeyringReloader, Reload, ReloadError};
pub use rewrap::{rewrap, RewrapFailure, RewrapOptions, RewrapReport};
pub use status::{key_usage, KeyUsage, KeyUsageRow, Protector};

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::{
    config::{EncryptionSettings, Mode},
    crypto::{Keyring, KeyringError},
};

#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("configuration: `encryption.keyring_file` (or `encryption.keyring`) must be set in production mode; generate a key with `token-vault keys generate`")]
    Missing,
    #[error("configuration: `encryption`: {0}")]
    Keyring(#[from] KeyringError),
    #[error("cannot write the development keyring {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The keyring a process starts with.
#[derive(Debug)]
pub struct LoadedKeyring {
    pub keyring: Keyring,
    /// The digest of the very bytes `keyring` was parsed from, when it came from
    /// `encryption.keyring_file`: the reloader's baseline. Reading the file again later for
    /// the baseline would hide a change made in between (start-up runs migrations first).
    pub file_digest: Option<KeyringDigest>,
}

pub fn load_keyring(settings: &EncryptionSettings, mode: Mode) -> Result<LoadedKeyring, KeySourceError> {
    let active = settings.active_key.as_deref();
    if let Some(path) = &settings.keyring_file {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        })?);
        return Ok(LoadedKeyring {
            keyring: Keyring::parse_bytes(&bytes, active)?,
            file_digest: Some(KeyringDigest::of(&bytes)),
        });
    }
    let keyring = match &settings.keyring {
        Some(inline) => Keyring::parse(inline.expose_secret(), active)?,
        None => match mode {
            Mode::Production => return Err(KeySourceError::Missing),
            Mode::Development => development_keyring(&settings.development_keyring_file)?,
        },
    };
    Ok(LoadedKeyring {
        keyring,
        file_digest: None,
    })
}

fn development_keyring(path: &Path) -> Result<Keyring, KeySourceError> {
    if path.exists() {
        tracing::warn!(path = %path.display(), "DEVELOPMENT MODE: using the locally generated keyring; never use it in production");
        return Ok(Keyring::load_file(path, None)?);
    }
    let (ring, text) = Keyring::generate("dev-1");
    let write_error = |source| KeySourceError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    write_private(path, text.as_bytes()).map_err(write_error)?;
    tracing::warn!(
        path = %path.display(),
        "DEVELOPMENT MODE: GENERATED A NEW ENCRYPTION KEYRING and saved it; tokens stored with it are lost if the file is deleted. Never use it in production"
    );
    Ok(ring)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
