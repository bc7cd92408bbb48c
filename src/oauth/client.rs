//! The token endpoint client: one `reqwest::Client` per provider, built once with timeouts,
//! no redirects (a redirected POST would carry the client secret elsewhere) and bounded
//! answers.

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::form_urlencoded::byte_serialize;

use super::{
    error::{AmbiguousCause, TokenError, TransientCause},
    AuthMethod, PkceVerifier, ProviderConfig,
};

/// The largest token-endpoint answer read; real ones are a few KiB at most.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest lifetime believed from `expires_in`. A provider may claim anything (`1e300`);
/// adding an absurd lifetime to a timestamp would overflow, and trusting one would keep a
/// token past its real end. Longer claims are cut to this: the vault refreshes early, never
/// late.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest `Retry-After` believed. The refresh path caps it further at its lease.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A successful token response (RFC 6749 §5.1).
pub struct TokenResponse {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<SecretString>,
    pub scope: Option<Vec<String>>,
    /// How long the refresh token lives, where the provider says (`refresh_token_expires_in`,
    /// not in RFC 6749 but sent by several providers); bounded like `expires_in`.
    pub refresh_token_expires_in: Option<Duration>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("scope", &self.scope)
            .field("refresh_token_expires_in", &self.refresh_token_expires_in)
            .finish()
    }
}

#[derive(Clone)]
pub struct ProviderClient {
    config: Arc<ProviderConfig>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient").field("config", &self.config).finish()
    }
}

impl ProviderClient {
    /// Needs rustls' process-wide crypto provider installed first
    /// (`startup::install_crypto_provider`).
    pub fn new(config: ProviderConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            config: Arc::new(config),
            http,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.5).
    pub async fn exchange_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
        verifier: Option<&PkceVerifier>,
    ) -> Result<TokenResponse, TokenError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v.secret().expose_secret()));
        }
        self.token_request(form).await
    }

    /// Refreshes (RFC 6749 §6). One attempt: retrying is the caller's decision, because only it
    /// knows whether its refresh exclusion still holds.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenResponse, TokenError> {
        self.token_request(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
        .await
    }

    #[tracing::instrument(
        name = "oauth.token_request",
        skip_all,
        fields(
            otel.kind = "client",
            otel.name = "POST token endpoint",
            provider = %self.config.name,
            grant_type = form.first().map(|(_, v)| *v).unwrap_or_default(),
            http.request.method = "POST",
            server.address = self.config.token_endpoint.host_str().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    )]
    async fn token_request(&self, form: Vec<(&str, &str)>) -> Result<TokenResponse, TokenError> {
        let grant_type = form.first().map(|(_, v)| v.to_string()).unwrap_or_default();
        let started = std::time::Instant::now();
        let result = self
            .with_client_secrets(
                |secret| {
                    let form = form.clone();
                    async move { self.send_token_request(&secret, form).await }
                },
                |result| matches!(result, Err(TokenError::ClientRejected(e)) if e.error == "invalid_client"),
            )
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(TokenError::InvalidGrant(_)) => "invalid_grant",
            Err(TokenError::ClientRejected(_)) => "client_rejected",
            Err(TokenError::Transient { .. }) => "unavailable",
            Err(TokenError::Ambiguous { .. }) => "ambiguous",
            Err(TokenError::Protocol(_)) => "protocol_error",
        };
        if outcome != "ok" {
            tracing::Span::current().record("error.type", outcome);
        }
        crate::metrics::get().provider_request_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                crate::metrics::kv("provider", self.config.name.clone()),
                crate::metrics::kv("grant_type", grant_type),
                crate::metrics::kv("outcome", outcome),
            ],
        );
        result
    }

    /// A form POST to one of the provider's endpoints, with the client authentication the
    /// provider is configured for: the token endpoint's, which RFC 7009 §2.1 asks of the
    /// revocation endpoint too.
    /// `secret` is one of the configured client secrets (see `with_client_secrets`).
    pub(super) fn authenticated_post<'f>(
        &'f self,
        endpoint: &url::Url,
        mut form: Vec<(&'f str, &'f str)>,
        secret: &'f SecretString,
    ) -> reqwest::RequestBuilder {
        let config = &*self.config;
        let mut request = self.http.post(endpoint.clone()).header("accept", "application/json");
        match config.auth_method {
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", &config.client_id));
                form.push(("client_secret", secret.expose_secret()));
            }
            AuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
                let id: String = byte_serialize(config.client_id.as_bytes()).collect();
                let secret: String = byte_serialize(secret.expose_secret().as_bytes()).collect();
                request = request.basic_auth(id, Some(secret));
            }
        }
        request.form(&form)
    }

    async fn send_token_request(
        &self,
        secret: &SecretString,
        form: Vec<(&str, &str)>,
    ) -> Result<TokenResponse, TokenError> {
        let request = self.authenticated_post(&self.config.token_endpoint, form, secret);
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", i64::from(status));
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if !(200..300).contains(&status) {
            let body = read_limited(response).await?;
            return Err(TokenError::from_error_response(status, &body, retry_after));
        }
        // The provider has accepted the grant: from here on a failure means the grant was
        // consumed and its successor lost, which must not be mistaken for "try again".
        let lost = |_| TokenError::Ambiguous {
            cause: AmbiguousCause::AnswerLost,
            http_status: Some(status),
        };
        let body = read_limited(response).await.map_err(lost)?;
        parse_token_response(&body).map_err(|e| {
            tracing::error!(error = %e, "the provider accepted the grant but its answer is unusable");
            lost(e)
        })
    }
}

