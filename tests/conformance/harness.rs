//! The vault side: a Postgres database per vault, the vault's settings pointing at the local
//! authorization server, the vault served in-process on port 0 or as real `token-vault`
//! processes, and small wrappers over the generated gRPC client.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use figment::providers::{Format, Toml};
use token_vault::{
    config::Settings,
    proto::{self, token_vault_client::TokenVaultClient},
    startup::Application,
};
use tonic::{transport::Channel, Code, Status};
use tonic_types::StatusExt;

use crate::{
    authserver::{free_port, AuthServer, OAuthClient, AUDIENCE, REDIRECT_URI},
    browser::{Browser, Decision},
    test_db::TestDb,
};

/// The access-token lifetime (seconds) of tests that wait for refreshes: the vault refreshes at
/// half of it, so each expiry costs a test two seconds.
pub const SHORT_TTL: u64 = 4;

/// How a vault is configured for the local server.
#[derive(Clone)]
pub struct VaultOptions {
    pub client: OAuthClient,
    /// The auth method the vault uses; normally the client's own.
    pub auth_method: &'static str,
    pub pkce: bool,
    /// `None`: the `understory` preset's `offline`; `Some("offline_access")` for the OpenID
    /// Connect way.
    pub offline_scope: Option<&'static str>,
    /// Adds `prompt=consent` to the authorization request, which OpenID Connect servers need
    /// before they grant `offline_access`.
    pub prompt_consent: bool,
    /// TOML appended to the settings (after the provider's table, so a bare key lands in it;
    /// start with a `[section]` header for anything else).
    pub extra_toml: String,
    /// Another preset instead of `understory` with the endpoints written out: the provider is
    /// named after it and configured by the local server's issuer, so that its endpoints come
    /// from the server's metadata (discovery) and the preset's own endpoints go unused.
    pub preset: Option<&'static str>,
}

impl VaultOptions {
    pub fn for_client(client: OAuthClient) -> Self {
        Self {
            client,
            auth_method: client.auth_method,
            pkce: true,
            offline_scope: None,
            prompt_consent: false,
            extra_toml: String::new(),
            preset: None,
        }
    }
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self::for_client(crate::authserver::POST_CLIENT)
    }
}

/// The vault's settings: Understory's preset with its endpoints moved to the local server, and
/// the audience sent as RFC 8707 `resource`, which is what oidc-provider understands.
pub fn settings_toml(issuer: &str, database_url: &str, opts: &VaultOptions) -> String {
    let (_, keyring) = token_vault::crypto::Keyring::generate("conformance");
    settings_toml_with_keyring(issuer, database_url, opts, &keyring)
}

/// [`settings_toml`] with a given keyring line, for a test that opens what the vault stored.
pub fn settings_toml_with_keyring(issuer: &str, database_url: &str, opts: &VaultOptions, keyring: &str) -> String {
    // Understory's endpoints written out, or another preset's discovered from the issuer.
    let (name, endpoints) = match opts.preset {
        None => (
            "understory",
            format!(
                "authorization_endpoint = \"{issuer}/auth\"\ntoken_endpoint = \"{issuer}/token\"\n\
                 revocation_endpoint = \"{issuer}/token/revocation\"\n"
            ),
        ),
        Some(preset) => (preset, format!("issuer = \"{issuer}\"\n")),
    };
    let mut provider = format!(
        r#"
[providers.{name}]
preset = "{preset}"
{endpoints}client_id = {client_id}
client_secret = {client_secret}
auth_method = "{auth_method}"
audience = "{AUDIENCE}"
audience_parameter = "resource"
default_scopes = ["booking.read"]
redirect_uris = ["{REDIRECT_URI}"]
pkce = {pkce}
user_agent = "TokenVault/Conformance"
request_timeout = "2s"
"#,
        preset = opts.preset.unwrap_or("understory"),
        client_id = toml_string(opts.client.id),
        client_secret = toml_string(opts.client.secret),
        auth_method = opts.auth_method,
        pkce = opts.pkce,
    );
    if let Some(scope) = opts.offline_scope {
        provider.push_str(&format!("offline_scope = \"{scope}\"\n"));
    }
    if opts.prompt_consent {
        provider.push_str("extra_authorization_params = { prompt = \"consent\" }\n");
    }
    provider.push_str(&opts.extra_toml);
    format!(
        r#"
# Development mode only because authentication is off (insecure-dev, refused in production).
mode = "development"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"
[database]
url = "{database_url}"
max_connections = 10
[encryption]
keyring = "{keyring}"
[log]
format = "text"
level = "warn"
[auth]
mode = "insecure-dev"
[refresh]
lease_ttl = "10s"
poll_interval = "10ms"
max_attempts = 3
backoff = "50ms"
store_retry_max_backoff = "200ms"
{provider}"#,
        keyring = keyring.trim(),
    )
}

/// A quoted TOML basic string: JSON's escapes are TOML's, and the test secrets hold characters
/// that TOML would otherwise read.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A vault served in-process on port 0 with its own database.
pub struct TestVault {
    pub client: TokenVaultClient<Channel>,
    /// The keyring the vault seals with, for a test that opens what it stored.
    pub keyring: token_vault::crypto::Keyring,
    /// Dropping the sender stops the server.
    _stop: tokio::sync::oneshot::Sender<()>,
    _db: TestDb,
}

