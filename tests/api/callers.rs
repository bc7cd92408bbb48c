//! Caller authentication and policy: mutual TLS (SPIFFE URI SANs from a test CA), bearer
//! tokens configured as SHA-256 hashes, default deny, per-tenant policy, per-caller limits.
//! Certificates are made at test time with rcgen.

use std::time::Duration;

use figment::providers::{Format, Toml};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType};
use time::OffsetDateTime;
use token_vault::{
    auth::{hash_token, Authenticator},
    config::Settings,
    proto::{self, token_vault_client::TokenVaultClient},
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request, Status,
};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use crate::helpers::{assert_reason, connect_tls, spawn_app_with, TestApp, TestOptions};

// ---- test PKI ----

/// A test certificate authority, written to files the vault reads like secret mounts.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub dir: std::path::PathBuf,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("tv-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { ca, dir }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf with `dns` names and `uris`, valid from `not_before` to `not_after`.
    pub fn leaf_valid(
        &self,
        dns: &[&str],
        uris: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Leaf {
        let mut params = CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap();
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn leaf(&self, dns: &[&str], uris: &[&str]) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf_valid(dns, uris, now - time::Duration::hours(1), now + time::Duration::days(1))
    }

    /// The `[tls]` settings for a vault serving `localhost` with a certificate of this CA,
    /// verifying client certificates against it too.
    pub fn server_toml(&self) -> String {
        let server = self.leaf(&["localhost"], &[]);
        let write = |name: &str, text: &str| {
            let path = self.dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nplaintext_health_listen = \"127.0.0.1:0\"\n",
            write("tls.crt", &server.cert),
            write("tls.key", &server.key),
            write("ca.crt", &self.ca_pem()),
        )
    }

    /// A client TLS configuration trusting this CA, presenting `leaf` if given.
    pub fn client(&self, leaf: Option<&Leaf>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem()))
            .domain_name("localhost");
        if let Some(leaf) = leaf {
            tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
        }
        tls
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const BILLING_SPIFFE: &str = "spiffe://cluster.test/ns/billing/sa/billing";

/// Callers for the policy tests: `billing` by certificate, `team-a` and `team-b` by token.
pub fn callers_toml() -> String {
    let hex = |t: &str| hash_token(t).iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        r#"
[auth]
mode = "enforce"
allow_bearer_without_tls = true
[[auth.callers]]
name = "billing"
mtls_uris = ["{BILLING_SPIFFE}"]
rpcs = ["*"]
providers = ["*"]
tenants = ["*"]
[[auth.callers]]
name = "team-a"
bearer_token_sha256 = ["{a}"]
rpcs = ["GetAccessToken", "GetConnection", "BeginAuthorization", "CompleteAuthorization"]
providers = ["understory"]
tenants = ["team-a-*", "shared"]
[[auth.callers]]
name = "team-b"
bearer_token_sha256 = ["{b}"]
rpcs = ["GetAccessToken"]
providers = ["*"]
tenants = ["team-b-*"]
requests_per_second = 1
burst = 2
"#,
        a = hex("token-team-a"),
        b = hex("token-team-b"),
    )
}

// ---- bearer clients ----

#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type BearerClient = TokenVaultClient<InterceptedService<Channel, Bearer>>;

/// A plaintext client presenting `token` (or nothing).
pub async fn bearer_client(addr: std::net::SocketAddr, token: Option<&str>) -> BearerClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
    TokenVaultClient::with_interceptor(channel, Bearer(value))
}

/// Begin, consent, complete for `tenant` as the client's caller.
pub async fn connect_as(app: &TestApp, client: &mut BearerClient, tenant: &str) -> Result<(), Status> {
    let begun = client
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let code = app.provider.consent(&begun.authorization_url);
    client
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await?;
    Ok(())
}

fn token_request(tenant: &str) -> proto::GetAccessTokenRequest {
    proto::GetAccessTokenRequest {
        tenant_id: tenant.into(),
        ..Default::default()
    }
}

/// A vault with `callers_toml` on plaintext: bearer callers only (no certificate can be shown).
pub async fn bearer_app() -> TestApp {
    spawn_app_with(TestOptions {
        extra_toml: callers_toml().replace(
            &format!("mtls_uris = [\"{BILLING_SPIFFE}\"]"),
            "bearer_token_sha256 = [\"3d2e2b1aa5b4d6e8a7c7b8a2ab0b2d4d1f0e6b9f5e0c9c3a1c2b7e4d5f6a7b8c\"]",
        ),
        ..Default::default()
    })
    .await
}

