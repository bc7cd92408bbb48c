//! Recognising a caller's credentials: the subject alternative names of a client certificate
//! that TLS already verified against `tls.client_ca_file`, or a bearer token whose SHA-256 is
//! compared in constant time with the configured hashes. The token itself is never kept.

use http::HeaderMap;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The SHA-256 of a bearer token, as configured and as computed from a request.
pub type TokenHash = [u8; 32];

/// The hash of `token`; what `printf %s "$token" | sha256sum` prints, in bytes.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads a configured hash: exactly 64 hex digits, as `sha256sum` prints. Hex only, because a
/// base64 reading would also accept many plaintext tokens (a random 32-byte token in base64 is
/// valid base64 of 32 bytes), and a token pasted here by mistake must be refused, not stored.
pub fn parse_token_hash(text: &str) -> Option<TokenHash> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Which configured entry `presented` matches, looking at every entry whatever the outcome, so
/// the time taken says nothing about which hash (or how much of one) matched.
pub fn match_token(configured: &[(TokenHash, usize)], presented: &TokenHash) -> Option<usize> {
    // 0 means no match; entry i is stored as i + 1.
    let mut found = 0u64;
    for (i, (hash, _)) in configured.iter().enumerate() {
        let candidate = i as u64 + 1;
        found = u64::conditional_select(&found, &candidate, hash.ct_eq(presented));
    }
    let index = usize::try_from(found).ok()?.checked_sub(1)?;
    configured.get(index).map(|(_, caller)| *caller)
}

/// The names a verified client certificate offers to identify its caller: the URI and then the
/// DNS subject alternative names of the end-entity certificate (the first of the chain), or why
/// it offers none. Read once per connection, when its TLS handshake ends (`crate::listener`),
/// since the chain cannot change for the connection's life; each call then only looks the
/// names up in the current policy, so a reloaded policy applies to the next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateNames {
    /// In the order they are tried; or the detail a refusal records.
    names: Result<Vec<(SanKind, String)>, String>,
}

impl CertificateNames {
    pub fn read(chain: &[CertificateDer<'_>]) -> Self {
        let names = match chain.first() {
            None => Err("empty certificate chain".to_owned()),
            Some(leaf) => match webpki::EndEntityCert::try_from(leaf) {
                Err(_) => Err("unparsable client certificate".to_owned()),
                Ok(cert) => Ok(cert
                    .valid_uri_names()
                    .map(|uri| (SanKind::Uri, uri.to_owned()))
                    .chain(cert.valid_dns_names().map(|dns| (SanKind::Dns, dns.to_owned())))
                    .collect()),
            },
        };
        Self { names }
    }

    /// The caller index `lookup` gives the first name that names a caller; else the refusal's
    /// detail, naming the certificate's first name.
    pub fn find(&self, lookup: impl Fn(SanKind, &str) -> Option<usize>) -> Result<usize, String> {
        let names = self.names.as_ref().map_err(Clone::clone)?;
        if let Some(found) = names.iter().find_map(|(kind, name)| lookup(*kind, name)) {
            return Ok(found);
        }
        Err(match names.first() {
            Some((SanKind::Uri, uri)) => format!("certificate uri:{uri}"),
            Some((SanKind::Dns, dns)) => format!("certificate dns:{dns}"),
            None => "certificate without URI or DNS names".to_owned(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Uri,
    Dns,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_read_as_hex_only() {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let hash = hash_token("s3cret");
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_token_hash(&hex), Some(hash));
        assert_eq!(parse_token_hash(&hex.to_uppercase()), Some(hash));
        // A random token in base64 looks like base64 of 32 bytes: it must not pass as a hash.
        assert_eq!(parse_token_hash(&STANDARD.encode(hash)), None);
        assert_eq!(parse_token_hash("s3cret"), None);
        assert_eq!(parse_token_hash(&hex[..62]), None);
    }

    #[test]
    fn the_hash_is_sha256sum() {
        // printf %s abc | sha256sum
        let expected = parse_token_hash("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap();
        assert_eq!(hash_token("abc"), expected);
    }

    #[test]
    fn tokens_match_their_own_entry_only() {
        let configured = vec![(hash_token("a"), 7), (hash_token("b"), 9)];
        assert_eq!(match_token(&configured, &hash_token("a")), Some(7));
        assert_eq!(match_token(&configured, &hash_token("b")), Some(9));
        assert_eq!(match_token(&configured, &hash_token("c")), None);
        assert_eq!(match_token(&[], &hash_token("c")), None);
    }

    #[test]
    fn bearer_headers_are_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }

    fn certificate(dns: &[&str], uris: &[&str]) -> Vec<CertificateDer<'static>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        vec![params.self_signed(&key).unwrap().der().clone()]
    }

    #[test]
    fn a_certificate_names_its_caller_by_uri_first_then_dns() {
        let names = CertificateNames::read(&certificate(&["a.svc", "b.svc"], &["spiffe://c/x", "spiffe://c/y"]));
        let lookup = |known: &'static [(SanKind, &'static str, usize)]| {
            move |kind: SanKind, name: &str| known.iter().find(|(k, n, _)| *k == kind && *n == name).map(|e| e.2)
        };
        // A URI wins over a DNS name, whatever their order in the policy.
        assert_eq!(
            names.find(lookup(&[(SanKind::Dns, "a.svc", 1), (SanKind::Uri, "spiffe://c/y", 2)])),
            Ok(2)
        );
        assert_eq!(names.find(lookup(&[(SanKind::Dns, "b.svc", 3)])), Ok(3));
        // A name of the wrong kind names nobody.
        assert_eq!(
            names.find(lookup(&[(SanKind::Dns, "spiffe://c/x", 4), (SanKind::Uri, "a.svc", 5)])),
            Err("certificate uri:spiffe://c/x".to_owned())
        );
        let dns_only = CertificateNames::read(&certificate(&["a.svc"], &[]));
        assert_eq!(dns_only.find(|_, _| None), Err("certificate dns:a.svc".to_owned()));
        assert_eq!(dns_only.find(lookup(&[(SanKind::Dns, "a.svc", 6)])), Ok(6));
    }

    #[test]
    fn a_chain_without_usable_names_says_why() {
        let none = CertificateNames::read(&certificate(&[], &[]));
        assert_eq!(
            none.find(|_, _| Some(0)),
            Err("certificate without URI or DNS names".to_owned())
        );
        assert_eq!(
            CertificateNames::read(&[]).find(|_, _| Some(0)),
            Err("empty certificate chain".to_owned())
        );
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff])];
        assert_eq!(
            CertificateNames::read(&garbage).find(|_, _| Some(0)),
            Err("unparsable client certificate".to_owned())
        );
    }
}
