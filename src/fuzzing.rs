//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for their replay on
//! stable (the tests below): the parsers that read hostile bytes. Each function feeds its input
//! to one parser and panics only if an invariant breaks, which is what a fuzzer reports.
//!
//! Not an API: hidden from the docs, free to change with the targets, and compiled only for
//! tests and the `fuzzing` feature, never into the service.

use std::sync::OnceLock;

use secrecy::{ExposeSecret, SecretString};

use crate::{
    crypto::{sealed_key_id, Aad, Key, KeyId, Keyring, Purpose, SealError, SealedParts},
    oauth::{
        parse_token_response, CallbackOutcome, CallbackParams, TokenError, TokenResponse, MAX_ERROR_DESCRIPTION_LEN,
        MAX_ERROR_LEN, MAX_EXPIRES_IN, MAX_PARAM_LEN,
    },
};

/// A fuzz target: takes any bytes, panics only on a broken invariant.
pub type Target = fn(&[u8]);

/// The names of the targets, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: [(&str, Target); 6] = [
    ("callback_url", callback_url),
    ("callback_fields", callback_fields),
    ("token_response", token_response),
    ("token_error_response", token_error_response),
    ("sealed_value", sealed_value),
    ("keyring_text", keyring_text),
];

/// `CompleteAuthorization(callback_url)`: the URL the provider redirected the browser to.
pub fn callback_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match CallbackParams::from_url(&text) {
        Ok(params) => check_callback(&params),
        Err(e) => assert!(e.field.starts_with("callback_url"), "{e}"),
    }
}

/// `CompleteAuthorization(state, code, error, error_description)`: four fields, split on NUL.
pub fn callback_fields(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or("");
    let (state, code, error, description) = (next(), next(), next(), next());
    match CallbackParams::from_fields(state, code, error, description) {
        Ok(params) => check_callback(&params),
        Err(e) => assert!(
            ["state", "code", "error", "error_description"].contains(&e.field),
            "{e}"
        ),
    }
}

fn check_callback(params: &CallbackParams) {
    let fine = |v: &str, max: usize| !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control);
    assert!(fine(&params.state, MAX_PARAM_LEN));
    match &params.outcome {
        CallbackOutcome::Code(code) => {
            assert!(fine(code.expose_secret(), MAX_PARAM_LEN));
            // The code is a secret: Debug output must not depend on it at all. (Searching the
            // output for the code gives false alarms: a code of `"` matches a closing quote.)
            let other = CallbackParams {
                state: params.state.clone(),
                outcome: CallbackOutcome::Code(SecretString::from("another-code")),
            };
            assert_eq!(
                format!("{params:?}"),
                format!("{other:?}"),
                "the code leaked into Debug"
            );
        }
        CallbackOutcome::Error { error, description } => {
            assert!(fine(error, MAX_ERROR_LEN));
            if let Some(d) = description {
                assert!(fine(d, MAX_ERROR_DESCRIPTION_LEN));
            }
        }
    }
}

/// A token endpoint's 2xx answer (RFC 6749 §5.1).
pub fn token_response(data: &[u8]) {
    match parse_token_response(data) {
        Ok(r) => {
            assert!(!r.access_token.expose_secret().is_empty());
            assert!(!r.token_type.is_empty() && r.token_type.len() <= 64);
            let lifetime = r.expires_in.unwrap_or_default();
            assert!(lifetime <= MAX_EXPIRES_IN);
            // What the vault does with it next must not overflow.
            assert!(time::OffsetDateTime::now_utc()
                .checked_add(lifetime.try_into().unwrap_or(time::Duration::MAX))
                .is_some());
            if let Some(scopes) = &r.scope {
                assert!(!scopes.is_empty());
                assert!(scopes
                    .iter()
                    .all(|s| !s.is_empty() && !s.contains(|c: char| c.is_ascii_whitespace())));
            }
            // Debug output must not depend on the tokens at all.
            let other = TokenResponse {
                access_token: SecretString::from("another-access-token"),
                refresh_token: r
                    .refresh_token
                    .as_ref()
                    .map(|_| SecretString::from("another-refresh-token")),
                token_type: r.token_type.clone(),
                expires_in: r.expires_in,
                scope: r.scope.clone(),
                refresh_token_expires_in: r.refresh_token_expires_in,
            };
            assert_eq!(format!("{r:?}"), format!("{other:?}"), "a token leaked into Debug");
        }
        Err(e) => assert!(matches!(e, TokenError::Protocol(_)), "{e:?}"),
    }
}

