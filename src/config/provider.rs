//! A provider: as written in configuration ([`ProviderSettings`]), and resolved with its preset
//! and validated ([`ProviderConfig`]). `oauth` builds URLs and requests from the resolved form.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{
    client_secrets::ClientSecrets,
    invalid,
    metadata::{is_secure_or_loopback, ServerMetadata},
    presets, secret_setting, ConfigError,
};

/// How the vault authenticates to the token endpoint (RFC 6749 §2.3.1). Hydra holds one per
/// client and rejects the other with `invalid_client`, so it must match the registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body (Understory's guide).
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret (Hydra's default).
    ClientSecretBasic,
}

impl AuthMethod {
    /// The name RFC 8414's `token_endpoint_auth_methods_supported` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
        }
    }
}

#[derive(Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub client_id: String,
    /// One secret, or several while one is rotated; shared by every clone of this config.
    pub client_secrets: ClientSecrets,
    pub auth_method: AuthMethod,
    pub audience: Option<String>,
    pub audience_parameter: String,
    pub extra_authorization_params: BTreeMap<String, String>,
    pub default_scopes: Vec<String>,
    pub offline_scope: Option<String>,
    pub redirect_uris: Vec<Url>,
    pub pkce: bool,
    pub user_agent: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub assumed_token_lifetime: Duration,
    /// RFC 7009 revocation endpoint; `None`: DeleteConnection wipes locally only.
    pub revocation_endpoint: Option<Url>,
    /// How long a refresh token lives from its issue when the provider does not say
    /// (`refresh_token_expires_in`); `None`: unknown, and no keep-alive without the provider's word.
    pub refresh_token_lifetime: Option<Duration>,
    /// How long before its refresh token expires the keeper refreshes an idle connection.
    pub keepalive_before: Duration,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("authorization_endpoint", &self.authorization_endpoint.as_str())
            .field("token_endpoint", &self.token_endpoint.as_str())
            .field("client_id", &self.client_id)
            .field("client_secrets", &self.client_secrets)
            .field("auth_method", &self.auth_method)
            .field("audience", &self.audience)
            .field("pkce", &self.pkce)
            .field(
                "revocation_endpoint",
                &self.revocation_endpoint.as_ref().map(Url::as_str),
            )
            .field("refresh_token_lifetime", &self.refresh_token_lifetime)
            .finish_non_exhaustive()
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 256
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// A provider as written in configuration, before presets and validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Fills in endpoints, audience, scopes, auth method and quirks for a known provider
    /// (`config/presets.toml`).
    pub preset: Option<String>,
    /// The authorization server's issuer identifier. Its metadata (RFC 8414, or OpenID Connect
    /// discovery) is read at start: endpoints left unset are taken from it, and the settings
    /// are checked against it (`oauth::discovery`).
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub client_id: Option<String>,
    #[serde(default, deserialize_with = "secret_setting::client_secret")]
    pub client_secret: Option<SecretString>,
    /// A file holding the client secret (trailing whitespace ignored); wins over `client_secret`.
    pub client_secret_file: Option<PathBuf>,
    /// Several files, each holding one client secret, tried in this order while the secret is
    /// rotated (docs/keys.md); re-read like the keyring file. Instead of `client_secret_file`.
    pub client_secret_files: Option<Vec<PathBuf>>,
    pub auth_method: Option<AuthMethod>,
    pub audience: Option<String>,
    /// The authorization parameter that carries `audience`: `audience` (Hydra) or `resource`
    /// (RFC 8707).
    pub audience_parameter: Option<String>,
    /// Further authorization-request parameters, such as `prompt = "consent"`; merged over the
    /// preset's by name. None may be a parameter the vault writes itself.
    #[serde(default)]
    pub extra_authorization_params: BTreeMap<String, String>,
    pub default_scopes: Option<Vec<String>>,
    /// The scope that asks for a refresh token (`offline` at Hydra, `offline_access` in OIDC);
    /// always added to the requested scopes.
    pub offline_scope: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<Url>,
    pub pkce: Option<bool>,
    pub user_agent: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// The lifetime assumed for an access token whose response carries no `expires_in`
    /// (Salesforce never sends it); 1 hour unless the preset or this says otherwise.
    #[serde(default, with = "humantime_serde")]
    pub assumed_token_lifetime: Option<Duration>,
    /// The RFC 7009 revocation endpoint DeleteConnection sends the refresh token to.
    pub revocation_endpoint: Option<Url>,
    /// How long a refresh token lives from its issue, when the token response does not carry
    /// `refresh_token_expires_in` (Hydra's `ttl.refresh_token`, 720 h by default).
    #[serde(default, with = "humantime_serde")]
    pub refresh_token_lifetime: Option<Duration>,
    /// How long before the refresh token expires the keeper refreshes a connection nobody
    /// uses (7 days by default).
    #[serde(default, with = "humantime_serde")]
    pub keepalive_before: Option<Duration>,
}