/// `Retry-After` in seconds (RFC 9110 §10.2.3; the HTTP-date form is ignored), capped at
/// `MAX_RETRY_AFTER` so that no later arithmetic on it can overflow.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs = value.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs.min(MAX_RETRY_AFTER.as_secs())))
}

fn transport_error(e: reqwest::Error) -> TokenError {
    let cause = if e.is_timeout() {
        TransientCause::Timeout
    } else {
        TransientCause::Connection
    };
    TokenError::Transient {
        cause,
        retry_after: None,
        http_status: None,
    }
}

async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, TokenError> {
    read_capped(response, MAX_RESPONSE_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge => TokenError::Protocol("token endpoint answer is too large".into()),
        BodyError::Transport(e) => transport_error(e),
    })
}

/// Why an answer's body was not read.
pub(super) enum BodyError {
    /// Longer than the cap, by its `Content-Length` or as it arrived.
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads an answer's body, at most `max` bytes: a provider (or whatever answers in its place)
/// cannot make the vault buffer without bound.
pub(super) async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n as usize > max) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
    refresh_token_expires_in: Option<serde_json::Value>,
}

/// A lifetime in seconds as providers send it (a number, or a numeric string), at most
/// `MAX_EXPIRES_IN`; anything else is no lifetime.
fn lifetime(value: Option<serde_json::Value>) -> Option<Duration> {
    match value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    }
    .map(|secs| Duration::from_secs(secs).min(MAX_EXPIRES_IN))
}

/// Parses a 2xx answer. Lenient where real providers differ (a string `expires_in`, a missing
/// `token_type`), strict where it matters (an access token must be there), bounded where a
/// hostile answer could hurt (`expires_in` at most `MAX_EXPIRES_IN`).
pub(crate) fn parse_token_response(body: &[u8]) -> Result<TokenResponse, TokenError> {
    let raw: RawTokenResponse =
        serde_json::from_slice(body).map_err(|_| TokenError::Protocol("token response is not a JSON object".into()))?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Protocol("token response has no access_token".into()))?;
    let expires_in = lifetime(raw.expires_in);
    let refresh_token_expires_in = lifetime(raw.refresh_token_expires_in).filter(|d| !d.is_zero());
    let token_type = raw
        .token_type
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "bearer".into());
    if token_type.len() > 64 {
        return Err(TokenError::Protocol("token_type is too long".into()));
    }
    Ok(TokenResponse {
        access_token: SecretString::from(access_token),
        token_type,
        expires_in,
        refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(SecretString::from),
        scope: raw
            .scope
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|s| !s.is_empty()),
        refresh_token_expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_and_never_overflows() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn understorys_answer_parses() {
        let r = parse_token_response(
            br#"{"access_token":"at","expires_in":3599,"refresh_token":"ory_rt_x","scope":"offline marketing.read","token_type":"bearer"}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(Duration::from_secs(3599)));
        assert_eq!(
            r.scope.as_deref(),
            Some(&["offline".to_string(), "marketing.read".to_string()][..])
        );
        assert!(!format!("{r:?}").contains("ory_rt_x"));
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        for body in [
            &b"[]"[..],
            b"{}",
            b"{\"access_token\":\"\"}",
            b"\xff",
            b"{\"access_token\":5}",
        ] {
            assert!(matches!(parse_token_response(body), Err(TokenError::Protocol(_))));
        }
        let r = parse_token_response(br#"{"access_token":"a","expires_in":"60"}"#).unwrap();
        assert_eq!(r.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(r.token_type, "bearer");
    }

    /// Before the cap, `sent_at + expires_in` panicked on these (time's `Add` overflows).
    #[test]
    fn absurd_lifetimes_are_capped() {
        for body in [
            &br#"{"access_token":"a","expires_in":18446744073709551615}"#[..],
            br#"{"access_token":"a","expires_in":1e300}"#,
            br#"{"access_token":"a","expires_in":"18446744073709551615"}"#,
        ] {
            let r = parse_token_response(body).unwrap();
            assert_eq!(r.expires_in, Some(MAX_EXPIRES_IN));
            let _ = time::OffsetDateTime::now_utc() + r.expires_in.unwrap();
        }
        let r = parse_token_response(br#"{"access_token":"a","expires_in":-5}"#).unwrap();
        assert_eq!(r.expires_in, Some(Duration::ZERO));
    }
}