/// A token endpoint's error answer: the first two bytes pick the HTTP status (400 to 599).
pub fn token_error_response(data: &[u8]) {
    let (status, body) = match data {
        [a, b, body @ ..] => (400 + u16::from_be_bytes([*a, *b]) % 200, body),
        _ => (400, data),
    };
    match TokenError::from_error_response(status, body, None) {
        TokenError::InvalidGrant(e) | TokenError::ClientRejected(e) => {
            assert!(status < 500 && status != 429);
            check_oauth_error(&e.error, e.description.as_deref());
        }
        TokenError::Transient { http_status, .. } => assert_eq!(http_status, Some(status)),
        TokenError::Ambiguous { http_status, .. } => {
            assert!(status < 500 && status != 429);
            assert_eq!(http_status, Some(status));
        }
        // The message reaches logs: it must stay short whatever the body was.
        TokenError::Protocol(message) => {
            assert!(status < 500 && status != 429);
            assert!(message.len() <= 2048, "{} bytes", message.len());
            assert!(!message.contains(|c: char| c.is_control()));
        }
    }
}

fn check_oauth_error(error: &str, description: Option<&str>) {
    assert!(error.chars().count() <= 64 && !error.contains(|c: char| c.is_control()));
    if let Some(d) = description {
        assert!(d.chars().count() <= 256 && !d.contains(|c: char| c.is_control()));
    }
}

/// The fixed keyring the sealed-value target opens with (two keys, as during a rotation).
fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let key = |byte: u8, id: &str| {
            let id = KeyId::parse(id).unwrap_or_else(|e| panic!("fixed key id: {e}"));
            let key = Key::from_bytes(&[byte; 32]).unwrap_or_else(|e| panic!("fixed key: {e}"));
            (id, key)
        };
        Keyring::new(vec![key(1, "fuzz-old"), key(2, "fuzz-new")], None)
            .unwrap_or_else(|e| panic!("fixed keyring: {e}"))
    })
}

/// A stored value as read from the database: framing, then opening with the keyring. Also seals
/// the input as plaintext and opens it again.
pub fn sealed_value(data: &[u8]) {
    let ring = keyring();
    let aad = Aad::for_generation(Purpose::AccessToken, "tenant", "provider", 1);
    match SealedParts::parse(data) {
        Ok(parts) => {
            assert!((1..=KeyId::MAX_LEN).contains(&parts.key_id.len()));
            assert!(parts.ciphertext_len() >= 16);
            assert_eq!(sealed_key_id(data), Ok(parts.key_id));
        }
        Err(e) => assert_eq!(ring.open(&aad, data).err(), Some(e)),
    }
    // Forging a value is what AES-GCM prevents; a fuzzer finding one would be news.
    assert!(ring.open(&aad, data).is_err(), "an unsealed input opened");

    let sealed = ring.seal(&aad, data).unwrap_or_else(|e| panic!("sealing failed: {e}"));
    assert_eq!(sealed_key_id(&sealed), Ok("fuzz-new"));
    let opened = ring
        .open(&aad, &sealed)
        .unwrap_or_else(|e| panic!("opening failed: {e}"));
    assert_eq!(opened.as_slice(), data);
    // A cache miss opens text with `open_str`, which takes over `open`'s buffer: the two must
    // agree, on the raw input (the same error) and on its sealed form (the text, or `NotText`).
    assert_eq!(ring.open_str(&aad, data).err(), ring.open(&aad, data).err());
    match (std::str::from_utf8(data), ring.open_str(&aad, &sealed)) {
        (Ok(text), Ok(opened)) => assert_eq!(opened.expose_secret(), text),
        (Err(_), Err(e)) => assert_eq!(e, SealError::NotText),
        (text, opened) => panic!(
            "open_str disagrees with open: input UTF-8 {}, open_str succeeded {}",
            text.is_ok(),
            opened.is_ok()
        ),
    }
    let other_row = Aad::for_generation(Purpose::AccessToken, "tenant", "provider", 2);
    assert!(ring.open(&other_row, &sealed).is_err());
    if let Some(cut) = sealed.len().checked_sub(1 + data.len() % 16) {
        assert!(ring.open(&aad, &sealed[..cut]).is_err());
    }
}