// ---- tests ----

#[tokio::test]
async fn without_credentials_or_with_an_unknown_token_the_caller_is_unauthenticated() {
    let app = bearer_app().await;
    for token in [None, Some("not-a-configured-token"), Some("Token-team-a")] {
        let mut client = bearer_client(app.addr, token).await;
        let err = client.get_access_token(token_request("team-a-1")).await.unwrap_err();
        assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
        let err = client
            .get_connection(proto::GetConnectionRequest {
                tenant_id: "team-a-1".into(),
                provider: String::new(),
            })
            .await
            .unwrap_err();
        assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
    }
    // The configured token gets through to the vault, which has no such connection.
    let mut client = bearer_client(app.addr, Some("token-team-a")).await;
    let err = client.get_access_token(token_request("team-a-1")).await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
}

#[tokio::test]
async fn a_revoked_token_is_unauthenticated() {
    // Rotation: team-a's entry now lists only the new token's hash.
    let new_hash: String = hash_token("token-team-a-2")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let old_hash: String = hash_token("token-team-a").iter().map(|b| format!("{b:02x}")).collect();
    let app = spawn_app_with(TestOptions {
        extra_toml: callers_toml().replace(&old_hash, &new_hash).replace(
            &format!("mtls_uris = [\"{BILLING_SPIFFE}\"]"),
            "bearer_token_sha256 = [\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"]",
        ),
        ..Default::default()
    })
    .await;
    let err = bearer_client(app.addr, Some("token-team-a"))
        .await
        .get_access_token(token_request("team-a-1"))
        .await
        .unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
    let err = bearer_client(app.addr, Some("token-team-a-2"))
        .await
        .get_access_token(token_request("team-a-1"))
        .await
        .unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
}

#[tokio::test]
async fn health_needs_no_credentials_and_reflection_needs_a_caller() {
    let app = bearer_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut status = ServingStatus::Unknown;
    for _ in 0..50 {
        status = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .expect("health answers without credentials")
            .into_inner()
            .status();
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, ServingStatus::Serving);

    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        ServerReflectionRequest,
    };
    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    // Reflection is a long-lived stream that lists the whole API: not for anyone who reaches
    // the port, but for any configured caller.
    let err = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(list())
        .await
        .expect_err("reflection needs credentials");
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
    // team-b's policy names no RPC but GetAccessToken: reflection is not an RPC of the policy.
    let authenticated = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = Bearer(Some("Bearer token-team-b".parse().unwrap()));
    let mut reflection = ServerReflectionClient::with_interceptor(authenticated, bearer);
    let mut stream = reflection
        .server_reflection_info(list())
        .await
        .expect("reflection answers a configured caller")
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());

    // The same channel, without credentials, reaches nothing else.
    let err = TokenVaultClient::new(channel)
        .get_access_token(token_request("team-a-1"))
        .await
        .unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
}

#[tokio::test]
async fn a_caller_reaching_for_another_teams_tenant_is_denied() {
    let app = bearer_app().await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    let mut team_b = bearer_client(app.addr, Some("token-team-b")).await;
    connect_as(&app, &mut team_a, "team-a-1").await.unwrap();
    assert!(team_a.get_access_token(token_request("team-a-1")).await.is_ok());

    // Another team's tenant, whether or not it exists: the same answer, before any lookup.
    for tenant in ["team-b-1", "team-a", "acme"] {
        let err = team_a.get_access_token(token_request(tenant)).await.unwrap_err();
        let meta = assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
        assert_eq!(meta["caller"], "team-a");
    }
    let err = team_b.get_access_token(token_request("team-a-1")).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    // An RPC outside team-b's policy.
    let err = team_b
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: "team-b-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    // A provider outside team-a's policy is refused as such (not as unknown).
    let err = team_a
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "team-a-1".into(),
            provider: "another".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
}

