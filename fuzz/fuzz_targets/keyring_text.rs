//! A keyring file (a Kubernetes secret mount).
//! The logic and its invariants live in `token_vault::fuzzing::keyring_text`, so the same code is
//! replayed on stable by `cargo test --lib fuzzing`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_vault::fuzzing::keyring_text(data));
