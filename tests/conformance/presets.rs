//! Providers by discovery and the presets' quirks, against the real server: a provider
//! configured by its issuer alone is served from the endpoints of oidc-provider's
//! `/.well-known/openid-configuration`; an endpoint that disagrees with it stops start; and each
//! preset with a quirk (config/presets.toml) runs a whole authorization and its refreshes
//! against the server configured with that quirk.

use std::time::{Duration, SystemTime};

use figment::providers::{Format, Toml};
use token_vault::{config::Settings, startup::Application};

use crate::{
    authserver::{AuthServer, Events, ServerOptions, POST_CLIENT},
    harness::{query, settings_toml, until_refresh_due, Api, TestVault, VaultOptions, SHORT_TTL},
};

/// The refresh token of the code exchange was presented by every refresh and none was issued:
/// the vault kept the one it had when the answer carried none.
fn assert_no_rotation(events: &Events, refreshes: usize) {
    let exchanges = events.code_exchanges();
    assert_eq!(exchanges.len(), 1, "{events:#?}");
    let first = &exchanges[0]["refresh_token_issued"];
    assert!(first.is_string(), "{events:#?}");
    assert_eq!(events.refreshes().len(), refreshes, "{events:#?}");
    for refresh in events.refreshes() {
        assert_eq!(&refresh["refresh_token_used"], first, "{events:#?}");
        assert!(refresh["refresh_token_issued"].is_null(), "{events:#?}");
    }
    assert!(events.grant_errors().is_empty(), "{events:#?}");
}

/// Understory's preset with the issuer instead of endpoints: the vault reads the server's
/// metadata (RFC 8414's location is not served, OpenID Connect's is) and authorizes, refreshes
/// and revokes at the endpoints it names.
#[tokio::test]
async fn a_provider_configured_by_its_issuer_uses_the_discovered_endpoints() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(
        &server,
        &VaultOptions {
            preset: Some("understory"),
            ..Default::default()
        },
    )
    .await;
    let api = Api(vault.client.clone());
    let begun = api.begin("acme").await;
    assert!(
        begun
            .authorization_url
            .starts_with(&format!("{}/auth?", server.issuer())),
        "{}",
        begun.authorization_url
    );
    let completed = api.connect_tenant("acme").await;
    assert!(completed.refresh_token_issued);
    let first = api.token("acme").await.unwrap();
    until_refresh_due(&first, Duration::from_secs(SHORT_TTL)).await;
    let second = api.token("acme").await.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert!(server.is_active(&POST_CLIENT, &second.access_token).await);
    let events = server.events();
    assert_eq!(events.refreshes().len(), 1, "{events:#?}");
    events.assert_one_rotation_chain();

    // The discovered revocation endpoint (`/token/revocation`) gets the refresh token.
    api.delete("acme").await.unwrap();
    assert_eq!(server.events().named("revocation.success").len(), 1);
    assert!(!server.is_active(&POST_CLIENT, &second.access_token).await);
}

/// An endpoint in the settings that the server's metadata contradicts stops start, naming the
/// setting and both URLs.
#[tokio::test]
async fn an_endpoint_the_real_metadata_contradicts_stops_start() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let issuer = server.issuer();
    let opts = VaultOptions {
        preset: Some("understory"),
        extra_toml: format!("token_endpoint = \"{issuer}/oauth2/token\"\n"),
        ..Default::default()
    };
    let toml = settings_toml(&issuer, "postgres://postgres@127.0.0.1:1/unused", &opts);
    let settings = Settings::from_figment(Settings::defaults().merge(Toml::string(&toml))).unwrap();
    let error = match Application::build(settings).await {
        Ok(_) => panic!("the vault started"),
        Err(e) => format!("{e:#}"),
    };
    for part in [
        "providers.understory.token_endpoint",
        &format!("{issuer}/oauth2/token"),
        &format!("{issuer}/token"),
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
}

/// `google`: a refresh token only with `access_type=offline` and `prompt=consent`, which the
/// preset sends; none without them; and refreshes that keep the refresh token.
#[tokio::test]
async fn google_gets_a_refresh_token_from_its_extra_parameters_and_keeps_it() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: SHORT_TTL,
        quirks: &["--no-rotation", "--access-type-offline"],
        ..Default::default()
    })
    .await;
    let opts = VaultOptions {
        preset: Some("google"),
        ..Default::default()
    };
    let vault = TestVault::start(&server, &opts).await;
    let api = Api(vault.client.clone());
    let begun = api.begin("acme").await;
    let url = query(&begun.authorization_url);
    assert_eq!(url["access_type"], "offline");
    assert_eq!(url["prompt"], "consent");
    // No offline scope: Google has none.
    assert_eq!(url["scope"], "booking.read");
    let completed = api.connect_tenant("acme").await;
    assert_eq!(completed.provider, "google");
    assert!(completed.refresh_token_issued);

    let lifetime = Duration::from_secs(SHORT_TTL);
    let mut token = api.token("acme").await.unwrap();
    for _ in 0..2 {
        until_refresh_due(&token, lifetime).await;
        let next = api.token("acme").await.unwrap();
        assert_ne!(next.access_token, token.access_token);
        assert!(server.is_active(&POST_CLIENT, &next.access_token).await);
        token = next;
    }
    assert_no_rotation(&server.events(), 2);
    assert!(api.connection("acme").await.unwrap().has_refresh_token);

    // Without `access_type=offline` the same server issues no refresh token, which the vault
    // reports.
    let online = TestVault::start(
        &server,
        &VaultOptions {
            extra_toml: "extra_authorization_params = { access_type = \"online\" }\n".into(),
            ..opts
        },
    )
    .await;
    let completed = Api(online.client.clone()).connect_tenant("acme").await;
    assert!(!completed.refresh_token_issued);
    let seen: Vec<_> = server
        .events()
        .named("authorization.access_type")
        .iter()
        .map(|e| e["access_type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen, ["offline", "online"]);
}

/// `salesforce`: no `expires_in` (the vault assumes `assumed_token_lifetime`), the offline
/// scope `refresh_token`, and refreshes that keep the refresh token.
#[tokio::test]
async fn salesforce_without_expires_in_refreshes_at_the_assumed_lifetime() {
    let server = AuthServer::start(ServerOptions {
        // The server's own lifetime is longer than the assumed one: the vault cannot know it.
        access_ttl: 3600,
        quirks: &["--no-rotation", "--omit-expires-in"],
        ..Default::default()
    })
    .await;
    let vault = TestVault::start(
        &server,
        &VaultOptions {
            preset: Some("salesforce"),
            extra_toml: format!("assumed_token_lifetime = \"{SHORT_TTL}s\"\n"),
            ..Default::default()
        },
    )
    .await;
    let api = Api(vault.client.clone());
    let begun = api.begin("acme").await;
    assert_eq!(query(&begun.authorization_url)["scope"], "refresh_token booking.read");
    assert!(api.connect_tenant("acme").await.refresh_token_issued);

    let lifetime = Duration::from_secs(SHORT_TTL);
    let first = api.token("acme").await.unwrap();
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(first.expires_at.unwrap().seconds as u64);
    let left = expires.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(left <= lifetime, "{left:?}");
    until_refresh_due(&first, lifetime).await;
    let second = api.token("acme").await.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert!(server.is_active(&POST_CLIENT, &second.access_token).await);
    assert_no_rotation(&server.events(), 1);
    assert!(api.connection("acme").await.unwrap().has_refresh_token);
}