impl ProviderSettings {
    /// The client secret(s): from `client_secret_files` or `client_secret_file` (which exclude
    /// each other: which was meant would be a guess), else `client_secret`. Every file must hold
    /// a secret, or the vault does not start.
    fn client_secrets(&self, name: &str) -> Result<ClientSecrets, ConfigError> {
        let field = |f: &str| format!("providers.{name}.{f}");
        let files = match (&self.client_secret_files, &self.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    field("client_secret_files"),
                    "and client_secret_file exclude each other: list every file in client_secret_files",
                ))
            }
            (Some(files), None) if files.is_empty() => {
                return Err(invalid(field("client_secret_files"), "must name at least one file"))
            }
            (Some(files), None) => Some((files.clone(), "client_secret_files")),
            (None, Some(file)) => Some((vec![file.clone()], "client_secret_file")),
            (None, None) => None,
        };
        match (files, &self.client_secret) {
            (Some((files, setting)), _) => {
                ClientSecrets::load(files).map_err(|e| invalid(field(setting), e.to_string()))
            }
            (None, Some(secret)) if secret.expose_secret().is_empty() => {
                Err(invalid(field("client_secret"), "must not be empty"))
            }
            (None, Some(secret)) => Ok(ClientSecrets::inline(secret.clone())),
            (None, None) => Err(invalid(
                field("client_secret"),
                "must be set (or client_secret_file, or client_secret_files)",
            )),
        }
    }

    /// Applies the preset (explicit settings win) and checks every field. A provider whose
    /// endpoints come from its issuer's metadata needs [`Self::resolve_discovered`] instead.
    pub fn resolve(&self, name: &str) -> Result<ProviderConfig, ConfigError> {
        self.resolve_with(name, Endpoints::Settings).map(|(config, _)| config)
    }

    /// Like [`Self::resolve`], with the issuer's metadata: endpoints left unset are taken from
    /// it, and a setting that disagrees with it is an error naming the setting and both values.
    /// Returns the disagreements that are not errors, as warnings for the log.
    pub fn resolve_discovered(
        &self,
        name: &str,
        metadata: &ServerMetadata,
    ) -> Result<(ProviderConfig, Vec<String>), ConfigError> {
        self.resolve_with(name, Endpoints::Discovered(metadata))
    }

    /// Every check that does not need the issuer's metadata, for validating settings before
    /// discovery has run. Endpoints that discovery will supply stand in as the issuer's URL.
    pub fn check_before_discovery(&self, name: &str) -> Result<ProviderConfig, ConfigError> {
        self.resolve_with(name, Endpoints::Pending).map(|(config, _)| config)
    }

    /// The issuer, from the settings or the preset; checked to be an `https` URL (or `http` to
    /// a loopback address) without query or fragment (RFC 8414 §2).
    pub fn issuer(&self, name: &str) -> Result<Option<(String, Url)>, ConfigError> {
        let preset = self.preset(name)?;
        let Some(issuer) = self.issuer.clone().or_else(|| preset.issuer.clone()) else {
            return Ok(None);
        };
        let field = format!("providers.{name}.issuer");
        let url = Url::parse(&issuer).map_err(|e| invalid(&field, format!("is not a URL: {e}")))?;
        if !is_secure_or_loopback(&url) || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                field,
                "must be an https URL (http only to a loopback address) without query or fragment",
            ));
        }
        Ok(Some((issuer, url)))
    }

    /// Whether the endpoints needed to serve (authorization and token) are known without the
    /// issuer's metadata: if so, discovery only checks them, and an unreachable issuer at start
    /// is a warning instead of a failure.
    pub fn endpoints_known(&self, name: &str) -> Result<bool, ConfigError> {
        let endpoints = self.explicit_endpoints(self.preset(name)?);
        Ok(endpoints.authorization.is_some() && endpoints.token.is_some())
    }

    fn preset(&self, name: &str) -> Result<&'static ProviderSettings, ConfigError> {
        static NONE: std::sync::LazyLock<ProviderSettings> = std::sync::LazyLock::new(ProviderSettings::default);
        match self.preset.as_deref() {
            None => Ok(&NONE),
            Some(preset) => presets::get(preset).ok_or_else(|| {
                invalid(
                    format!("providers.{name}.preset"),
                    format!("unknown preset {preset:?} (known: {})", presets::names().join(", ")),
                )
            }),
        }
    }

    /// The endpoints the settings name, with the preset's where they belong: the preset's
    /// endpoints go with the preset's issuer (a provider with an issuer of its own, such as a
    /// sandbox, gets none of them), and its revocation endpoint with its token endpoint (a
    /// configuration that points the token endpoint elsewhere, a staging server or a test
    /// double, must not send refresh tokens to the production server on disconnect).
    fn explicit_endpoints(&self, preset: &ProviderSettings) -> ExplicitEndpoints {
        let own_issuer = self.issuer.is_some() && self.issuer != preset.issuer;
        let from_preset = |url: &Option<Url>| if own_issuer { None } else { url.clone() };
        ExplicitEndpoints {
            authorization: self
                .authorization_endpoint
                .clone()
                .or_else(|| from_preset(&preset.authorization_endpoint)),
            token: self
                .token_endpoint
                .clone()
                .or_else(|| from_preset(&preset.token_endpoint)),
            revocation: self.revocation_endpoint.clone().or_else(|| {
                if self.token_endpoint.is_none() {
                    from_preset(&preset.revocation_endpoint)
                } else {
                    None
                }
            }),
        }
    }

    fn resolve_with(&self, name: &str, source: Endpoints<'_>) -> Result<(ProviderConfig, Vec<String>), ConfigError> {
        let field = |f: &str| format!("providers.{name}.{f}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                format!("providers.{name}"),
                "provider names use 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
            ));
        }
        let preset = self.preset(name)?;
        let issuer = self.issuer(name)?;
        let explicit = self.explicit_endpoints(preset);
        let mut warnings = Vec::new();
        let (authorization_endpoint, token_endpoint, revocation_endpoint) = match source {
            Endpoints::Settings => (explicit.authorization, explicit.token, explicit.revocation),
            Endpoints::Pending => {
                let stand_in = issuer.as_ref().map(|(_, url)| url.clone());
                (
                    explicit.authorization.or_else(|| stand_in.clone()),
                    explicit.token.or(stand_in),
                    explicit.revocation,
                )
            }
            Endpoints::Discovered(metadata) => {
                let Some((issuer, _)) = &issuer else {
                    return Err(invalid(field("issuer"), "must be set to use discovery"));
                };
                if metadata.issuer != *issuer {
                    return Err(invalid(
                        field("issuer"),
                        format!(
                            "is {issuer:?}, but the metadata found there names issuer {:?}; they must be \
                             identical (RFC 8414 §3.3)",
                            metadata.issuer
                        ),
                    ));
                }
                let agree = |f: &str, explicit: Option<Url>, discovered: &Option<Url>| match (explicit, discovered) {
                    (Some(set), Some(found)) if set != *found => Err(invalid(
                        field(f),
                        format!("is {set}, but issuer {issuer} publishes {f} {found}"),
                    )),
                    (Some(set), _) => Ok(Some(set)),
                    (None, Some(found)) if !is_secure_or_loopback(found) => Err(invalid(
                        field(f),
                        format!("is unset, and issuer {issuer} publishes {found}, which is not https"),
                    )),
                    (None, found) => Ok(found.clone()),
                };
                (
                    agree(
                        "authorization_endpoint",
                        explicit.authorization,
                        &metadata.authorization_endpoint,
                    )?,
                    agree("token_endpoint", explicit.token, &metadata.token_endpoint)?,
                    agree(
                        "revocation_endpoint",
                        explicit.revocation,
                        &metadata.revocation_endpoint,
                    )?,
                )
            }
        };
        let must_be_set = if issuer.is_some() {
            "must be set, or published in the issuer's metadata"
        } else {
            "must be set"
        };
        let authorization_endpoint =
            authorization_endpoint.ok_or_else(|| invalid(field("authorization_endpoint"), must_be_set))?;
        let token_endpoint = token_endpoint.ok_or_else(|| invalid(field("token_endpoint"), must_be_set))?;
        for (f, url) in [
            ("authorization_endpoint", &authorization_endpoint),
            ("token_endpoint", &token_endpoint),
        ] {
            if !matches!(url.scheme(), "https" | "http") {
                return Err(invalid(field(f), "must be an http(s) URL"));
            }
        }
        let client_id = self
            .client_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| invalid(field("client_id"), "must be set"))?;
        let client_secrets = self.client_secrets(name)?;
        let redirect_uris = self.redirect_uris.clone();
        if redirect_uris.is_empty() {
            return Err(invalid(field("redirect_uris"), "register at least one redirect URI"));
        }
        let default_scopes = self
            .default_scopes
            .clone()
            .or_else(|| preset.default_scopes.clone())
            .unwrap_or_default();
        let offline_scope = self
            .offline_scope
            .clone()
            .or_else(|| preset.offline_scope.clone())
            .filter(|s| !s.is_empty());
        for scope in default_scopes.iter().chain(offline_scope.iter()) {
            if !is_valid_scope(scope) {
                return Err(invalid(
                    field("default_scopes"),
                    format!("{scope:?} is not a valid scope token"),
                ));
            }
        }
        // Added to timestamps on the refresh path: bounded here so that no sum can overflow.
        let assumed_token_lifetime = self
            .assumed_token_lifetime
            .or(preset.assumed_token_lifetime)
            .unwrap_or(Duration::from_secs(3600));
        if assumed_token_lifetime.is_zero() || assumed_token_lifetime > Duration::from_secs(365 * 24 * 3600) {
            return Err(invalid(
                field("assumed_token_lifetime"),
                "must be positive and at most a year",
            ));
        }
        if revocation_endpoint
            .as_ref()
            .is_some_and(|url| !matches!(url.scheme(), "https" | "http"))
        {
            return Err(invalid(field("revocation_endpoint"), "must be an http(s) URL"));
        }
        let refresh_token_lifetime = self.refresh_token_lifetime.or(preset.refresh_token_lifetime);
        let keepalive_before = self
            .keepalive_before
            .or(preset.keepalive_before)
            .unwrap_or(Duration::from_secs(7 * 24 * 3600));
        const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        if refresh_token_lifetime.is_some_and(|d| d.is_zero() || d > TEN_YEARS) || keepalive_before > TEN_YEARS {
            return Err(invalid(
                field("refresh_token_lifetime"),
                "and keepalive_before must be positive and at most ten years",
            ));
        }
        // The preset's extra parameters (a provider's quirk), with the settings' own winning by
        // name.
        let mut extra_authorization_params = preset.extra_authorization_params.clone();
        extra_authorization_params.extend(self.extra_authorization_params.clone());
        let audience_parameter = self
            .audience_parameter
            .clone()
            .or_else(|| preset.audience_parameter.clone())
            .unwrap_or_else(|| "audience".into());
        let audience = self
            .audience
            .clone()
            .or_else(|| preset.audience.clone())
            .filter(|a| !a.is_empty());
        for key in extra_authorization_params.keys() {
            if key.is_empty()
                || OWN_AUTHORIZATION_PARAMS.contains(&key.as_str())
                || (audience.is_some() && *key == audience_parameter)
            {
                return Err(invalid(
                    field("extra_authorization_params"),
                    format!("must not set {key:?}: the vault writes that parameter itself"),
                ));
            }
        }
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        if request_timeout.is_zero() {
            return Err(invalid(field("request_timeout"), "must be positive"));
        }
        let config = ProviderConfig {
            name: name.to_owned(),
            authorization_endpoint,
            token_endpoint,
            client_id,
            client_secrets,
            auth_method: self
                .auth_method
                .or(preset.auth_method)
                .unwrap_or(AuthMethod::ClientSecretBasic),
            audience,
            audience_parameter,
            extra_authorization_params,
            default_scopes,
            offline_scope,
            redirect_uris,
            pkce: self.pkce.unwrap_or(true),
            user_agent: self
                .user_agent
                .clone()
                .unwrap_or_else(|| format!("token-vault/{}", env!("CARGO_PKG_VERSION"))),
            request_timeout,
            connect_timeout: self
                .connect_timeout
                .unwrap_or(Duration::from_secs(5))
                .min(request_timeout),
            assumed_token_lifetime,
            revocation_endpoint,
            refresh_token_lifetime,
            keepalive_before,
        };
        if let Endpoints::Discovered(metadata) = source {
            check_against_metadata(name, &config, metadata, &mut warnings)?;
        }
        Ok((config, warnings))
    }
}

