//! A sealed value as read from the database: framing, key lookup, AES-GCM opening.
//! The logic and its invariants live in `token_vault::fuzzing::sealed_value`, so the same code is
//! replayed on stable by `cargo test --lib fuzzing`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_vault::fuzzing::sealed_value(data));
