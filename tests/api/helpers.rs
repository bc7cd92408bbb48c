//! Test plumbing: a database per test, the real server on port 0, the generated client, and
//! the scripted provider.

use std::time::Duration;

use figment::providers::{Format, Toml};
use sqlx::{Connection, PgPool};
use token_vault::{
    config::Settings,
    proto::{self, token_vault_client::TokenVaultClient},
    startup::Application,
    vault::Vault,
};
use tonic::{transport::Channel, Code, Status};
use tonic_types::StatusExt;

use crate::{
    faulty_proxy::FaultyProxy,
    provider::{ClientAuth, ScriptedProvider},
};

pub use crate::test_db::{admin_url, TestDb};

/// Where `TestApp::pool` points on the SQLite store: a port nothing listens on.
const NO_POSTGRES: &str = "postgres://no-postgres-with-the-sqlite-store@127.0.0.1:1/none";

pub const REDIRECT_URI: &str = "https://app.example/oauth/callback";

/// What a test may change before the app starts.
pub struct TestOptions {
    pub auth: ClientAuth,
    pub pkce: bool,
    pub access_ttl: u64,
    /// Extra TOML merged over the generated settings.
    pub extra_toml: String,
    /// Route token requests through a proxy that can reset connections.
    pub faulty_proxy: bool,
    /// Connect the vault to Postgres with `sslmode=require` (application_name
    /// `token-vault-under-test`).
    pub database_tls: bool,
    /// The client's TLS (and client certificate) when the vault serves TLS (`tls.*` in
    /// `extra_toml`).
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            auth: ClientAuth::Post,
            pkce: true,
            access_ttl: 3600,
            extra_toml: String::new(),
            faulty_proxy: false,
            database_tls: false,
            client_tls: None,
        }
    }
}

pub(crate) use crate::test_db::{on_rows, Rows};

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: TokenVaultClient<Channel>,
    pub provider: ScriptedProvider,
    pub pool: PgPool,
    /// The test database on either store (tests ported to both use this, not `pool`).
    pub rows: Rows,
    pub client_secret: String,
    pub vault: Vault,
    pub proxy: Option<FaultyProxy>,
    /// The plaintext health listener beside a TLS one (`tls.plaintext_health_listen`).
    pub health_addr: Option<std::net::SocketAddr>,
    /// Where `GET /metrics` is served (`telemetry.metrics_listen`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The reloads of the TLS files and `auth.policy_file` the vault took and refused.
    pub reloads: token_vault::auth::ReloadCounts,
    /// The running server: sending on (or dropping) the sender stops it, and its task ends once
    /// it has stopped and its background tasks are done. `None` after `shut_down`.
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    // Last: dropped after the pool and server are gone.
    _db: TestDb,
}