/// The parameters the vault itself writes into an authorization request; an extra parameter of
/// the same name would send it twice, and which one the provider reads is not ours to guess.
const OWN_AUTHORIZATION_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// The checks that need the issuer's metadata besides its endpoints. A method the provider says
/// it does not support is an error: every authorization would fail with it. A scope missing
/// from `scopes_supported` is a warning: the list is optional and often partial.
fn check_against_metadata(
    name: &str,
    config: &ProviderConfig,
    metadata: &ServerMetadata,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    let issuer = &metadata.issuer;
    let method = config.auth_method.as_str();
    match &metadata.token_endpoint_auth_methods_supported {
        Some(supported) if !supported.iter().any(|m| m == method) => {
            return Err(invalid(
                field("auth_method"),
                format!(
                "is {method}, but issuer {issuer} supports only {supported:?} (token_endpoint_auth_methods_supported)"
            ),
            ))
        }
        None if config.auth_method != AuthMethod::ClientSecretBasic => warnings.push(format!(
            "provider {name}: auth_method is {method}, and issuer {issuer} does not list \
             token_endpoint_auth_methods_supported (whose default is client_secret_basic)"
        )),
        _ => {}
    }
    if let Some(supported) = &metadata.code_challenge_methods_supported {
        if config.pkce && !supported.iter().any(|m| m == "S256") {
            return Err(invalid(
                field("pkce"),
                format!(
                    "is on (S256), but issuer {issuer} supports only {supported:?} \
                     (code_challenge_methods_supported); set pkce = false for a provider without S256"
                ),
            ));
        }
    }
    if let Some(supported) = &metadata.scopes_supported {
        let missing: Vec<&String> = config
            .default_scopes
            .iter()
            .chain(config.offline_scope.iter())
            .filter(|scope| !supported.contains(scope))
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "provider {name}: scopes {missing:?} are not in issuer {issuer}'s scopes_supported {supported:?}; \
                 the list is optional and often partial, so they are still requested"
            ));
        }
    }
    Ok(())
}