#[tokio::test]
async fn a_state_of_another_teams_tenant_cannot_be_completed() {
    // team-b may complete authorizations too, but only for its tenants.
    let toml = callers_toml()
        .replace(
            &format!("mtls_uris = [\"{BILLING_SPIFFE}\"]"),
            "bearer_token_sha256 = [\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"]",
        )
        .replace(
            "rpcs = [\"GetAccessToken\"]\nproviders = [\"*\"]\ntenants = [\"team-b-*\"]",
            "rpcs = [\"*\"]\nproviders = [\"*\"]\ntenants = [\"team-b-*\"]",
        );
    let app = spawn_app_with(TestOptions {
        extra_toml: toml,
        ..Default::default()
    })
    .await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    let mut team_b = bearer_client(app.addr, Some("token-team-b")).await;
    let begun = team_a
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: "team-a-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let code = app.provider.consent(&begun.authorization_url);
    let err = team_b
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state.clone(),
            code: code.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    // The code was never exchanged, and the state is burned.
    assert_eq!(app.provider.stats().code_exchanges, 0);
    let err = team_a
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "INVALID_STATE");
}

#[tokio::test]
async fn a_caller_over_its_rate_is_refused_and_others_are_not() {
    let app = bearer_app().await;
    let mut team_b = bearer_client(app.addr, Some("token-team-b")).await;
    let mut team_a = bearer_client(app.addr, Some("token-team-a")).await;
    // team-b: 1 call a second, bursts of 2. The calls themselves fail (no connection): the
    // limit counts calls, not successes.
    for _ in 0..2 {
        let err = team_b.get_access_token(token_request("team-b-1")).await.unwrap_err();
        assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
    let err = team_b.get_access_token(token_request("team-b-1")).await.unwrap_err();
    let meta = assert_reason(&err, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
    let retry_after: u64 = meta["retry_after_ms"].parse().unwrap();
    assert!(retry_after > 0 && retry_after <= 1000, "{retry_after}");
    // team-a is not slowed down by team-b.
    for _ in 0..5 {
        let err = team_a.get_access_token(token_request("team-a-1")).await.unwrap_err();
        assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
    tokio::time::sleep(Duration::from_millis(retry_after + 20)).await;
    let err = team_b.get_access_token(token_request("team-b-1")).await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
}

/// A vault serving TLS with the PKI's certificate, verifying client certificates.
async fn mtls_app(pki: &Pki, client: &Leaf) -> TestApp {
    spawn_app_with(TestOptions {
        extra_toml: format!("{}\n{}", callers_toml(), pki.server_toml()),
        client_tls: Some(pki.client(Some(client))),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn mutual_tls_identifies_a_caller_by_its_spiffe_id() {
    let pki = Pki::new("cluster");
    let billing = pki.leaf(&[], &[BILLING_SPIFFE]);
    let app = mtls_app(&pki, &billing).await;
    app.connect_tenant("acme").await;
    let token = app.get_token("acme").await.expect("billing may read any tenant");
    assert!(!token.access_token.is_empty());

    // A certificate of the same CA naming no caller, and no token: unauthenticated.
    let stranger = pki.leaf(&["stranger.test"], &["spiffe://cluster.test/ns/x/sa/stranger"]);
    let channel = connect_tls(app.addr, pki.client(Some(&stranger))).await;
    let err = TokenVaultClient::new(channel)
        .get_access_token(token_request("acme"))
        .await
        .unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");

    // Kubelet probes speak no TLS: health alone is also served in plaintext on its own port,
    // and nothing else is.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", app.health_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(plain.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers in plaintext");
    assert_ne!(answer.into_inner().status(), ServingStatus::Unknown);
    let err = TokenVaultClient::new(plain)
        .get_access_token(token_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

/// The TLS handshake refuses the client: the call fails without ever reaching the vault, so
/// no vault ErrorInfo comes back.
async fn assert_refused_by_tls(app: &TestApp, tls: ClientTlsConfig) {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    // With TLS 1.3 the client may finish its side of the handshake before the server checks
    // its certificate; then the first call fails instead of the connect.
    let result = match endpoint.connect().await {
        Err(_) => return,
        Ok(channel) => {
            TokenVaultClient::new(channel)
                .get_access_token(token_request("acme"))
                .await
        }
    };
    let err = result.expect_err("a refused certificate gets nothing");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{err:?}"
    );
    assert!(!err.metadata().contains_key("grpc-status-details-bin"), "{err:?}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("cluster");
    let app = mtls_app(&pki, &pki.leaf(&[], &[BILLING_SPIFFE])).await;
    let rogue = Pki::new("rogue");
    // Same SPIFFE ID, wrong issuer.
    let impostor = rogue.leaf(&[], &[BILLING_SPIFFE]);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&impostor.cert, &impostor.key));
    assert_refused_by_tls(&app, tls).await;
    // Without a certificate the handshake succeeds (team-a and team-b use tokens, so client
    // certificates are optional), and the call is unauthenticated.
    let channel = connect_tls(app.addr, pki.client(None)).await;
    let err = TokenVaultClient::new(channel)
        .get_access_token(token_request("acme"))
        .await
        .unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let pki = Pki::new("cluster");
    let app = mtls_app(&pki, &pki.leaf(&[], &[BILLING_SPIFFE])).await;
    let now = OffsetDateTime::now_utc();
    let expired = pki.leaf_valid(
        &[],
        &[BILLING_SPIFFE],
        now - time::Duration::days(2),
        now - time::Duration::days(1),
    );
    assert_refused_by_tls(&app, pki.client(Some(&expired))).await;
}

#[test]
fn production_without_callers_refuses_to_start_naming_the_setting() {
    let base = r#"
mode = "production"
[database]
url = "postgres://x@127.0.0.1/x"
[encryption]
keyring = "k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[providers.understory]
preset = "understory"
client_id = "c"
client_secret = "s"
redirect_uris = ["https://app.example/cb"]
"#;
    // What start-up checks before serving: the settings, then the callers compiled from them.
    let load = |extra: &str| -> Result<(), String> {
        let settings = Settings::from_figment(
            Settings::defaults()
                .merge(Toml::string(base))
                .merge(Toml::string(extra)),
        )
        .map_err(|e| e.to_string())?;
        Authenticator::from_settings(&settings)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = load("").unwrap_err().to_string();
    assert!(err.contains("auth.callers") && err.contains("insecure-dev"), "{err}");
    // Authentication off is for development only: production refuses it, naming the setting.
    let err = load("[auth]\nmode = \"insecure-dev\"\n").unwrap_err().to_string();
    assert!(err.contains("auth.mode") && err.contains("development"), "{err}");
    assert!(load("mode = \"development\"\n[auth]\nmode = \"insecure-dev\"\n").is_ok());

    // A plaintext token where its hash belongs is refused, naming the entry.
    let err = load(
        "[auth]\nallow_bearer_without_tls = true\n[[auth.callers]]\nname = \"x\"\nbearer_token_sha256 = [\"my-secret-token\"]\nrpcs = [\"*\"]\nproviders = [\"*\"]\ntenants = [\"*\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("auth.callers[0].bearer_token_sha256[0]"), "{err}");
    assert!(!err.contains("my-secret-token"), "{err}");

    // Bearer tokens over plaintext need saying so.
    let hash: String = hash_token("t").iter().map(|b| format!("{b:02x}")).collect();
    let err = load(&format!(
        "[[auth.callers]]\nname = \"x\"\nbearer_token_sha256 = [\"{hash}\"]\nrpcs = [\"*\"]\nproviders = [\"*\"]\ntenants = [\"*\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("tls.cert_file"), "{err}");
}

/// An empty provider in a request is the default provider, resolved before the policy is
/// checked: a caller limited to another provider can't reach the default one by leaving the
/// field empty.
#[tokio::test]
async fn an_empty_provider_is_checked_as_the_default_provider() {
    let hex: String = hash_token("token-other-only")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            r#"
[vault]
default_provider = "understory"
[providers.other]
authorization_endpoint = "https://other.example/authorize"
token_endpoint = "https://other.example/token"
client_id = "c"
client_secret = "s"
redirect_uris = ["https://app.example/oauth/callback"]
request_timeout = "1s"
[auth]
mode = "enforce"
allow_bearer_without_tls = true
[[auth.callers]]
name = "other-only"
bearer_token_sha256 = ["{hex}"]
rpcs = ["GetConnection"]
providers = ["other"]
tenants = ["*"]
"#
        ),
        ..Default::default()
    })
    .await;
    let mut client = bearer_client(app.addr, Some("token-other-only")).await;
    let ask = |provider: &str| proto::GetConnectionRequest {
        tenant_id: "acme".into(),
        provider: provider.into(),
    };
    let err = client.get_connection(ask("")).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let err = client.get_connection(ask("understory")).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let err = client.get_connection(ask("other")).await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
}
