//! The sealed-value format and the associated data that binds a value to its place.
//!
//! Layout of a sealed value (all of it stored in one BYTEA column):
//!
//! ```text
//! [format version: 1 byte = 1][key id length: 1 byte][key id][nonce: 12 bytes][ciphertext + 16-byte tag]
//! ```
//!
//! Every length is checked before slicing, so a truncated or tampered value is an error, never a
//! panic.

use aes_gcm::{
    aead::{Aead, AeadInPlace, Payload},
    Nonce, Tag,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{KeyId, Keyring};
use crate::connection_key::ConnectionKey;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// What a sealed value is: part of the associated data, so a value can't be moved between
/// columns of the same row either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    AccessToken,
    RefreshToken,
    PkceVerifier,
    /// A ListConnections page token: the position a page ended at, sealed so that a caller
    /// cannot read (or forge) the tenant ids its policy skipped on the way.
    PageToken,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::AccessToken => "access_token",
            Purpose::RefreshToken => "refresh_token",
            Purpose::PkceVerifier => "pkce_verifier",
            Purpose::PageToken => "page_token",
        }
    }
}

/// Associated data: the purpose, tenant, provider and a discriminator of the row (a connection's
/// generation, or a pending authorization's state hash). A value copied to any other row, tenant
/// or column fails to open.
#[derive(Debug, Clone)]
pub struct Aad<'a> {
    pub purpose: Purpose,
    pub tenant_id: &'a str,
    pub provider: &'a str,
    pub discriminator: String,
}

impl<'a> Aad<'a> {
    /// The associated data of a connection's token at `generation`.
    pub fn for_connection(purpose: Purpose, key: &'a ConnectionKey, generation: i64) -> Self {
        Self::for_generation(purpose, key.tenant().as_str(), key.provider().as_str(), generation)
    }

    /// The same from the stored tenant and provider of a row (for `keys rewrap`, which reads
    /// rows, not requests).
    pub fn for_generation(purpose: Purpose, tenant_id: &'a str, provider: &'a str, generation: i64) -> Self {
        Self {
            purpose,
            tenant_id,
            provider,
            discriminator: format!("generation:{generation}"),
        }
    }

    /// A ListConnections page token (`version` of its format). Bound to no row: it is never
    /// stored, only handed to a caller and back.
    pub fn for_page_token(version: &str) -> Self {
        Self {
            purpose: Purpose::PageToken,
            tenant_id: "",
            provider: "",
            discriminator: format!("list_connections:{version}"),
        }
    }

    /// A pending authorization's PKCE verifier, bound to the hash of its state. Defined here,
    /// next to `for_generation`, because both the authorization flow and `keys rewrap` must
    /// build exactly the same bytes.
    pub fn for_pending_verifier(tenant_id: &'a str, provider: &'a str, state_hash: &[u8]) -> Self {
        Self {
            purpose: Purpose::PkceVerifier,
            tenant_id,
            provider,
            discriminator: format!("state:{}", URL_SAFE_NO_PAD.encode(state_hash)),
        }
    }

    /// Length-prefixed fields, so that no two different tuples encode to the same bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.tenant_id.len());
        out.extend_from_slice(b"token-vault/aad/v1");
        for field in [
            self.purpose.label(),
            self.tenant_id,
            self.provider,
            self.discriminator.as_str(),
        ] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    #[error("sealed value is under key {0:?}, which is not in the keyring")]
    UnknownKey(String),
    #[error("sealed value failed authentication (wrong key, wrong row, or tampered)")]
    Authentication,
    #[error("sealed value does not hold UTF-8 text")]
    NotText,
    #[error("encryption failed")]
    Encryption,
}

