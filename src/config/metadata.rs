//! An authorization server's metadata (RFC 8414 §2, OpenID Connect Discovery 1.0 §3), as far as
//! the vault uses it, and the rules for which URLs may carry it. `oauth::discovery` fetches the
//! document; `ProviderSettings::resolve_discovered` checks the settings against it.

use serde::Deserialize;
use url::{Host, Url};

/// The fields of the metadata document the vault reads; others are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerMetadata {
    /// Must equal the configured issuer exactly (RFC 8414 §3.3), or the document is someone
    /// else's.
    pub issuer: String,
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    /// RFC 8414 §2: when absent, `client_secret_basic` is the default.
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// RFC 8414 §2: when absent, PKCE may still be supported; only a list without S256 is a
    /// refusal.
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// RECOMMENDED but often partial (Google lists only the OpenID scopes): a scope missing here
    /// is a warning.
    pub scopes_supported: Option<Vec<String>>,
}

/// Whether a URL may carry discovery or an endpoint it names: `https`, or `http` to a loopback
/// address (a local authorization server, the test suites), where no network lies between.
pub fn is_secure_or_loopback(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// The places the metadata of `issuer` is published, in the order they are tried: RFC 8414 §3.1
/// (the well-known segment inserted before the issuer's path), then OpenID Connect Discovery
/// §4.1 (appended to it).
pub fn well_known_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut oauth = issuer.clone();
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut openid = issuer.clone();
    openid.set_path(&format!("{path}/.well-known/openid-configuration"));
    vec![oauth, openid]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_insert_and_append() {
        let urls = |issuer: &str| -> Vec<String> {
            well_known_urls(&issuer.parse().unwrap())
                .into_iter()
                .map(String::from)
                .collect()
        };
        assert_eq!(
            urls("https://as.example"),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            urls("https://as.example/tenant/1/"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example/tenant/1/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn only_https_or_loopback_http() {
        for (url, ok) in [
            ("https://as.example", true),
            ("http://127.0.0.1:4444", true),
            ("http://[::1]:4444", true),
            ("http://localhost:4444", true),
            ("http://as.example", false),
            ("http://10.0.0.1", false),
            ("ftp://as.example", false),
        ] {
            assert_eq!(is_secure_or_loopback(&url.parse().unwrap()), ok, "{url}");
        }
    }
}
