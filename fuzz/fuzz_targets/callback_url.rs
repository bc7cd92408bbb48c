//! CompleteAuthorization's callback_url: the URL the provider redirected the browser to.
//! The logic and its invariants live in `token_vault::fuzzing::callback_url`, so the same code is
//! replayed on stable by `cargo test --lib fuzzing`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_vault::fuzzing::callback_url(data));
