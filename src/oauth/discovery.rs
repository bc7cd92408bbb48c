//! Providers by discovery: for a provider with an `issuer`, the authorization server's metadata
//! (RFC 8414, else OpenID Connect discovery) is read at start, its `issuer` checked, the
//! endpoints the settings leave unset taken from it and the settings checked against it
//! (`ProviderSettings::resolve_discovered`).
//!
//! What an unreachable issuer does at start depends on what the vault would lose:
//! - the settings (or the preset) name the authorization and token endpoints: discovery only
//!   verifies them, so one attempt is made and a failure is a warning; replicas that restart
//!   during a provider's outage start and serve what the database holds;
//! - an endpoint must come from the metadata: the vault cannot serve that provider without it,
//!   so a few attempts are made with backoff (a blip passes) and then start fails, naming the
//!   issuer and each URL tried. Kubernetes restarts it with its own backoff; pinning the
//!   endpoints in the settings removes the dependency.
//!
//! A document that is found but disagrees with the settings always stops start: that is a
//! configuration error, not an outage, and it would fail customers one by one later.
//!
//! Bounded like the token endpoint: the provider's timeouts, no redirects, an answer of at most
//! [`MAX_METADATA_BYTES`], and only `https` (or `http` to a loopback address).

use std::{collections::BTreeMap, time::Duration};

use url::Url;

use super::client::{read_capped, BodyError};
use crate::config::{well_known_urls, ConfigError, ProviderConfig, ProviderSettings, ServerMetadata};

/// The largest metadata document read; real ones are a few KiB.
pub const MAX_METADATA_BYTES: usize = 256 * 1024;
/// Rounds over the well-known URLs when the metadata is needed to serve.
const ATTEMPTS: u32 = 3;
/// The pause after the first failed round; doubled after each.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "provider {provider}: no usable metadata for issuer {issuer} after {attempts} attempts ({tried}); \
         its endpoints are needed to serve it: set authorization_endpoint and token_endpoint to start without it"
    )]
    Unavailable {
        provider: String,
        issuer: String,
        attempts: u32,
        tried: String,
    },
    #[error("building the HTTP client of provider {provider}: {source}")]
    Client { provider: String, source: reqwest::Error },
}

/// Every provider, resolved and validated; those with an issuer checked against (and completed
/// from) its metadata. Providers are discovered concurrently.
pub async fn resolve_providers(
    providers: &BTreeMap<String, ProviderSettings>,
) -> Result<BTreeMap<String, ProviderConfig>, DiscoveryError> {
    let resolved = futures::future::try_join_all(providers.iter().map(|(name, settings)| async move {
        Ok::<_, DiscoveryError>((name.clone(), resolve(name, settings).await?))
    }))
    .await?;
    Ok(resolved.into_iter().collect())
}

/// One provider: without an issuer, from its settings alone.
pub async fn resolve(name: &str, settings: &ProviderSettings) -> Result<ProviderConfig, DiscoveryError> {
    let Some((issuer, issuer_url)) = settings.issuer(name)? else {
        return Ok(settings.resolve(name)?);
    };
    // Every other setting is checked first: a typo should not wait for the network.
    let pending = settings.check_before_discovery(name)?;
    let http = reqwest::Client::builder()
        .user_agent(pending.user_agent.clone())
        .timeout(pending.request_timeout)
        .connect_timeout(pending.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| DiscoveryError::Client {
            provider: name.to_owned(),
            source,
        })?;
    let needed = !settings.endpoints_known(name)?;
    let attempts = if needed { ATTEMPTS } else { 1 };
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let found = loop {
        match fetch(&http, &issuer_url).await {
            Ok(found) => break Some(found),
            Err(tried) if attempt < attempts => {
                tracing::warn!(provider = name, issuer, attempt, %tried, "the issuer's metadata is unavailable; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(tried) if needed => {
                return Err(DiscoveryError::Unavailable {
                    provider: name.to_owned(),
                    issuer,
                    attempts,
                    tried,
                })
            }
            Err(tried) => {
                tracing::warn!(
                    provider = name,
                    issuer,
                    %tried,
                    "the issuer's metadata is unavailable; starting with the configured endpoints, unchecked"
                );
                break None;
            }
        }
    };
    let Some((url, metadata)) = found else {
        return Ok(settings.resolve(name)?);
    };
    let (config, warnings) = settings.resolve_discovered(name, &metadata)?;
    for warning in warnings {
        tracing::warn!(provider = name, issuer, metadata = %url, "{warning}");
    }
    tracing::info!(
        provider = name,
        issuer,
        metadata = %url,
        authorization_endpoint = %config.authorization_endpoint,
        token_endpoint = %config.token_endpoint,
        revocation_endpoint = config.revocation_endpoint.as_ref().map(Url::as_str),
        "checked the provider against its issuer's metadata"
    );
    Ok(config)
}

/// The first usable metadata document at the issuer's well-known URLs, with where it was
/// found; else what each URL answered.
async fn fetch(http: &reqwest::Client, issuer: &Url) -> Result<(Url, ServerMetadata), String> {
    let mut tried = Vec::new();
    for url in well_known_urls(issuer) {
        match fetch_one(http, &url).await {
            Ok(metadata) => return Ok((url, metadata)),
            Err(why) => tried.push(format!("{url}: {why}")),
        }
    }
    Err(tried.join("; "))
}

async fn fetch_one(http: &reqwest::Client, url: &Url) -> Result<ServerMetadata, String> {
    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else {
                "unreachable".to_owned()
            }
        })?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!("HTTP {} (redirects are not followed)", status.as_u16()));
    }
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let body = read_capped(response, MAX_METADATA_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge => format!("answer larger than {MAX_METADATA_BYTES} bytes"),
        BodyError::Transport(_) => "connection lost while reading".to_owned(),
    })?;
    serde_json::from_slice(&body).map_err(|e| format!("not a metadata document: {e}"))
}