impl TestVault {
    pub async fn start(server: &AuthServer, opts: &VaultOptions) -> Self {
        let db = TestDb::create("tv_conf").await;
        let (keyring, line) = token_vault::crypto::Keyring::generate("conformance");
        let settings = Settings::from_figment(Settings::defaults().merge(Toml::string(&settings_toml_with_keyring(
            &server.issuer(),
            &db.url,
            opts,
            &line,
        ))))
        .expect("the conformance settings are valid");
        let app = Application::build(settings).await.expect("the vault builds");
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            client: connect(addr).await,
            keyring,
            _stop: stop,
            _db: db,
        }
    }

    /// The vault's database, as the test itself would reach it.
    pub fn database_url(&self) -> &str {
        &self._db.url
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> TokenVaultClient<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return TokenVaultClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the vault at {addr} never answered");
}

/// The calls a test makes, on any vault client (in-process or a process).
pub struct Api(pub TokenVaultClient<Channel>);

impl Api {
    pub async fn begin(&self, tenant: &str) -> proto::BeginAuthorizationResponse {
        self.0
            .clone()
            .begin_authorization(proto::BeginAuthorizationRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .expect("BeginAuthorization succeeds")
            .into_inner()
    }

    pub async fn complete(
        &self,
        request: proto::CompleteAuthorizationRequest,
    ) -> Result<proto::CompleteAuthorizationResponse, Status> {
        self.0
            .clone()
            .complete_authorization(request)
            .await
            .map(|r| r.into_inner())
    }

    /// CompleteAuthorization with the raw callback URL.
    pub async fn complete_url(&self, callback_url: &str) -> Result<proto::CompleteAuthorizationResponse, Status> {
        self.complete(proto::CompleteAuthorizationRequest {
            callback_url: callback_url.into(),
            ..Default::default()
        })
        .await
    }

    /// CompleteAuthorization with the callback's parameters one by one.
    pub async fn complete_params(&self, callback_url: &str) -> Result<proto::CompleteAuthorizationResponse, Status> {
        let q = query(callback_url);
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        self.complete(proto::CompleteAuthorizationRequest {
            state: get("state"),
            code: get("code"),
            error: get("error"),
            error_description: get("error_description"),
            ..Default::default()
        })
        .await
    }

    pub async fn token(&self, tenant: &str) -> Result<proto::GetAccessTokenResponse, Status> {
        self.0
            .clone()
            .get_access_token(proto::GetAccessTokenRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn connection(&self, tenant: &str) -> Result<proto::GetConnectionResponse, Status> {
        self.0
            .clone()
            .get_connection(proto::GetConnectionRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn delete(&self, tenant: &str) -> Result<proto::DeleteConnectionResponse, Status> {
        self.0
            .clone()
            .delete_connection(proto::DeleteConnectionRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Begin, sign in and allow at the server, complete with the callback URL.
    pub async fn connect_tenant(&self, tenant: &str) -> proto::CompleteAuthorizationResponse {
        let begun = self.begin(tenant).await;
        let callback = Browser::new()
            .authorize(&begun.authorization_url, Decision::Allow)
            .await;
        self.complete_url(&callback)
            .await
            .unwrap_or_else(|s| panic!("CompleteAuthorization failed: {s:?}"))
    }
}

/// A URL's query as a map.
pub fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

/// Sleeps until the vault will refresh `token`: its margin is half the token's lifetime (the
/// cap, `vault.max_margin_fraction`), plus a little for clocks.
pub async fn until_refresh_due(token: &proto::GetAccessTokenResponse, lifetime: Duration) {
    sleep_until(expiry(token) - lifetime / 2 + Duration::from_millis(150)).await;
}

/// Sleeps until `token` has expired.
pub async fn until_expired(token: &proto::GetAccessTokenResponse) {
    sleep_until(expiry(token) + Duration::from_millis(150)).await;
}

fn expiry(token: &proto::GetAccessTokenResponse) -> std::time::SystemTime {
    let at = token.expires_at.unwrap();
    std::time::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32)
}

async fn sleep_until(when: std::time::SystemTime) {
    if let Ok(wait) = when.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

/// Asserts the status code and the stable ErrorInfo reason; returns the ErrorInfo metadata.
pub fn assert_reason(status: &Status, code: Code, reason: &str) -> HashMap<String, String> {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "tokenvault");
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    info.metadata.clone()
}

/// Several real `token-vault` processes sharing one database.
pub struct VaultProcesses {
    children: Vec<tokio::process::Child>,
    pub clients: Vec<TokenVaultClient<Channel>>,
    dir: PathBuf,
    _db: TestDb,
}

impl VaultProcesses {
    pub async fn start(n: usize, server: &AuthServer, opts: &VaultOptions) -> Self {
        let db = TestDb::create("tv_conf").await;
        let dir = std::env::temp_dir().join(format!(
            "token-vault-conformance-vaults-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, settings_toml(&server.issuer(), &db.url, opts)).unwrap();
        let mut processes = Self {
            children: Vec::new(),
            clients: Vec::new(),
            dir,
            _db: db,
        };
        // One at a time: the first applies the migrations the others then find done.
        for index in 0..n {
            let port = free_port();
            let log = std::fs::File::create(processes.dir.join(format!("vault-{index}.log"))).unwrap();
            let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .env("TOKEN_VAULT_SERVER__LISTEN", format!("127.0.0.1:{port}"))
                .env("TOKEN_VAULT_LOG__LEVEL", "info")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("the token-vault binary starts");
            processes.children.push(child);
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let started = Instant::now();
            while !token_vault::startup::probe_health(&format!("http://{addr}"))
                .await
                .unwrap_or(false)
            {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "vault process {index} never became SERVING; see {}",
                    processes.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            processes.clients.push(connect(addr).await);
        }
        processes
    }
}

impl Drop for VaultProcesses {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("vault process logs kept in {}", self.dir.display());
        }
    }
}