impl Keyring {
    /// Seals `plaintext` under the active key, bound to `aad`.
    pub fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let (id, key) = self.active();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Encryption)?;
        let aad = aad.encode();
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Encryption)?;
        let id = id.as_str().as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn seal_str(&self, aad: &Aad<'_>, plaintext: &secrecy::SecretString) -> Result<Vec<u8>, SealError> {
        use secrecy::ExposeSecret;
        self.seal(aad, plaintext.expose_secret().as_bytes())
    }

    /// Opens a value sealed by any key of the keyring, checking it belongs to `aad`. The
    /// ciphertext is copied once, into a buffer of exactly the plaintext's size, and decrypted
    /// there, so a caller that keeps the plaintext ([`Self::open_str`], on every cache miss)
    /// takes the buffer over without a second copy. On any failure the buffer is zeroized.
    pub fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let parts = SealedParts::parse(sealed)?;
        let key = self
            .get(parts.key_id)
            .ok_or_else(|| SealError::UnknownKey(parts.key_id.to_owned()))?;
        // `parse` checked that the ciphertext holds at least the tag.
        let (ciphertext, tag) = parts.ciphertext.split_at(parts.ciphertext.len() - TAG_LEN);
        let mut buffer = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
        buffer.extend_from_slice(ciphertext);
        key.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(parts.nonce),
                &aad.encode(),
                &mut buffer,
                Tag::from_slice(tag),
            )
            .map_err(|_| SealError::Authentication)?;
        Ok(buffer)
    }

    /// Opens a sealed text as the secret string handed out, in the buffer [`Self::open`]
    /// decrypted it in.
    pub fn open_str(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<SecretString, SealError> {
        let mut plaintext = self.open(aad, sealed)?;
        match String::from_utf8(std::mem::take(&mut *plaintext)) {
            // The buffer was allocated for exactly the plaintext's length, so the string's
            // conversion to the secret's boxed `str` keeps the same allocation (a shrinking
            // reallocation would leave a copy behind that nothing zeroizes).
            Ok(text) => {
                debug_assert_eq!(text.capacity(), text.len());
                Ok(SecretString::from(text))
            }
            Err(not_text) => {
                drop(Zeroizing::new(not_text.into_bytes()));
                Err(SealError::NotText)
            }
        }
    }
}

/// The framing header that starts every value sealed under `id`: version, id length, id.
/// `keys rewrap` compares stored values' first bytes with it to skip values already under the
/// active key without reading them out of the database.
pub fn sealed_header(id: &KeyId) -> Vec<u8> {
    let id = id.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + id.len());
    out.push(FORMAT_V1);
    // A KeyId is at most 32 bytes (checked when parsed), so its length fits the byte.
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out
}

/// The id of the key a value was sealed under, read from the framing without decrypting (and
/// without needing the key). Only the header is checked: `bytes` may be just the header (as
/// `keys status` reads it from the database) or a whole sealed value.
pub fn sealed_key_id(bytes: &[u8]) -> Result<&str, SealError> {
    split_header(bytes).map(|(id, _)| id)
}

/// Splits `[version][id length][id]` off the front; every length is checked before slicing.
fn split_header(sealed: &[u8]) -> Result<(&str, &[u8]), SealError> {
    let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed("empty"))?;
    if version != FORMAT_V1 {
        return Err(SealError::Malformed("unknown format version"));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(SealError::Malformed("truncated before key id"))?;
    let id_len = usize::from(id_len);
    if id_len == 0 || id_len > KeyId::MAX_LEN {
        return Err(SealError::Malformed("key id length out of range"));
    }
    if rest.len() < id_len {
        return Err(SealError::Malformed("truncated"));
    }
    let (id, rest) = rest.split_at(id_len);
    let key_id = std::str::from_utf8(id).map_err(|_| SealError::Malformed("key id is not UTF-8"))?;
    Ok((key_id, rest))
}

