//! Every key id that protects a stored value is in the keyring (`keys::key_usage`, read from
//! the values' framing, nothing decrypted). A missing id means values that cannot be opened:
//! the keyring lost a key that a rewrap had not yet moved values off.

use super::Check;
use crate::{
    config::{Mode, Settings},
    crypto::Keyring,
    keys,
    store::Store,
};

pub async fn check(settings: &Settings, store: Option<&Store>) -> Check {
    const NAME: &str = "keyring";
    let keyring = match configured_keyring(settings) {
        Ok(k) => k,
        Err(e) => return Check::fail(NAME, e),
    };
    let Some(store) = store else {
        return Check::skip(NAME, "the database was not reached to count the stored values");
    };
    let usage = match keys::key_usage(store).await {
        Ok(u) => u,
        Err(e) => return Check::fail(NAME, format!("cannot count the stored values by key: {e}")),
    };
    let stored: i64 = usage.totals().map(|(_, n)| n).sum();
    let Some(keyring) = keyring else {
        return if stored == 0 {
            Check::pass(
                NAME,
                "no keyring yet: development mode generates one when the vault starts",
            )
        } else {
            Check::fail(
                NAME,
                format!("{stored} stored values but no keyring configured or generated"),
            )
        };
    };
    let mut problems: Vec<String> = usage
        .missing_from(&keyring)
        .into_iter()
        .map(|(id, n)| format!("key id {id} protects {n} stored value(s) but is not in the keyring"))
        .collect();
    if usage.malformed() > 0 {
        problems.push(format!(
            "{} stored value(s) have an unreadable framing and cannot be opened",
            usage.malformed()
        ));
    }
    if problems.is_empty() {
        Check::pass(
            NAME,
            format!(
                "every key id protecting the {stored} stored value(s) is in the keyring; active key {}",
                keyring.active().0
            ),
        )
    } else {
        Check::fail(NAME, problems.join("; "))
    }
}

/// The keyring the vault would start with, without generating one: in development mode with
/// no keyring configured, the generated file if it exists yet.
fn configured_keyring(settings: &Settings) -> Result<Option<Keyring>, String> {
    let encryption = &settings.encryption;
    if encryption.keyring_file.is_some() || encryption.keyring.is_some() || settings.mode == Mode::Production {
        return keys::load_keyring(encryption, settings.mode)
            .map(|loaded| Some(loaded.keyring))
            .map_err(|e| e.to_string());
    }
    let path = &encryption.development_keyring_file;
    if !path.exists() {
        return Ok(None);
    }
    Keyring::load_file(path, None).map(Some).map_err(|e| e.to_string())
}
