//! The client crate (`client/`) against the real vault: bearer and mutual-TLS credentials, a
//! retry driven by the vault's RetryInfo, the reqwest middleware's 401 → report → retry-once
//! path against a scripted provider API, and the crate's examples.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use token_vault_client::{proto::ErrorReason, AccessTokenMiddleware, Client, Code, Connection, Error, RetryPolicy};
use wiremock::{matchers::any, Mock, Request, ResponseTemplate};

use crate::{
    callers::{bearer_client, callers_toml, connect_as, Leaf, Pki, BILLING_SPIFFE},
    helpers::{spawn_app, spawn_app_with, TestApp, TestOptions},
};

#[path = "../../client/examples/get_access_token.rs"]
#[allow(dead_code)]
mod get_access_token_example;
#[path = "../../client/examples/provider_api.rs"]
#[allow(dead_code)]
mod provider_api_example;

/// A vault on plaintext whose callers are known by bearer tokens (`token-team-a`,
/// `token-team-b`, see `callers_toml`).
pub async fn bearer_app() -> TestApp {
    spawn_app_with(TestOptions {
        extra_toml: callers_toml().replace(
            &format!("mtls_uris = [\"{BILLING_SPIFFE}\"]"),
            "bearer_token_sha256 = [\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"]",
        ),
        ..Default::default()
    })
    .await
}

fn plaintext(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

fn reason(e: &Error) -> Option<ErrorReason> {
    e.reason()
}

#[tokio::test]
async fn a_bearer_token_identifies_the_caller_and_its_policy_applies() {
    let app = bearer_app().await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    connect_as(&app, &mut team_a, "team-a-1").await.unwrap();

    let vault = Client::builder(plaintext(&app))
        .bearer_token("token-team-a")
        .connect()
        .await
        .unwrap();
    let token = vault.access_token("team-a-1").await.unwrap();
    assert_eq!(token.secret(), app.provider.newest_access_token());
    assert_eq!(token.scopes(), ["offline", "booking.read"]);
    assert!(!format!("{vault:?} {token:?}").contains("token-team-a"));

    // Outside team-a's tenants: denied, with the reason and the caller named.
    let err = vault.access_token("team-b-1").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err)),
        (Code::PermissionDenied, Some(ErrorReason::CallerNotAllowed))
    );
    assert_eq!(err.metadata()["caller"], "team-a");

    // No token, or an unknown one: unauthenticated, and not retried into a different answer.
    for builder in [
        Client::builder(plaintext(&app)),
        Client::builder(plaintext(&app)).bearer_token("token-nobody"),
    ] {
        let err = builder
            .connect()
            .await
            .unwrap()
            .access_token("team-a-1")
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::Unauthenticated, Some(ErrorReason::CallerUnknown))
        );
    }
}