/// The framing of a sealed value, split without copying. Public within the crate so that key
/// status reporting and the fuzz targets can read key ids without decrypting.
pub(crate) struct SealedParts<'a> {
    pub key_id: &'a str,
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> SealedParts<'a> {
    pub fn parse(sealed: &'a [u8]) -> Result<Self, SealError> {
        let (key_id, rest) = split_header(sealed)?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed("truncated"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Ok(Self {
            key_id,
            nonce,
            ciphertext,
        })
    }

    /// The encrypted part, tag included (for the fuzz targets' invariants).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn ciphertext_len(&self) -> usize {
        self.ciphertext.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key;
    use aes_gcm::{aead::KeyInit, Aes256Gcm};

    fn aad(generation: i64) -> Aad<'static> {
        Aad::for_generation(Purpose::RefreshToken, "tenant-a", "understory", generation)
    }

    fn ring(ids: &[&str]) -> Keyring {
        let keys = ids
            .iter()
            .map(|id| (KeyId::parse(id).unwrap(), Key::generate().0))
            .collect();
        Keyring::new(keys, None).unwrap()
    }

    /// NIST SP 800-38D / the GCM specification's test case 16 (256-bit key, 60-byte plaintext,
    /// 20-byte AAD): proves the cipher under the framing is the standard one.
    #[test]
    fn aes_256_gcm_matches_the_nist_vector() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let iv = hex("cafebabefacedbaddecaf888");
        let pt = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let expected = hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