/// The settings file a test vault runs with, pointing at `provider_uri` and `database_url`.
pub fn settings_toml(provider_uri: &str, database_url: &str, client_secret: &str, opts: &TestOptions) -> String {
    let auth_method = match opts.auth {
        ClientAuth::Post => "client_secret_post",
        ClientAuth::Basic => "client_secret_basic",
    };
    let (_, keyring) = token_vault::crypto::Keyring::generate("test-key");
    format!(
        r#"
# Development mode only because authentication is off (insecure-dev, refused in production);
# the keyring is given, so nothing else differs from production.
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
[providers.understory]
preset = "understory"
authorization_endpoint = "{provider_uri}/oauth2/auth"
token_endpoint = "{provider_uri}/oauth2/token"
revocation_endpoint = "{provider_uri}/oauth2/revoke"
client_id = "test-client"
client_secret = "{client_secret}"
auth_method = "{auth_method}"
default_scopes = ["booking.read"]
redirect_uris = ["{REDIRECT_URI}"]
user_agent = "Acme/VaultTests"
pkce = {pkce}
request_timeout = "1s"
"#,
        keyring = keyring.trim(),
        pkce = opts.pkce,
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

pub async fn spawn_app_with(opts: TestOptions) -> TestApp {
    let db = TestDb::create("tv_test").await;
    let client_secret = format!("secret_{}", uuid::Uuid::new_v4().simple());
    let provider = ScriptedProvider::start("test-client", &client_secret, opts.auth).await;
    provider.set_access_ttl(opts.access_ttl);
    let database_url = if opts.database_tls {
        // Named, so a test can tell the vault's sessions from its own.
        format!("{}?sslmode=require&application_name=token-vault-under-test", db.url)
    } else {
        db.url.clone()
    };
    let toml = settings_toml(&provider.uri(), &database_url, &client_secret, &opts);
    let proxy = if opts.faulty_proxy {
        Some(FaultyProxy::start(*provider.server.address()).await)
    } else {
        None
    };
    let proxy_toml = proxy
        .as_ref()
        .map(|p| {
            format!(
                "[providers.understory]\ntoken_endpoint = \"http://{}/oauth2/token\"\n",
                p.addr
            )
        })
        .unwrap_or_default();
    let settings = Settings::from_figment(
        Settings::defaults()
            .merge(Toml::string(&toml))
            .merge(Toml::string(&proxy_toml))
            .merge(Toml::string(&opts.extra_toml)),
    )
    .expect("test settings are valid");
    let app = Application::build(settings).await.expect("the app builds");
    let addr = app.local_addr();
    let health_addr = app.plaintext_health_addr();
    let metrics_addr = app.metrics_addr();
    let vault = app.vault().clone();
    let reloads = app.reload_counts();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    let client = match &opts.client_tls {
        Some(tls) => TokenVaultClient::new(connect_tls(addr, tls.clone()).await),
        None => connect(addr).await,
    };
    // Tests that read or write rows themselves use this Postgres pool; on the SQLite store it
    // points nowhere, and those tests are left out of the SQLite run (.config/nextest.toml).
    let pool = if crate::test_db::sqlite_store() {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy(NO_POSTGRES)
            .unwrap()
    } else {
        PgPool::connect(&db.url).await.unwrap()
    };
    let rows = if crate::test_db::sqlite_store() {
        Rows::Sqlite(sqlx::SqlitePool::connect(&db.url).await.unwrap())
    } else {
        Rows::Postgres(pool.clone())
    };
    TestApp {
        addr,
        client,
        provider,
        pool,
        rows,
        client_secret,
        vault,
        proxy,
        health_addr,
        metrics_addr,
        reloads,
        server: Some((stop_tx, server)),
        _db: db,
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> TokenVaultClient<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return TokenVaultClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server at {addr} never answered");
}

/// A TLS channel to the vault at `addr`, whose certificate names `localhost`.
pub async fn connect_tls(addr: std::net::SocketAddr, tls: tonic::transport::ClientTlsConfig) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the TLS server at {addr} never answered");
}

impl TestApp {
    /// Stops the server as SIGTERM would and waits until it has: the listeners closed and the
    /// background tasks finished their last work (the audit writer has written its open
    /// window). The database stays.
    pub async fn shut_down(&mut self) {
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            server
                .await
                .expect("the server task")
                .expect("the server stops cleanly");
        }
    }

    /// A store of the test's own on the test database, as `keys` commands or another process
    /// would open it.
    pub fn store(&self) -> token_vault::store::Store {
        self._db.store(4)
    }

    pub fn database_name(&self) -> String {
        self._db.name.clone()
    }

    /// The test database's URL, as a second vault process or the test itself would use it.
    pub fn database_url(&self) -> &str {
        &self._db.url
    }

    pub async fn begin(&self, tenant: &str) -> proto::BeginAuthorizationResponse {
        self.client
            .clone()
            .begin_authorization(proto::BeginAuthorizationRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .expect("BeginAuthorization succeeds")
            .into_inner()
    }

    /// Begin, consent at the provider, complete: the whole flow for one tenant.
    pub async fn connect_tenant(&self, tenant: &str) -> proto::CompleteAuthorizationResponse {
        let begun = self.begin(tenant).await;
        let code = self.provider.consent(&begun.authorization_url);
        self.client
            .clone()
            .complete_authorization(proto::CompleteAuthorizationRequest {
                state: begun.state,
                code,
                ..Default::default()
            })
            .await
            .expect("CompleteAuthorization succeeds")
            .into_inner()
    }

    pub async fn delete(&self, tenant: &str) -> Result<proto::DeleteConnectionResponse, Status> {
        self.client
            .clone()
            .delete_connection(proto::DeleteConnectionRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn connection(&self, tenant: &str) -> Result<proto::GetConnectionResponse, Status> {
        self.client
            .clone()
            .get_connection(proto::GetConnectionRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get_token(&self, tenant: &str) -> Result<proto::GetAccessTokenResponse, Status> {
        self.client
            .clone()
            .get_access_token(proto::GetAccessTokenRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// GetAccessToken through `client` (any vault's; one replica's in the cluster tests): the
/// token or the status.
pub async fn token_from(
    mut client: TokenVaultClient<Channel>,
    request: impl tonic::IntoRequest<proto::GetAccessTokenRequest>,
) -> Result<String, Status> {
    client
        .get_access_token(request)
        .await
        .map(|r| r.into_inner().access_token)
}

/// The GetAccessToken request for `tenant`, nothing else set.
pub fn token_request(tenant: &str) -> proto::GetAccessTokenRequest {
    proto::GetAccessTokenRequest {
        tenant_id: tenant.into(),
        ..Default::default()
    }
}

/// GetAccessToken for `tenant` with a deadline of `timeout`, as a caller that gives up would.
pub async fn get_token_within(
    client: &mut TokenVaultClient<Channel>,
    tenant: &str,
    timeout: Duration,
) -> Result<String, Status> {
    let mut request = tonic::Request::new(token_request(tenant));
    request.set_timeout(timeout);
    // Only the server keeps the deadline: a limit of the client's own would turn a call the
    // server never answers into DeadlineExceeded, which the tests of callers giving up count
    // as a caller that gave up. A call left hanging holds its test until nextest stops it.
    token_from(client.clone(), request).await
}

/// Asserts the status code and the stable ErrorInfo reason; returns the ErrorInfo metadata.
pub fn assert_reason(status: &Status, code: Code, reason: &str) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "tokenvault");
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    info.metadata.clone()
}

/// Asserts INVALID_ARGUMENT naming `field` in a BadRequest detail.
pub fn assert_bad_field(status: &Status, field: &str) {
    assert_reason(status, Code::InvalidArgument, "INVALID_REQUEST_FIELD");
    let details = status.get_error_details();
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "expected a violation of {field}, got {:?}",
        bad.field_violations
    );
}

/// Every value in every table of the database as text, for scanning for secrets. Byte columns
/// are rendered in Postgres' escape format, where printable ASCII stands as itself, so a
/// plaintext token in a BYTEA column would be found too.
pub async fn dump_all_tables(rows: &Rows) -> String {
    match rows {
        Rows::Postgres(pool) => dump_all_postgres_tables(pool).await,
        Rows::Sqlite(pool) => dump_all_sqlite_tables(pool).await,
    }
}

/// Every value of every SQLite table, each column's bytes as they are stored (text and blobs
/// alike), so that a plaintext token in a BLOB column would be found too.
async fn dump_all_sqlite_tables(pool: &sqlx::SqlitePool) -> String {
    use sqlx::Row;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut out = String::new();
    for table in tables {
        let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
            .fetch_all(pool)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                let value: Option<Vec<u8>> = row.try_get_unchecked(i).unwrap();
                out.push_str(&String::from_utf8_lossy(&value.unwrap_or_default()));
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

async fn dump_all_postgres_tables(pool: &PgPool) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET bytea_output = 'escape'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut out = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        for row in rows {
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}

/// Cuts the test database off for the vault: after `after`, new connections are refused and
/// every existing one is terminated; `lasting` later connections are allowed again.
pub async fn database_outage(database: String, after: Duration, lasting: Duration) {
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    tokio::time::sleep(after).await;
    sqlx::query(&format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database)
    .execute(&mut admin)
    .await
    .unwrap();
    tokio::time::sleep(lasting).await;
    sqlx::query(&format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
