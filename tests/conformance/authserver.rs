//! The real authorization server: `tests/conformance/server/server.mjs` (oidc-provider, set up
//! like Ory Hydra) run as a child process on a free loopback port, with its event log, and the
//! server's own introspection and revocation endpoints for checking what the vault holds.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A client registered in `server.mjs`; the values must match the script.
#[derive(Clone, Copy, Debug)]
pub struct OAuthClient {
    pub id: &'static str,
    pub secret: &'static str,
    /// The one token endpoint auth method the server accepts from this client.
    pub auth_method: &'static str,
}

/// Authenticates in the request body.
pub const POST_CLIENT: OAuthClient = OAuthClient {
    id: "vault-post",
    secret: "vault-post-secret",
    auth_method: "client_secret_post",
};

/// Authenticates with HTTP Basic. The colon in the id and the reserved characters in the secret
/// only survive if both are form-urlencoded before base64 (RFC 6749 §2.3.1).
pub const BASIC_CLIENT: OAuthClient = OAuthClient {
    id: "vault:basic",
    secret: "b4sic secret/+:%&=",
    auth_method: "client_secret_basic",
};

/// Like `POST_CLIENT`, but the server refuses its authorization requests without PKCE.
pub const PKCE_CLIENT: OAuthClient = OAuthClient {
    id: "vault-pkce",
    secret: "vault-pkce-secret",
    auth_method: "client_secret_post",
};

/// The resource server the script knows (RFC 8707), Understory's API audience.
pub const AUDIENCE: &str = "https://api.understory.io";
/// Every client's registered redirect URI. Nothing listens there: the browser stops at it.
pub const REDIRECT_URI: &str = "http://localhost:3000/oauth/callback";

pub struct ServerOptions {
    /// `expires_in` of every access token, in seconds.
    pub access_ttl: u64,
    /// How long an authorization code is accepted, in seconds.
    pub code_ttl: u64,
    /// How long a refresh token lives from its issue, in seconds (Hydra: 30 days).
    pub refresh_ttl: u64,
    /// Other providers' behaviour, as the script's flags (`--no-rotation`,
    /// `--access-type-offline`, `--omit-expires-in`).
    pub quirks: &'static [&'static str],
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            access_ttl: 3599,
            code_ttl: 600,
            refresh_ttl: 30 * 24 * 3600,
            quirks: &[],
        }
    }
}

pub struct AuthServer {
    child: Option<tokio::process::Child>,
    /// The server's standard input: it exits when this closes, also if the test process dies
    /// without running any destructor.
    _stdin: Option<tokio::process::ChildStdin>,
    port: u16,
    options: ServerOptions,
    /// Holds the state file (tokens and grants), the event log and the server's output; kept
    /// when a test fails, for reading.
    pub dir: PathBuf,
    http: reqwest::Client,
}