76fc6ece0f4e1768cddf8853bb2d551b");
        let cipher = Aes256Gcm::new_from_slice(&key).unwrap();
        let out = cipher
            .encrypt(Nonce::from_slice(&iv), Payload { msg: &pt, aad: &aad })
            .unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn round_trips_and_frames_the_key_id() {
        let ring = ring(&["k1"]);
        let sealed = ring.seal(&aad(3), b"ory_rt_secret").unwrap();
        assert_eq!(SealedParts::parse(&sealed).unwrap().key_id, "k1");
        assert!(!sealed.windows(13).any(|w| w == b"ory_rt_secret"));
        assert_eq!(ring.open(&aad(3), &sealed).unwrap().as_slice(), b"ory_rt_secret");
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let ring = ring(&["k1"]);
        assert_ne!(ring.seal(&aad(1), b"x").unwrap(), ring.seal(&aad(1), b"x").unwrap());
    }

    #[test]
    fn another_row_or_purpose_fails_to_open() {
        let ring = ring(&["k1"]);
        let sealed = ring.seal(&aad(3), b"token").unwrap();
        assert_eq!(ring.open(&aad(4), &sealed).unwrap_err(), SealError::Authentication);
        let other_tenant = Aad::for_generation(Purpose::RefreshToken, "tenant-b", "understory", 3);
        assert_eq!(
            ring.open(&other_tenant, &sealed).unwrap_err(),
            SealError::Authentication
        );
        let other_purpose = Aad::for_generation(Purpose::AccessToken, "tenant-a", "understory", 3);
        assert_eq!(
            ring.open(&other_purpose, &sealed).unwrap_err(),
            SealError::Authentication
        );
    }

    #[test]
    fn a_wrong_key_with_the_same_id_fails_authentication() {
        let sealed = ring(&["k1"]).seal(&aad(1), b"token").unwrap();
        assert_eq!(
            ring(&["k1"]).open(&aad(1), &sealed).unwrap_err(),
            SealError::Authentication
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let sealed = ring(&["old"]).seal(&aad(1), b"token").unwrap();
        assert_eq!(
            ring(&["new"]).open(&aad(1), &sealed).unwrap_err(),
            SealError::UnknownKey("old".into())
        );
    }

    #[test]
    fn the_newest_key_seals_and_all_keys_open() {
        let old = ring(&["old"]);
        let sealed_old = old.seal(&aad(1), b"a").unwrap();
        let (old_id, old_key) = old.active();
        let both = Keyring::new(
            vec![
                (old_id.clone(), old_key.clone()),
                (KeyId::parse("new").unwrap(), Key::generate().0),
            ],
            None,
        )
        .unwrap();
        assert_eq!(both.active().0.as_str(), "new");
        assert_eq!(both.open(&aad(1), &sealed_old).unwrap().as_slice(), b"a");
        let sealed_new = both.seal(&aad(1), b"b").unwrap();
        assert_eq!(SealedParts::parse(&sealed_new).unwrap().key_id, "new");
    }

    /// Asserts that `opens` refuses every truncation of `sealed` and every single bit flip in it.
    fn assert_every_truncation_and_bit_flip_fails(sealed: &[u8], opens: impl Fn(&[u8]) -> bool) {
        for len in 0..sealed.len() {
            assert!(!opens(&sealed[..len]), "truncated to {len}");
        }
        for i in 0..sealed.len() {
            let mut tampered = sealed.to_vec();
            tampered[i] ^= 0x01;
            assert!(!opens(&tampered), "bit flipped at {i}");
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
        let ring = ring(&["k1"]);
        let sealed = ring.seal(&aad(1), b"some token value").unwrap();
        assert_every_truncation_and_bit_flip_fails(&sealed, |bytes| ring.open(&aad(1), bytes).is_ok());
    }

    /// `open_str`, which the cache-miss path calls, is held to `open`'s checks on its own: text
    /// of any length round-trips (the string keeps the decryption's exact-size buffer), bytes
    /// that are not UTF-8 are refused, and every wrong key, row, truncation or bit flip is an
    /// error.
    #[test]
    fn open_str_round_trips_text_and_refuses_everything_else() {
        use secrecy::ExposeSecret;
        let k1 = ring(&["k1"]);
        for text in ["", "t", "ory_at_\u{e9}\u{1f511}", &"x".repeat(900)] {
            let sealed = k1.seal(&aad(2), text.as_bytes()).unwrap();
            assert_eq!(k1.open_str(&aad(2), &sealed).unwrap().expose_secret(), text);
        }
        let not_text = k1.seal(&aad(2), &[0x66, 0xff, 0x66]).unwrap();
        assert_eq!(k1.open_str(&aad(2), &not_text).unwrap_err(), SealError::NotText);

        let sealed = k1.seal(&aad(2), b"some token value").unwrap();
        assert_eq!(k1.open_str(&aad(3), &sealed).unwrap_err(), SealError::Authentication);
        assert_eq!(
            ring(&["k1"]).open_str(&aad(2), &sealed).unwrap_err(),
            SealError::Authentication
        );
        assert_eq!(
            ring(&["k2"]).open_str(&aad(2), &sealed).unwrap_err(),
            SealError::UnknownKey("k1".into())
        );
        assert_every_truncation_and_bit_flip_fails(&sealed, |bytes| k1.open_str(&aad(2), bytes).is_ok());
    }

    #[test]
    fn keyring_text_parses_and_rejects_bad_lines() {
        let (_, text) = Keyring::generate("dev");
        let ring = Keyring::parse(&format!("# comment\n{}", text.as_str()), None).unwrap();
        assert_eq!(ring.active().0.as_str(), "dev");
        assert!(matches!(
            Keyring::parse("nocolon", None),
            Err(KeyringError::Malformed { line: 1 })
        ));
        assert!(matches!(
            Keyring::parse("k:AAAA", None),
            Err(KeyringError::InvalidKeyLength(3))
        ));
        assert!(matches!(
            Keyring::parse("bad id:AAAA", None),
            Err(KeyringError::InvalidKeyId(_))
        ));
        assert!(matches!(Keyring::parse("", None), Err(KeyringError::Empty)));
        assert!(matches!(
            Keyring::parse(text.as_str(), Some("other")),
            Err(KeyringError::UnknownActiveKey(_))
        ));
        assert!(!format!("{ring:?}").contains(text.split(':').nth(1).unwrap().trim()));
    }

    #[test]
    fn a_decrypt_only_key_opens_but_never_seals() {
        let (old, old_line) = Keyring::generate("old");
        let new_line = Keyring::generate_line("new", true).unwrap();
        assert!(new_line.trim_end().ends_with(" decrypt-only"), "one line, marked");
        let (sealed_by_new, _) = Keyring::parse(&new_line.replace(" decrypt-only", ""), None)
            .map(|ring| (ring.seal(&aad(1), b"b").unwrap(), ring))
            .unwrap();

        // Listed last, yet the old key stays active: the new one only opens.
        let ring = Keyring::parse(&format!("{}{}", old_line.as_str(), new_line.as_str()), None).unwrap();
        assert_eq!(ring.active().0.as_str(), "old");
        assert!(ring.is_decrypt_only("new") && !ring.is_decrypt_only("old"));
        assert_eq!(ring.open(&aad(1), &sealed_by_new).unwrap().as_slice(), b"b");
        let sealed = ring.seal(&aad(1), b"a").unwrap();
        assert_eq!(SealedParts::parse(&sealed).unwrap().key_id, "old");
        assert_eq!(old.open(&aad(1), &sealed).unwrap().as_slice(), b"a");

        // The marker removed: the new key is active, the old one still opens.
        let activated = Keyring::parse(
            &format!("{}{}", old_line.as_str(), new_line.replace(" decrypt-only", "")),
            None,
        )
        .unwrap();
        assert_eq!(activated.active().0.as_str(), "new");
        assert_eq!(activated.decrypt_only_ids().count(), 0);
        assert_eq!(activated.open(&aad(1), &sealed).unwrap().as_slice(), b"a");
    }

    #[test]
    fn a_decrypt_only_key_cannot_be_made_active() {
        let (_, a) = Keyring::generate("a");
        let b = Keyring::generate_line("b", true).unwrap();
        let text = format!("{}{}", a.as_str(), b.as_str());
        assert!(matches!(
            Keyring::parse(&text, Some("b")),
            Err(KeyringError::ActiveKeyDecryptOnly(id)) if id.as_str() == "b"
        ));
        assert_eq!(Keyring::parse(&text, Some("a")).unwrap().active().0.as_str(), "a");
        assert!(matches!(
            Keyring::parse(b.as_str(), None),
            Err(KeyringError::NoSealingKey)
        ));
    }

    #[test]
    fn only_decrypt_only_may_follow_a_key_and_the_rest_is_not_shown() {
        let (_, a) = Keyring::generate("a");
        let (_, b) = Keyring::generate("b");
        let b64 = b.trim().split_once(':').unwrap().1;
        // A space inside the base64 leaves key material where the marker goes.
        let (head, tail) = b64.split_at(20);
        for line in [
            format!("b:{head} {tail}"),
            format!("b:{b64} decrypt-only extra"),
            format!("b:{b64} decrypt_only"),
        ] {
            let err = Keyring::parse(&format!("{}{line}\n", a.as_str()), None).unwrap_err();
            assert!(matches!(err, KeyringError::UnknownMarker { line: 2 }), "{err:?}");
            assert!(!err.to_string().contains(tail) && !format!("{err:?}").contains(tail));
        }
    }

    /// The AES key schedule each `Key` holds is wiped when the key is dropped (the `zeroize`
    /// features in Cargo.toml): a key retired from a reloaded keyring leaves no round keys
    /// behind. A compile-time check: without the feature this does not build.
    #[test]
    fn aes_round_keys_are_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes_gcm::aes::Aes256>();
    }

    #[test]
    fn the_key_id_is_read_from_the_header_alone() {
        let ring = ring(&["k-7"]);
        let sealed = ring.seal(&aad(1), b"token").unwrap();
        let header = sealed_header(ring.active().0);
        assert!(sealed.starts_with(&header));
        assert_eq!(sealed_key_id(&header), Ok("k-7"));
        assert_eq!(sealed_key_id(&sealed), Ok("k-7"));
        assert!(sealed_key_id(&header[..3]).is_err());
        assert!(sealed_key_id(&[]).is_err());
        assert!(sealed_key_id(&[2, 1, b'a']).is_err());
        assert!(sealed_key_id(&[1, 0]).is_err());
        assert!(sealed_key_id(&[1, 33]).is_err());
        assert!(sealed_key_id(&[1, 1, 0xff]).is_err());
    }

    /// The verifier's associated data must stay byte for byte what `BeginAuthorization` has
    /// always written, or every pending authorization would fail to open after an upgrade.
    #[test]
    fn the_pending_verifier_aad_is_stable() {
        let aad = Aad::for_pending_verifier("t", "p", &[0xfb, 0xff]);
        assert_eq!(aad.purpose, Purpose::PkceVerifier);
        assert_eq!(aad.discriminator, "state:-_8");
    }

    use crate::crypto::KeyringError;
}