/// A vault serving TLS for `localhost` with the PKI's certificate, verifying client
/// certificates against the same CA; its own test client presents `client`.
async fn mtls_app(pki: &Pki, client: &Leaf) -> TestApp {
    spawn_app_with(TestOptions {
        extra_toml: format!("{}\n{}", callers_toml(), pki.server_toml()),
        client_tls: Some(pki.client(Some(client))),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_client_certificate_identifies_the_caller_over_mutual_tls() {
    let pki = Pki::new("cluster");
    let billing = pki.leaf(&[], &[BILLING_SPIFFE]);
    let app = mtls_app(&pki, &billing).await;
    app.connect_tenant("acme").await;
    let endpoint = format!("https://localhost:{}", app.addr.port());

    let vault = Client::builder(&endpoint)
        .tls(pki.client(Some(&billing)))
        .connect()
        .await
        .unwrap();
    let token = vault.access_token("acme").await.unwrap();
    assert_eq!(token.secret(), app.provider.newest_access_token());

    // A certificate of the same CA that names no caller: unauthenticated.
    let stranger = pki.leaf(&["stranger.test"], &["spiffe://cluster.test/ns/x/sa/stranger"]);
    let err = Client::builder(&endpoint)
        .tls(pki.client(Some(&stranger)))
        .connect()
        .await
        .unwrap()
        .access_token("acme")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(ErrorReason::CallerUnknown), "{err}");

    // https without TLS settings, or TLS settings for plaintext, are refused before any call.
    let err = Client::builder(&endpoint).connect_lazy().unwrap_err();
    assert!(matches!(err, Error::Settings(_)), "{err}");
    let err = Client::builder(plaintext(&app))
        .tls(pki.client(None))
        .connect_lazy()
        .unwrap_err();
    assert!(matches!(err, Error::Settings(_)), "{err}");
}

#[tokio::test]
async fn a_rate_limited_call_is_retried_after_the_delay_in_the_vaults_retry_info() {
    // team-b: one call a second, bursts of two.
    let app = bearer_app().await;
    let vault = Client::builder(plaintext(&app))
        .bearer_token("token-team-b")
        .connect()
        .await
        .unwrap();
    // NOT_FOUND is final: no retry, no waiting. Two calls use up the burst.
    for _ in 0..2 {
        let err = vault.access_token("team-b-1").await.unwrap_err();
        assert_eq!(reason(&err), Some(ErrorReason::ConnectionNotFound));
    }

    // Without retries the rate limit comes back with the vault's delay.
    let err = vault
        .with_retry(RetryPolicy::none())
        .access_token("team-b-1")
        .await
        .unwrap_err();
    let refused_at = Instant::now();
    assert_eq!(
        (err.code(), reason(&err)),
        (Code::ResourceExhausted, Some(ErrorReason::CallerRateLimited))
    );
    let delay = err.retry_after().expect("a RetryInfo delay");
    assert!(
        delay > Duration::from_millis(100) && delay <= Duration::from_secs(1),
        "{delay:?}"
    );

    // A deadline shorter than the delay: the client does not wait for a retry it cannot make.
    let started = Instant::now();
    let err = vault
        .with_timeout(Duration::from_millis(200))
        .access_token("team-b-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(ErrorReason::CallerRateLimited));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    // With the default policy: the vault is asked again once the delay has passed, and this
    // time the call goes through to the vault's answer for the tenant.
    let started = Instant::now();
    let still_to_wait = delay.saturating_sub(refused_at.elapsed());
    let err = vault.access_token("team-b-1").await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorReason::ConnectionNotFound), "{err}");
    // RetryInfo carries milliseconds: allow for the rounding.
    assert!(
        started.elapsed() + Duration::from_millis(5) >= still_to_wait,
        "retried after {:?}, before the {still_to_wait:?} the vault asked for",
        started.elapsed()
    );
}

/// The provider's API, scripted: it accepts the access tokens the provider issued and has
/// not revoked, and records the `Authorization` header and body of every request.
struct ProviderApi {
    server: crate::mock_http::Server,
    revoked: Arc<Mutex<HashSet<String>>>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl ProviderApi {
    async fn start(app: &TestApp) -> Self {
        let server = crate::mock_http::Server::start().await;
        let revoked = Arc::new(Mutex::new(HashSet::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (issued, revoked_, seen_) = (app.provider.state.clone(), revoked.clone(), seen.clone());
        Mock::given(any())
            .respond_with(move |request: &Request| {
                let authorization = request
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen_.lock().unwrap().push((
                    authorization.clone(),
                    String::from_utf8_lossy(&request.body).into_owned(),
                ));
                let token = authorization.strip_prefix("Bearer ").unwrap_or_default();
                let valid = issued.lock().unwrap().issued_access_tokens.iter().any(|t| t == token)
                    && !revoked_.lock().unwrap().contains(token);
                if valid && !request.url.path().ends_with("/always-401") {
                    ResponseTemplate::new(200).set_body_string("bookings")
                } else {
                    ResponseTemplate::new(401)
                }
            })
            .mount(&server)
            .await;
        Self { server, revoked, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.uri())
    }

    fn revoke(&self, token: &str) {
        self.revoked.lock().unwrap().insert(token.to_owned());
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn on_a_401_the_middleware_reports_the_token_and_retries_once_with_the_refreshed_one() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let vault = Client::builder(plaintext(&app)).connect().await.unwrap();
    let rejected = vault.access_token("acme").await.unwrap().secret().to_owned();
    let api = ProviderApi::start(&app).await;
    api.revoke(&rejected);
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AccessTokenMiddleware::new(vault.clone()))
        .build();

    // A POST, so that the body must be sent again too.
    let response = http
        .post(api.url("/v1/bookings"))
        .body("{\"guests\":2}")
        .with_extension(Connection::new("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refreshed = app.provider.newest_access_token();
    assert_ne!(refreshed, rejected);
    assert_eq!(
        api.seen(),
        [
            (format!("Bearer {rejected}"), "{\"guests\":2}".to_owned()),
            (format!("Bearer {refreshed}"), "{\"guests\":2}".to_owned()),
        ]
    );
    let stats = app.provider.stats();
    assert_eq!(
        (stats.refresh_requests, stats.refreshes_ok),
        (1, 1),
        "the vault refreshed once"
    );

    // The next request carries the refreshed token at once: no 401, no refresh.
    let response = http
        .get(api.url("/v1/bookings"))
        .with_extension(Connection::new("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.seen().len(), 3);
    assert_eq!(app.provider.stats().refresh_requests, 1);

    // A 401 that a new token does not cure is returned after the one retry, not looped on.
    let response = http
        .get(api.url("/v1/always-401"))
        .with_extension(Connection::new("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(api.seen().len(), 5, "one request and one retry");
    assert_eq!(app.provider.stats().refresh_requests, 2);

    // A request that names no tenant never leaves.
    let err = http.get(api.url("/v1/bookings")).send().await.unwrap_err();
    assert!(err.to_string().contains("names no tenant"), "{err}");
    assert_eq!(api.seen().len(), 5);
}

#[tokio::test]
async fn the_examples_run_against_the_vault() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let endpoint = plaintext(&app);

    let line = get_access_token_example::run(&endpoint, None, "acme").await.unwrap();
    assert!(
        line.starts_with("acme: a bearer token for [offline booking.read], valid for "),
        "{line}"
    );
    let line = get_access_token_example::run(&endpoint, None, "nobody").await.unwrap();
    assert_eq!(line, "nobody: not connected; start BeginAuthorization");

    let api = ProviderApi::start(&app).await;
    let out = provider_api_example::run(&endpoint, "acme", &api.url("/v1/me"))
        .await
        .unwrap();
    assert_eq!(out, "200 bookings");
    assert_eq!(
        api.seen()[0].0,
        format!("Bearer {}", app.provider.newest_access_token())
    );
}
