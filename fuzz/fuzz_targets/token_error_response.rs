//! A token endpoint's error answer; the first two bytes pick the HTTP status.
//! The logic and its invariants live in `token_vault::fuzzing::token_error_response`, so the same code is
//! replayed on stable by `cargo test --lib fuzzing`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_vault::fuzzing::token_error_response(data));
