//! Providers by discovery against scripted metadata documents: a provider configured by its
//! issuer alone is served from the endpoints the metadata names (RFC 8414's path insertion
//! included); each disagreement between settings and metadata stops start with an error naming
//! the setting and both values; an unreachable issuer stops start only when the endpoints are
//! not configured.

use std::time::{Duration, Instant};

use figment::providers::{Format, Toml};
use serde_json::{json, Value};
use token_vault::{config::Settings, proto::token_vault_client::TokenVaultClient, startup::Application};
use tonic::transport::Channel;
use wiremock::{matchers::method, matchers::path, Mock, MockServer, ResponseTemplate};

use crate::{
    helpers::{connect, settings_toml, TestDb, TestOptions},
    provider::{ClientAuth, ScriptedProvider},
};

const SECRET: &str = "discovery-secret";

/// The metadata of the scripted provider at `uri` (its issuer), as Hydra would publish it.
fn metadata(uri: &str) -> Value {
    json!({
        "issuer": uri,
        "authorization_endpoint": format!("{uri}/oauth2/auth"),
        "token_endpoint": format!("{uri}/oauth2/token"),
        "revocation_endpoint": format!("{uri}/oauth2/revoke"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["offline", "booking.read"],
        "response_types_supported": ["code"],
    })
}

async fn serve(server: &MockServer, at: &str, document: &Value) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(ResponseTemplate::new(200).set_body_json(document))
        .mount(server)
        .await;
}

/// The test vault's settings for the provider at `uri` with `issuer`; with `endpoints` false the
/// provider has no endpoint of its own (nor the preset's: an issuer of its own drops them).
fn settings(uri: &str, database_url: &str, issuer: &str, endpoints: bool) -> Settings {
    let toml = settings_toml(uri, database_url, SECRET, &TestOptions::default());
    let toml: String = toml
        .lines()
        .filter(|line| endpoints || !line.contains("_endpoint ="))
        .map(|line| format!("{line}\n"))
        .collect();
    // The provider's table is the last one: these keys land in it.
    let toml = format!("{toml}issuer = \"{issuer}\"\n");
    Settings::from_figment(Settings::defaults().merge(Toml::string(&toml))).expect("the settings are valid")
}

/// Builds the vault and returns why it did not start.
async fn start_error(settings: Settings) -> String {
    match Application::build(settings).await {
        Ok(_) => panic!("the vault started"),
        Err(e) => format!("{e:#}"),
    }
}

/// Serves the vault; dropping the sender stops it.
async fn start(settings: Settings) -> (TokenVaultClient<Channel>, tokio::sync::oneshot::Sender<()>) {
    let app = Application::build(settings).await.expect("the vault starts");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    (connect(addr).await, stop)
}

