//! Every log line the vault writes at the most verbose level, through a whole life of flows
//! (authorizations, refreshes, rotation, denial, rejected codes, provider failures, bad input,
//! disconnects with their revocations),
//! holds none of the secrets involved: tokens, codes, PKCE verifiers, the client secret. Nor does
//! the error a start-up with a mistyped secret setting prints.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use token_vault::proto;
use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use crate::{
    helpers::{settings_toml, spawn_app_with, TestOptions, REDIRECT_URI},
    provider::Fault,
};

/// Collects everything the global subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a global subscriber writing everything at `trace` here. Once per process:
    /// nextest runs each test in its own.
    pub fn install() -> Self {
        let captured = Captured::default();
        tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(captured.clone())
                    .with_ansi(false),
            )
            .init();
        captured
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_even_at_trace_level() {
    let captured = Captured::default();
    // Each test runs in its own process (nextest), so this subscriber sees only this test.
    tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(captured.clone())
                .with_ansi(false),
        )
        .init();

    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.get_token("acme").await.unwrap();
    app.get_token("globex").await.unwrap();
    // A refresh that fails transiently and is retried, and a re-authorization.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.provider.push_fault(Fault::Answer(503, "{}"));
    app.get_token("acme").await.unwrap();
    app.connect_tenant("acme").await;
    // A denial, a rejected code, a state reused, bad input.
    let mut client = app.client.clone();
    let begun = app.begin("initech").await;
    let _ = client
        .complete_authorization(proto::CompleteAuthorizationRequest {
            callback_url: format!("{REDIRECT_URI}?error=access_denied&state={}", begun.state),
            ..Default::default()
        })
        .await;
    let begun = app.begin("initech").await;
    let _ = client
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state.clone(),
            code: "code_never_issued_secret".into(),
            ..Default::default()
        })
        .await;
    let _ = client
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code: "code_never_issued_secret".into(),
            ..Default::default()
        })
        .await;
    let _ = client
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: String::new(),
            ..Default::default()
        })
        .await;
    // The revoked grant: a refresh token the provider rejects.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.provider.revoke_all();
    assert!(app.get_token("globex").await.is_err());
    // Disconnects: one revoked at the provider, one whose revocation is refused; a listing.
    assert!(app.delete("acme").await.is_ok());
    app.provider
        .state
        .lock()
        .unwrap()
        .revocation_faults
        .push_back(Fault::Answer(503, "{}"));
    assert!(app.delete("globex").await.is_ok());
    let _ = client.list_connections(proto::ListConnectionsRequest::default()).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("refreshed"), "the trace was captured");
    assert!(
        logs.lines().count() > 100,
        "the trace is verbose: {} lines",
        logs.lines().count()
    );
    let mut secrets = app.provider.issued_secrets();
    secrets.push(app.client_secret.clone());
    secrets.push("code_never_issued_secret".into());
    for request in app.provider.requests() {
        secrets.extend(request.form.get("code_verifier").cloned());
        secrets.extend(request.form.get("refresh_token").cloned());
    }
    let revocations = app.provider.revocations();
    assert_eq!(revocations.len(), 2);
    secrets.extend(revocations.iter().filter_map(|r| r.form.get("token").cloned()));
    assert!(secrets.len() >= 12, "{} secrets", secrets.len());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {}",
            logs.lines().find(|l| l.contains(secret.as_str())).unwrap_or_default()
        );
    }
}

/// Runs `token-vault serve` with a valid configuration file and `env` on top, expecting it to
/// stop at once on a configuration error; returns what it printed.
fn serve_with_env(env: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    // Never reached: the configuration is refused before any connection is made.
    let toml = settings_toml(
        "http://127.0.0.1:9",
        "postgres://postgres@127.0.0.1:5432/never_used",
        "a-valid-client-secret",
        &TestOptions::default(),
    );
    std::fs::write(&config, toml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the token-vault binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success(), "a configuration error stops start-up");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_secret_setting_that_is_not_a_string_is_refused_without_printing_it() {
    // The environment provider reads an unquoted number as a number, not as the text it was.
    const DIGITS: &str = "918273645";
    for (variable, setting) in [
        (
            "TOKEN_VAULT_PROVIDERS__UNDERSTORY__CLIENT_SECRET",
            "providers.understory.client_secret",
        ),
        ("TOKEN_VAULT_ENCRYPTION__KEYRING", "encryption.keyring"),
        ("TOKEN_VAULT_DATABASE__URL", "database.url"),
    ] {
        let printed = serve_with_env(&[(variable, DIGITS)]);
        assert!(
            !printed.contains(DIGITS),
            "{variable}: the secret was printed:\n{printed}"
        );
        assert!(
            printed.to_lowercase().contains(setting),
            "{variable}: the setting is not named:\n{printed}"
        );
        assert!(printed.contains("must be a string"), "{printed}");
    }

    // The advice works: wrapped in double quotes, the same digits are a string. The start-up
    // then fails on a later, unrelated setting, which shows the secret was accepted.
    let printed = serve_with_env(&[
        ("TOKEN_VAULT_PROVIDERS__UNDERSTORY__CLIENT_SECRET", "\"0123\""),
        ("TOKEN_VAULT_VAULT__MAX_MARGIN_FRACTION", "2.0"),
    ]);
    assert!(printed.contains("vault.max_margin_fraction"), "{printed}");
    assert!(!printed.contains("must be a string"), "{printed}");
}