/// Where `resolve_with` takes the endpoints from.
#[derive(Clone, Copy)]
enum Endpoints<'a> {
    /// The settings and the preset only.
    Settings,
    /// The settings, with the issuer's URL standing in for what discovery will supply.
    Pending,
    /// The settings, checked against and completed from the issuer's metadata.
    Discovered(&'a ServerMetadata),
}

struct ExplicitEndpoints {
    authorization: Option<Url>,
    token: Option<Url>,
    revocation: Option<Url>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn understory(token_endpoint: Option<&str>, revocation_endpoint: Option<&str>) -> ProviderConfig {
        ProviderSettings {
            preset: Some("understory".into()),
            token_endpoint: token_endpoint.map(|u| u.parse().unwrap()),
            revocation_endpoint: revocation_endpoint.map(|u| u.parse().unwrap()),
            client_id: Some("id".into()),
            client_secret: Some("secret".to_owned().into()),
            redirect_uris: vec!["https://app.test/cb".parse().unwrap()],
            ..Default::default()
        }
        .resolve("understory")
        .unwrap()
    }

    #[test]
    fn the_presets_revocation_endpoint_goes_with_its_token_endpoint() {
        let p = understory(None, None);
        assert_eq!(
            p.revocation_endpoint.unwrap().as_str(),
            "https://api.auth.understory.io/oauth2/revoke"
        );
        assert_eq!(p.refresh_token_lifetime, Some(Duration::from_secs(720 * 3600)));
        assert_eq!(p.keepalive_before, Duration::from_secs(7 * 24 * 3600));
        // A token endpoint elsewhere (staging, a test double): no refresh token is sent to the
        // production revocation endpoint unless configured so.
        let p = understory(Some("http://127.0.0.1:9/oauth2/token"), None);
        assert_eq!(p.revocation_endpoint, None);
        let p = understory(
            Some("http://127.0.0.1:9/oauth2/token"),
            Some("http://127.0.0.1:9/oauth2/revoke"),
        );
        assert_eq!(
            p.revocation_endpoint.unwrap().as_str(),
            "http://127.0.0.1:9/oauth2/revoke"
        );
    }

