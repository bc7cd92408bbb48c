//! A token endpoint's 2xx answer (RFC 6749 §5.1).
//! The logic and its invariants live in `token_vault::fuzzing::token_response`, so the same code is
//! replayed on stable by `cargo test --lib fuzzing`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_vault::fuzzing::token_response(data));
