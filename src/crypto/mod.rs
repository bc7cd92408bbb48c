//! Sealing of secrets at rest: AES-256-GCM with a random 96-bit nonce per value, a key id framed
//! into every value (so several keys can coexist during rotation), and associated data that binds
//! each value to the row and purpose it was written for.

mod keyring;
mod sealed;
mod shared;

pub use keyring::{Key, KeyId, Keyring, KeyringError, DECRYPT_ONLY};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use sealed::SealedParts;
pub use sealed::{sealed_header, sealed_key_id, Aad, Purpose, SealError};
pub use shared::SharedKeyring;