async fn begin(client: &TokenVaultClient<Channel>, tenant: &str) -> token_vault::proto::BeginAuthorizationResponse {
    client
        .clone()
        .begin_authorization(token_vault::proto::BeginAuthorizationRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// An issuer with a path: its RFC 8414 metadata is at the well-known path with the issuer's
/// path after it; the vault takes every endpoint from it and runs a whole authorization and a
/// refresh through them.
#[tokio::test]
async fn an_issuer_alone_is_enough_to_serve() {
    let db = TestDb::create("tv_test").await;
    let provider = ScriptedProvider::start("test-client", SECRET, ClientAuth::Post).await;
    provider.set_access_ttl(1);
    let uri = provider.uri();
    let issuer = format!("{uri}/tenant-a");
    let mut document = metadata(&uri);
    document["issuer"] = json!(issuer);
    serve(
        &provider.server,
        "/.well-known/oauth-authorization-server/tenant-a",
        &document,
    )
    .await;
    let (client, _stop) = start(settings(&uri, &db.url, &issuer, false)).await;

    let begun = begin(&client, "acme").await;
    assert!(
        begun.authorization_url.starts_with(&format!("{uri}/oauth2/auth?")),
        "{}",
        begun.authorization_url
    );
    let code = provider.consent(&begun.authorization_url);
    client
        .clone()
        .complete_authorization(token_vault::proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await
        .expect("the code is exchanged at the discovered token endpoint");
    assert_eq!(provider.stats().code_exchanges, 1);
    // The access token lives a second: the next one comes from a refresh there too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .clone()
        .get_access_token(token_vault::proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("a token, refreshed at the discovered token endpoint");
    assert_eq!(provider.stats().refresh_requests, 1);
    // DeleteConnection revokes at the discovered revocation endpoint.
    client
        .clone()
        .delete_connection(token_vault::proto::DeleteConnectionRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(provider.stats().revocation_requests, 1);
}

/// Each disagreement between the settings and the metadata stops start, naming the setting
/// and both values.
#[tokio::test]
async fn settings_that_disagree_with_the_metadata_stop_start() {
    let server = crate::mock_http::Server::start().await;
    let uri = server.uri();
    let unused_database = "postgres://postgres@127.0.0.1:1/unused";
    let cases: [(&str, Value, &[&str]); 5] = [
        (
            "issuer",
            json!({"issuer": "https://elsewhere.example"}),
            &["providers.understory.issuer", "https://elsewhere.example", "RFC 8414"],
        ),
        (
            "endpoint",
            json!({"token_endpoint": format!("{uri}/v2/token")}),
            &[
                "providers.understory.token_endpoint",
                &format!("{uri}/oauth2/token"),
                &format!("{uri}/v2/token"),
            ],
        ),
        (
            "auth method",
            json!({"token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"]}),
            &[
                "providers.understory.auth_method",
                "client_secret_post",
                "private_key_jwt",
            ],
        ),
        (
            "S256",
            json!({"code_challenge_methods_supported": ["plain"]}),
            &["providers.understory.pkce", "S256", "plain"],
        ),
        (
            "revocation endpoint",
            json!({"revocation_endpoint": format!("{uri}/revoke")}),
            &["providers.understory.revocation_endpoint", &format!("{uri}/revoke")],
        ),
    ];
    for (case, changes, expected) in cases {
        server.reset().await;
        let mut document = metadata(&uri);
        for (key, value) in changes.as_object().unwrap() {
            document[key] = value.clone();
        }
        serve(&server, "/.well-known/oauth-authorization-server", &document).await;
        let error = start_error(settings(&uri, unused_database, &uri, true)).await;
        for part in expected {
            assert!(error.contains(part), "{case}: {part:?} not in {error}");
        }
        assert!(!error.contains(SECRET), "{error}");
    }
}

/// The OpenID Connect location is tried when RFC 8414's is not served; a document that names
/// scopes without the vault's is only a warning (the list is often partial), and an issuer that
/// lists no PKCE methods is not taken to refuse PKCE.
#[tokio::test]
async fn openid_discovery_and_partial_lists_are_accepted() {
    let db = TestDb::create("tv_test").await;
    let server = crate::mock_http::Server::start().await;
    let uri = server.uri();
    let mut document = metadata(&uri);
    document["scopes_supported"] = json!(["openid", "email"]);
    document
        .as_object_mut()
        .unwrap()
        .remove("code_challenge_methods_supported");
    serve(&server, "/.well-known/openid-configuration", &document).await;
    let (client, _stop) = start(settings(&uri, &db.url, &uri, false)).await;
    let begun = begin(&client, "acme").await;
    assert!(begun.authorization_url.starts_with(&format!("{uri}/oauth2/auth?")));
    assert!(begun.authorization_url.contains("code_challenge_method=S256"));
}

/// With its endpoints configured, a vault whose issuer does not answer starts (and warns): a
/// provider's outage must not keep replicas from restarting.
#[tokio::test]
async fn an_unreachable_issuer_is_a_warning_when_the_endpoints_are_configured() {
    let db = TestDb::create("tv_test").await;
    let provider = ScriptedProvider::start("test-client", SECRET, ClientAuth::Post).await;
    let uri = provider.uri();
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let (client, _stop) = start(settings(&uri, &db.url, &closed, true)).await;
    let begun = begin(&client, "acme").await;
    assert!(begun.authorization_url.starts_with(&format!("{uri}/oauth2/auth?")));
}

/// Without configured endpoints the metadata is needed: a few attempts, then start fails,
/// naming the issuer and what each URL answered. An oversized document is not read.
#[tokio::test]
async fn an_issuer_without_usable_metadata_stops_start_when_it_is_needed() {
    let server = crate::mock_http::Server::start().await;
    let uri = server.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(300 * 1024)))
        .mount(&server)
        .await;
    let started = Instant::now();
    let error = start_error(settings(&uri, "postgres://postgres@127.0.0.1:1/unused", &uri, false)).await;
    for part in [
        "no usable metadata for issuer",
        &uri,
        "after 3 attempts",
        "larger than",
        "openid-configuration: HTTP 404",
        "set authorization_endpoint and token_endpoint",
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    // Two backoffs (1 s, 2 s) between the three rounds.
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(
        server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/.well-known/openid-configuration")
            .count(),
        3
    );
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
