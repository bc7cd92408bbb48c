//! CompleteAuthorization's state, code, error and error_description (split on NUL).
//! The logic and its invariants live in `token_vault::fuzzing::callback_fields`, so the same code is
//! replayed on stable by `cargo test --lib fuzzing`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_vault::fuzzing::callback_fields(data));