/// A keyring file (a Kubernetes secret mount): parsed, never echoed.
pub fn keyring_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Keyring::parse(&text, None) {
        Ok(ring) => {
            let (active, _) = ring.active();
            assert!(ring.get(active.as_str()).is_some());
        }
        Err(e) => {
            // Errors are logged; they may name a short key id, never a key's bytes: no run of
            // base64 longer than an id may be echoed. (Other text may be: the input can contain
            // the very words of the message, in a comment.)
            let message = e.to_string();
            let is_base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
            for part in text.split(|c: char| !is_base64(c)) {
                if part.len() > KeyId::MAX_LEN {
                    assert!(!message.contains(part), "key material in an error: {message}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Runs every target on stable: each seed in `fuzz/corpus/<target>/`, then a few thousand
    //! deterministic mutations of the seeds. Not a fuzzer (no coverage feedback), but it keeps
    //! the targets compiling and exercised in CI, and replays any crash saved to the corpus.

    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::TARGETS;

    const MUTATIONS_PER_TARGET: usize = 4000;

    /// SplitMix64: tiny and stable across versions, so a failing case can be found again.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Fragments that tend to matter to these parsers.
    const DICTIONARY: &[&[u8]] = &[
        b"%",
        b"%00",
        b"%FF",
        b"%0A",
        b"&",
        b"=",
        b"?",
        b"#",
        b"state=",
        b"code=",
        b"error=",
        b"error_description=",
        b"\"",
        b"\\u0000",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"null",
        b"1e400",
        b"-1",
        b"18446744073709551615",
        b"\"expires_in\":",
        b"\"access_token\":",
        b"\"scope\":",
        b"\"token_type\":",
        b"\"error\":",
        b"\x00",
        b"\x01",
        b"\x01\x20",
        b"\xff",
        b"\xc3\x28",
        b"\n",
        b"http://",
        b"https://[::1]/",
        b"fuzz-old:",
        b"fuzz-new",
    ];

    fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(data.len() + 1);
            match rng.below(7) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
                1 if !data.is_empty() => {
                    let end = (at + 1 + rng.below(16)).min(data.len());
                    data.drain(at.min(end)..end);
                }
                2 => {
                    let word = DICTIONARY[rng.below(DICTIONARY.len())];
                    data.splice(at..at, word.iter().copied());
                }
                3 => data.insert(at, rng.next() as u8),
                4 => {
                    let other = &seeds[rng.below(seeds.len())];
                    let from = rng.below(other.len() + 1);
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
                5 if !data.is_empty() => {
                    // Repeat a slice, to reach length limits.
                    let end = (at + 1 + rng.below(64)).min(data.len());
                    let chunk = data[at.min(end)..end].to_vec();
                    for _ in 0..rng.below(300) {
                        data.splice(at..at, chunk.iter().copied());
                    }
                }
                _ => data.truncate(at),
            }
        }
        data
    }

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    #[test]
    fn every_target_survives_its_corpus_and_mutations_of_it() {
        for (name, target) in TARGETS {
            let seeds = corpus(name);
            assert!(seeds.len() >= 3, "{name}: the seed corpus is missing");
            for seed in &seeds {
                target(seed);
            }
            let mut rng = Rng(0x7043_6b65_6e56_6175 ^ name.len() as u64);
            for i in 0..MUTATIONS_PER_TARGET {
                let input = mutate(&mut rng, &seeds);
                let outcome = std::panic::catch_unwind(|| target(&input));
                assert!(
                    outcome.is_ok(),
                    "{name}: mutation {i} panicked; input (hex) {}",
                    input.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
        }
    }
}
