//! Each provider's endpoints (authorization, token, revocation) resolve and answer: a plain
//! `GET`, no credentials, redirects not followed; any HTTP answer counts (a token endpoint
//! answers 405 or 400 to it), since the point is DNS, the route and the TLS handshake with the
//! roots the vault trusts. An `http://` endpoint fails in production mode (the client secret and
//! tokens would cross the network in the clear) and is a warning in development mode, where a
//! local authorization server is normal. The first `Date` header seen feeds `clock`.

use std::time::SystemTime;

use reqwest::header::DATE;
use url::Url;

use super::{clock, Check};
use crate::config::{Mode, ProviderConfig, Settings};

pub async fn check(settings: &Settings) -> Vec<Check> {
    // Discovery as `serve` does it: a provider with an `issuer` has its metadata read and the
    // settings checked against it, and a disagreement is this check's failure.
    let providers = match crate::oauth::discovery::resolve_providers(&settings.providers).await {
        Ok(providers) => providers,
        Err(e) => return vec![Check::fail("providers", format!("discovery: {e}"))],
    };
    let mut checks = Vec::new();
    for (name, provider) in &providers {
        let client = match http_client(provider) {
            Ok(c) => c,
            Err(e) => {
                checks.push(Check::fail(
                    format!("provider {name}"),
                    format!("cannot build an HTTP client: {e}"),
                ));
                continue;
            }
        };
        let mut date: Option<(String, SystemTime)> = None;
        let mut answered = false;
        let endpoints = [
            ("authorization_endpoint", Some(&provider.authorization_endpoint)),
            ("token_endpoint", Some(&provider.token_endpoint)),
            ("revocation_endpoint", provider.revocation_endpoint.as_ref()),
        ];
        for (field, url) in endpoints {
            let Some(url) = url else { continue };
            let (check, seen) = probe(&client, &format!("provider {name} {field}"), url, settings.mode).await;
            answered |= seen.is_some();
            if date.is_none() {
                date = seen.flatten();
            }
            checks.push(check);
        }
        checks.push(match (&date, answered) {
            (Some((header, at)), _) => clock::check(name, Some(header), *at),
            (None, true) => clock::check(name, None, SystemTime::now()),
            (None, false) => Check::skip(format!("provider {name} clock"), "no endpoint answered"),
        });
    }
    checks
}

/// As the vault's own provider client is built (`oauth::ProviderClient::new`): the same
/// timeouts, user agent and trust roots, no redirects.
fn http_client(provider: &ProviderConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(provider.user_agent.clone())
        .timeout(provider.request_timeout)
        .connect_timeout(provider.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The verdict on one endpoint and, when it answered, its `Date` header (if any) with the
/// moment it arrived.
async fn probe(
    client: &reqwest::Client,
    name: &str,
    url: &Url,
    mode: Mode,
) -> (Check, Option<Option<(String, SystemTime)>>) {
    let plain = url.scheme() == "http";
    if plain && mode == Mode::Production {
        return (
            Check::fail(
                name,
                format!("{url} is plain http: production mode needs https (the client secret and tokens would cross the network unencrypted)"),
            ),
            None,
        );
    }
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return (Check::fail(name, format!("{url} names no host")), None);
    };
    // Resolved apart from the request so that a DNS failure reads as one.
    match tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map(|addrs| addrs.count())
    {
        Ok(n) if n > 0 => {}
        Ok(_) => return (Check::fail(name, format!("{host} resolves to no address")), None),
        Err(e) => return (Check::fail(name, format!("{host} does not resolve: {e}")), None),
    }
    match client.get(url.clone()).send().await {
        Err(e) => (
            Check::fail(name, format!("{url} does not answer: {}", error_chain(&e))),
            None,
        ),
        Ok(response) => {
            let date = response
                .headers()
                .get(DATE)
                .and_then(|d| d.to_str().ok())
                .map(|d| (d.to_owned(), SystemTime::now()));
            let status = response.status().as_u16();
            let check = if plain {
                Check::warn(
                    name,
                    format!("{url} answers (HTTP {status}) over plain http: allowed in development mode only"),
                )
            } else {
                Check::pass(name, format!("{url} answers over TLS (HTTP {status})"))
            };
            (check, Some(date))
        }
    }
}

/// reqwest's error with its causes (the TLS or connection error is a source, not the message).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::doctor::Outcome;

    #[tokio::test]
    async fn plain_http_fails_in_production_before_anything_is_sent() {
        // Port 9 (discard): were a request sent, it would fail differently.
        let url = Url::parse("http://127.0.0.1:9/oauth2/token").unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let (check, answered) = probe(&client, "p", &url, Mode::Production).await;
        assert_eq!(check.outcome, Outcome::Fail);
        assert!(check.detail.contains("production mode needs https"), "{}", check.detail);
        assert!(answered.is_none());
    }
}