    fn google(extra: impl FnOnce(&mut ProviderSettings)) -> Result<(ProviderConfig, Vec<String>), ConfigError> {
        let mut settings = ProviderSettings {
            preset: Some("google".into()),
            client_id: Some("id".into()),
            client_secret: Some("secret".to_owned().into()),
            redirect_uris: vec!["https://app.test/cb".parse().unwrap()],
            default_scopes: Some(vec!["https://www.googleapis.com/auth/calendar".into()]),
            ..Default::default()
        };
        extra(&mut settings);
        let metadata = ServerMetadata {
            issuer: "https://accounts.google.com".into(),
            authorization_endpoint: "https://accounts.google.com/o/oauth2/v2/auth".parse().ok(),
            token_endpoint: "https://oauth2.googleapis.com/token".parse().ok(),
            revocation_endpoint: "https://oauth2.googleapis.com/revoke".parse().ok(),
            token_endpoint_auth_methods_supported: Some(vec![
                "client_secret_post".into(),
                "client_secret_basic".into(),
            ]),
            code_challenge_methods_supported: Some(vec!["plain".into(), "S256".into()]),
            scopes_supported: Some(vec!["openid".into(), "email".into(), "profile".into()]),
        };
        settings.resolve_discovered("google", &metadata)
    }