/// A port free at the moment of asking; the server binds it a moment later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// reqwest is built without a bundled TLS crypto provider; plain HTTP still wants one installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl AuthServer {
    pub async fn start(options: ServerOptions) -> Self {
        assert!(
            repo_root().join("node_modules/oidc-provider/package.json").exists(),
            "oidc-provider is not installed: run `npm ci` in the repository root (./scripts/test does it)"
        );
        install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("token-vault-conformance-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            _stdin: None,
            port: free_port(),
            options,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        server.spawn().await;
        server
    }

    /// Starts the script on this server's port with its state file, and waits until it answers.
    async fn spawn(&mut self) {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(repo_root().join("tests/conformance/server/server.mjs"))
            .args(["--port", &self.port.to_string()])
            .arg("--state")
            .arg(self.dir.join("state.json"))
            .arg("--events")
            .arg(self.dir.join("events.jsonl"))
            .args(["--access-ttl", &self.options.access_ttl.to_string()])
            .args(["--code-ttl", &self.options.code_ttl.to_string()])
            .args(["--refresh-ttl", &self.options.refresh_ttl.to_string()])
            .args(["--redirect-uri", REDIRECT_URI])
            .args(self.options.quirks)
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .expect("`node` runs (Node.js 20 or later must be installed)");
        self._stdin = child.stdin.take();
        self.child = Some(child);
        let discovery = format!("{}/.well-known/openid-configuration", self.issuer());
        let started = Instant::now();
        loop {
            if let Ok(r) = self.http.get(&discovery).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the authorization server exited ({status}): {}", self.output());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the authorization server never answered: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server outright, as a crash or a network partition would look to the vault.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Starts the server again on the same port; the state file keeps its tokens and grants.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// What the server printed, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Every event the server logged so far, in order (across restarts).
    pub fn events(&self) -> Events {
        let text = std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default();
        Events(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    }

    fn authenticated(
        &self,
        client: &OAuthClient,
        url: String,
        form: &mut Vec<(&'static str, String)>,
    ) -> reqwest::RequestBuilder {
        let request = self.http.post(url);
        if client.auth_method == "client_secret_basic" {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request.basic_auth(enc(client.id), Some(enc(client.secret)))
        } else {
            form.push(("client_id", client.id.into()));
            form.push(("client_secret", client.secret.into()));
            request
        }
    }

    /// The server's RFC 7662 introspection of `token`, as `client`.
    pub async fn introspect(&self, client: &OAuthClient, token: &str) -> Value {
        let mut form = vec![("token", token.to_owned())];
        let request = self.authenticated(client, format!("{}/token/introspection", self.issuer()), &mut form);
        let response = request.form(&form).send().await.unwrap();
        assert!(response.status().is_success(), "introspection failed: {response:?}");
        response.json().await.unwrap()
    }

    /// Whether the server considers `token` a live access token.
    pub async fn is_active(&self, client: &OAuthClient, token: &str) -> bool {
        self.introspect(client, token).await["active"] == Value::Bool(true)
    }

    /// Presents `refresh_token` at the token endpoint as `client` would: the HTTP status and
    /// the JSON answer.
    pub async fn refresh_directly(&self, client: &OAuthClient, refresh_token: &str) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.to_owned()),
        ];
        let request = self.authenticated(client, format!("{}/token", self.issuer()), &mut form);
        let response = request.form(&form).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Revokes `token` at the RFC 7009 endpoint, as `client`; the server revokes its whole grant,
    /// as Hydra does.
    pub async fn revoke(&self, client: &OAuthClient, token: &str) {
        let mut form = vec![("token", token.to_owned())];
        let request = self.authenticated(client, format!("{}/token/revocation", self.issuer()), &mut form);
        let response = request.form(&form).send().await.unwrap();
        assert!(response.status().is_success(), "revocation failed: {response:?}");
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("authorization server files kept in {}", self.dir.display());
        }
    }
}

/// The server's event log: JSON objects with at least `event`.
#[derive(Debug, Clone)]
pub struct Events(pub Vec<Value>);

impl Events {
    pub fn named(&self, name: &str) -> Vec<&Value> {
        self.0.iter().filter(|e| e["event"] == name).collect()
    }

    /// Successful token requests of one grant type.
    pub fn grants(&self, grant_type: &str) -> Vec<&Value> {
        self.named("grant.success")
            .into_iter()
            .filter(|e| e["grant_type"] == grant_type)
            .collect()
    }

    pub fn refreshes(&self) -> Vec<&Value> {
        self.grants("refresh_token")
    }

    pub fn code_exchanges(&self) -> Vec<&Value> {
        self.grants("authorization_code")
    }

    /// Failed token requests.
    pub fn grant_errors(&self) -> Vec<&Value> {
        self.named("grant.error")
    }

    /// Asserts the refresh tokens form one unbroken chain: each refresh used exactly the refresh
    /// token the previous exchange or refresh issued, so the vault always stored (and presented)
    /// the newest one, and no refresh token was presented twice.
    pub fn assert_one_rotation_chain(&self) {
        let exchanges = self.code_exchanges();
        assert_eq!(exchanges.len(), 1, "one code exchange expected: {self:#?}");
        let mut latest = exchanges[0]["refresh_token_issued"].clone();
        assert!(
            latest.is_string(),
            "the code exchange issued no refresh token: {self:#?}"
        );
        for refresh in self.refreshes() {
            assert_eq!(
                refresh["refresh_token_used"], latest,
                "a refresh did not use the newest refresh token: {self:#?}"
            );
            latest = refresh["refresh_token_issued"].clone();
        }
        assert!(
            self.named("reuse_detected").is_empty(),
            "a refresh token was presented twice: {self:#?}"
        );
        assert!(
            self.named("grant.revoked").is_empty(),
            "the server revoked a grant: {self:#?}"
        );
    }
}
