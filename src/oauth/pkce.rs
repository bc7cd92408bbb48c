//! PKCE (RFC 7636) with the S256 method, the only one Hydra accepts.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// A code verifier: 32 random bytes, base64url without padding (43 characters, inside the
/// 43-128 the RFC allows).
pub struct PkceVerifier(SecretString);

impl PkceVerifier {
    pub fn generate() -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system's random source failed");
        Self(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }

    pub fn from_secret(secret: SecretString) -> Self {
        Self(secret)
    }

    /// `BASE64URL(SHA256(ascii(verifier)))`.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.expose_secret().as_bytes()))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    #[test]
    fn matches_the_rfc_example() {
        let v = PkceVerifier::from_secret(SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert_eq!(v.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn generated_verifiers_are_43_url_safe_characters() {
        let v = PkceVerifier::generate();
        let s = v.secret().expose_secret();
        assert_eq!(s.len(), 43);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
