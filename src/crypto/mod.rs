//! Sealing of secrets at rest: AES-256-GCM with a random 96-bit nonce per value, a key id framed
//! into every value (so several keys can coexist during rotation), and associated data that binds
//! each value to the row and purpose it was written for.

mod keyring;
mod sealed;

pub use keyring::{Key, KeyId, Keyring, KeyringError};
pub use sealed::{Aad, Purpose, SealError};
