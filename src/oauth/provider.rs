//! The authorization URL and the requested scopes, built from a provider's resolved
//! configuration (`config::ProviderConfig`, which `config` validates).

use url::Url;

pub use crate::config::{is_valid_scope, AuthMethod, ProviderConfig};

/// What one authorization request asks for.
pub struct AuthorizationRequest<'a> {
    pub redirect_uri: &'a Url,
    pub scopes: &'a [String],
    pub state: &'a str,
    pub code_challenge: Option<&'a str>,
}

impl ProviderConfig {
    /// The scopes to request: the caller's (or the defaults), plus the offline scope that makes
    /// the provider issue a refresh token, without duplicates, in a stable order.
    pub fn requested_scopes(&self, asked: &[String]) -> Vec<String> {
        let base = if asked.is_empty() { &self.default_scopes } else { asked };
        let mut scopes: Vec<String> = Vec::with_capacity(base.len() + 1);
        for scope in self.offline_scope.iter().chain(base.iter()) {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        scopes
    }

    /// The registered redirect URI matching `asked` exactly, or the only one when `asked` is
    /// empty. Exact string comparison, as RFC 9700 §4.1.3 requires.
    pub fn redirect_uri(&self, asked: &str) -> Option<&Url> {
        if asked.is_empty() {
            return match self.redirect_uris.as_slice() {
                [only] => Some(only),
                _ => None,
            };
        }
        self.redirect_uris.iter().find(|u| u.as_str() == asked).or_else(|| {
            // `Url` normalises (e.g. adds a trailing slash to a bare host); compare the
            // caller's text normalised the same way too.
            let parsed = Url::parse(asked).ok()?;
            self.redirect_uris.iter().find(|u| **u == parsed)
        })
    }

    /// The provider's authorization URL for one request.
    pub fn authorization_url(&self, req: &AuthorizationRequest<'_>) -> Url {
        let mut url = self.authorization_endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code");
            q.append_pair("client_id", &self.client_id);
            q.append_pair("redirect_uri", req.redirect_uri.as_str());
            q.append_pair("scope", &req.scopes.join(" "));
            q.append_pair("state", req.state);
            if let Some(audience) = &self.audience {
                q.append_pair(&self.audience_parameter, audience);
            }
            if let Some(challenge) = req.code_challenge {
                q.append_pair("code_challenge", challenge);
                q.append_pair("code_challenge_method", "S256");
            }
            for (k, v) in &self.extra_authorization_params {
                q.append_pair(k, v);
            }
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use secrecy::SecretString;

    use super::*;

    fn provider() -> ProviderConfig {
        ProviderConfig {
            name: "understory".into(),
            authorization_endpoint: Url::parse("https://auth.example/oauth2/auth").unwrap(),
            token_endpoint: Url::parse("https://auth.example/oauth2/token").unwrap(),
            client_id: "client id".into(),
            client_secrets: crate::config::ClientSecrets::inline(SecretString::from("s")),
            auth_method: AuthMethod::ClientSecretPost,
            audience: Some("https://api.understory.io".into()),
            audience_parameter: "audience".into(),
            extra_authorization_params: BTreeMap::new(),
            default_scopes: vec!["booking.read".into()],
            offline_scope: Some("offline".into()),
            redirect_uris: vec![Url::parse("https://example.com/callback").unwrap()],
            pkce: true,
            user_agent: "ua".into(),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            assumed_token_lifetime: Duration::from_secs(3600),
            revocation_endpoint: None,
            refresh_token_lifetime: None,
            keepalive_before: Duration::from_secs(7 * 24 * 3600),
        }
    }

    #[test]
    fn the_url_carries_every_parameter_encoded() {
        let p = provider();
        let scopes = p.requested_scopes(&[]);
        assert_eq!(scopes, ["offline", "booking.read"]);
        let url = p.authorization_url(&AuthorizationRequest {
            redirect_uri: &p.redirect_uris[0],
            scopes: &scopes,
            state: "st",
            code_challenge: Some("ch"),
        });
        let pairs: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["response_type"], "code");
        assert_eq!(pairs["client_id"], "client id");
        assert_eq!(pairs["redirect_uri"], "https://example.com/callback");
        assert_eq!(pairs["scope"], "offline booking.read");
        assert_eq!(pairs["audience"], "https://api.understory.io");
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert!(url.as_str().contains("scope=offline+booking.read"));
        assert!(url.as_str().contains("audience=https%3A%2F%2Fapi.understory.io"));
    }

    #[test]
    fn redirect_uris_match_exactly_or_by_the_only_one() {
        let mut p = provider();
        assert!(p.redirect_uri("").is_some());
        assert!(p.redirect_uri("https://example.com/callback").is_some());
        assert!(p.redirect_uri("https://example.com/callback/x").is_none());
        assert!(p.redirect_uri("https://evil.example/callback").is_none());
        p.redirect_uris.push(Url::parse("https://example.com/other").unwrap());
        assert!(p.redirect_uri("").is_none());
    }

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(is_valid_scope("booking.read"));
        assert!(!is_valid_scope("a b"));
        assert!(!is_valid_scope("a\"b"));
        assert!(!is_valid_scope(""));
    }
}