    /// The google preset against Google's published metadata: it agrees; the API scope absent
    /// from `scopes_supported` is a warning; the preset's extra parameters are there, merged
    /// with the settings' own by name.
    #[test]
    fn a_preset_agrees_with_its_issuers_metadata() {
        let (p, warnings) = google(|s| {
            s.extra_authorization_params
                .insert("login_hint".into(), "a@b.test".into());
            s.extra_authorization_params
                .insert("prompt".into(), "select_account consent".into());
        })
        .unwrap();
        assert_eq!(p.token_endpoint.as_str(), "https://oauth2.googleapis.com/token");
        assert_eq!(p.offline_scope, None);
        assert_eq!(p.auth_method, AuthMethod::ClientSecretPost);
        assert_eq!(p.extra_authorization_params["access_type"], "offline");
        assert_eq!(p.extra_authorization_params["prompt"], "select_account consent");
        assert_eq!(p.extra_authorization_params["login_hint"], "a@b.test");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("calendar") && warnings[0].contains("scopes_supported"));
        // No refresh token is sent anywhere but Google unless configured so.
        assert_eq!(
            p.revocation_endpoint.unwrap().as_str(),
            "https://oauth2.googleapis.com/revoke"
        );
    }

    /// An issuer of the provider's own drops the preset's endpoints (they belong with the
    /// preset's issuer); without discovery they must then be set.
    #[test]
    fn an_issuer_of_its_own_drops_the_presets_endpoints() {
        let settings = ProviderSettings {
            preset: Some("salesforce".into()),
            issuer: Some("https://test.salesforce.com".into()),
            client_id: Some("id".into()),
            client_secret: Some("secret".to_owned().into()),
            redirect_uris: vec!["https://app.test/cb".parse().unwrap()],
            ..Default::default()
        };
        assert!(!settings.endpoints_known("sf").unwrap());
        match settings.resolve("sf") {
            Err(ConfigError::Invalid { field, problem }) => {
                assert_eq!(field, "providers.sf.authorization_endpoint");
                assert!(problem.contains("issuer's metadata"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
        // Before discovery, every other setting is still checked.
        let pending = settings.check_before_discovery("sf").unwrap();
        assert_eq!(pending.assumed_token_lifetime, Duration::from_secs(15 * 60));
        assert_eq!(pending.revocation_endpoint, None);
        let preset_issuer = ProviderSettings {
            issuer: None,
            ..settings
        };
        assert!(preset_issuer.endpoints_known("sf").unwrap());
    }

    /// Settings refused before any network: an unknown preset, an issuer that is not https (or
    /// loopback http) or carries a query, an extra parameter the vault writes itself, a zero
    /// assumed lifetime.
    #[test]
    fn bad_issuer_preset_and_quirk_settings_name_the_field() {
        type Change = fn(&mut ProviderSettings);
        let cases: [(&str, Change); 7] = [
            ("preset", |s| s.preset = Some("okta".into())),
            ("issuer", |s| s.issuer = Some("http://idp.example".into())),
            ("issuer", |s| s.issuer = Some("https://idp.example/?tenant=1".into())),
            ("issuer", |s| s.issuer = Some("not a url".into())),
            ("extra_authorization_params", |s| {
                s.extra_authorization_params.insert("state".into(), "x".into());
            }),
            ("extra_authorization_params", |s| {
                s.extra_authorization_params.insert("audience".into(), "x".into());
            }),
            ("assumed_token_lifetime", |s| {
                s.assumed_token_lifetime = Some(Duration::ZERO)
            }),
        ];
        for (field, change) in cases {
            let mut settings = ProviderSettings {
                preset: Some("understory".into()),
                client_id: Some("id".into()),
                client_secret: Some("secret".to_owned().into()),
                redirect_uris: vec!["https://app.test/cb".parse().unwrap()],
                ..Default::default()
            };
            change(&mut settings);
            match settings.check_before_discovery("p") {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, format!("providers.p.{field}")),
                other => panic!("{field}: {other:?}"),
            }
        }
        // Loopback http is an issuer (a local server, the tests).
        let local = ProviderSettings {
            issuer: Some("http://127.0.0.1:4444".into()),
            ..Default::default()
        };
        assert!(local.issuer("p").unwrap().is_some());
    }

    /// `client_secret_files` from TOML: every file read in order; an empty list, an empty or
    /// missing file, or both file settings at once stop start-up, naming the setting.
    #[test]
    fn several_client_secret_files_parse_in_order() {
        let dir = std::env::temp_dir().join(format!("token-vault-provider-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("client-secret"), "old-secret\n").unwrap();
        std::fs::write(dir.join("client-secret-next"), "new-secret").unwrap();
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let d = dir.display();
        let parse = |extra: &str| -> Result<ProviderConfig, ConfigError> {
            let toml = format!(
                "preset = \"understory\"\nclient_id = \"id\"\nredirect_uris = [\"https://app.test/cb\"]\n{extra}"
            );
            use figment::providers::Format;
            let settings: ProviderSettings = figment::Figment::from(figment::providers::Toml::string(&toml))
                .extract()
                .unwrap();
            settings.resolve("understory")
        };
        let p = parse(&format!(
            "client_secret_files = [\"{d}/client-secret\", \"{d}/client-secret-next\"]"
        ))
        .unwrap();
        let (set, first) = p.client_secrets.current();
        assert_eq!(
            set.iter().map(|s| s.expose_secret()).collect::<Vec<_>>(),
            ["old-secret", "new-secret"]
        );
        assert_eq!(first, 0);
        assert_eq!(p.client_secrets.files().len(), 2);
        assert!(!format!("{p:?}").contains("old-secret"));

        let p = parse(&format!("client_secret_file = \"{d}/client-secret\"")).unwrap();
        assert_eq!(p.client_secrets.current().0.len(), 1);
        let p = parse("client_secret = \"inline\"").unwrap();
        assert!(p.client_secrets.files().is_empty());

        for (extra, field) in [
            ("client_secret_files = []".to_owned(), "client_secret_files"),
            (
                format!("client_secret_files = [\"{d}/client-secret\", \"{d}/empty\"]"),
                "client_secret_files",
            ),
            (
                format!("client_secret_files = [\"{d}/missing\"]"),
                "client_secret_files",
            ),
            (
                format!("client_secret_files = [\"{d}/client-secret\"]\nclient_secret_file = \"{d}/client-secret\""),
                "client_secret_files",
            ),
            (format!("client_secret_file = \"{d}/empty\""), "client_secret_file"),
            ("client_secret = \"\"".to_owned(), "client_secret"),
            (String::new(), "client_secret"),
        ] {
            match parse(&extra) {
                Err(ConfigError::Invalid { field: f, problem }) => {
                    assert_eq!(f, format!("providers.understory.{field}"), "{extra}");
                    assert!(!problem.contains("old-secret"), "{problem}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
