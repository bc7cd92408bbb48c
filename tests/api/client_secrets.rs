//! Rotating a provider's client secret without downtime (`client_secret_files`): a secret the
//! provider rejects with `invalid_client` is followed by the next one for the same request, and
//! the one that works is remembered, logged and counted; the files are re-read while the vault
//! runs, a broken one refused; no secret reaches a log line.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use secrecy::ExposeSecret;
use token_vault::{config::ClientSecrets, proto};

use crate::{
    helpers::{TestApp, TestOptions},
    provider::ClientAuth,
    secrets_in_logs::Captured,
};

/// A directory of secret files, as a Kubernetes Secret is mounted.
struct SecretDir(PathBuf);

impl SecretDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tv-client-secrets-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Replaces a file whole (write, then rename), as the kubelet's symlink swap does: the
    /// vault never reads half a secret.
    fn write(&self, name: &str, content: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// `[providers.understory]` with these files, re-read every 200 ms.
    fn toml(&self, names: &[&str]) -> String {
        let files: Vec<String> = names
            .iter()
            .map(|n| format!("{:?}", self.path(n).display().to_string()))
            .collect();
        format!(
            "[keys]\nreload_interval = \"200ms\"\n[providers.understory]\nclient_secret_files = [{}]\n",
            files.join(", ")
        )
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn secrets(app: &TestApp) -> ClientSecrets {
    app.vault
        .provider_client("understory")
        .expect("the provider is configured")
        .client_secrets()
        .clone()
}

fn values(secrets: &ClientSecrets) -> Vec<String> {
    secrets
        .current()
        .0
        .iter()
        .map(|s| s.expose_secret().to_owned())
        .collect()
}

/// Waits (bounded generously) until `done` holds: reloads happen on the vault's schedule.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A refresh forced by reporting the current access token rejected (no waiting on expiry).
async fn refresh(app: &TestApp, tenant: &str) -> Result<String, tonic::Status> {
    let current = app.get_token(tenant).await?.access_token;
    app.client
        .clone()
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: tenant.into(),
            rejected_access_token: current.clone(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().access_token)
        .map(|token| {
            assert_ne!(token, current, "a new access token");
            token
        })
}

async fn spawn(dir: &SecretDir, names: &[&str], auth: ClientAuth) -> TestApp {
    crate::helpers::spawn_app_with(TestOptions {
        auth,
        extra_toml: dir.toml(names),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_rejected_secret_is_followed_by_the_next_once_and_the_working_one_remembered() {
    let logs = Captured::install();
    let dir = SecretDir::new();
    let (old, new) = ("old-secret-3f9a1c", "new-secret-7b2e4d");
    dir.write("client-secret", old);
    dir.write("client-secret-next", &format!("{new}\n"));
    // The helper's provider accepts the helper's secret; it is told ours below.
    let app = spawn(&dir, &["client-secret", "client-secret-next"], ClientAuth::Post).await;
    app.provider.set_client_secret(old);
    app.connect_tenant("acme").await;
    let secrets = secrets(&app);
    assert_eq!(values(&secrets), [old, new]);
    assert_eq!(secrets.in_use(), 0);

    // The operator changes the secret at the provider: the old one is rejected from now on.
    app.provider.set_client_secret(new);
    let before = app.provider.stats();
    refresh(&app, "acme")
        .await
        .expect("the refresh succeeds with the next secret");
    let after = app.provider.stats();
    assert_eq!(
        after.refresh_requests - before.refresh_requests,
        2,
        "one invalid_client, one success"
    );
    assert_eq!(after.refreshes_ok - before.refreshes_ok, 1);
    assert_eq!(
        after.reuse_detected, 0,
        "the refresh token re-sent after invalid_client is no reuse"
    );
    let requests = app.provider.requests();
    let last_two: Vec<_> = requests[requests.len() - 2..]
        .iter()
        .map(|r| (r.form["client_secret"].clone(), r.form["refresh_token"].clone()))
        .collect();
    assert_eq!(last_two[0].0, old);
    assert_eq!(last_two[1].0, new);
    assert_eq!(last_two[0].1, last_two[1].1, "the same request, with the next secret");
    assert_eq!((secrets.in_use(), secrets.switches()), (1, 1));

    // The next refresh uses the working secret directly.
    let before = app.provider.stats();
    refresh(&app, "acme").await.unwrap();
    assert_eq!(app.provider.stats().refresh_requests - before.refresh_requests, 1);
    assert_eq!(secrets.switches(), 1);

    // Said once in the log, by position; no secret in any line, whatever the level.
    let text = logs.text();
    assert_eq!(text.matches("client secret #2 works now").count(), 1, "{text}");
    for secret in [old, new, app.client_secret.as_str()] {
        assert!(!text.contains(secret), "a client secret reached the log");
    }
}

#[tokio::test]
async fn every_secret_rejected_is_provider_rejected_client_and_nothing_is_remembered() {
    let dir = SecretDir::new();
    dir.write("a", "first-secret");
    dir.write("b", "second-secret");
    let app = spawn(&dir, &["a", "b"], ClientAuth::Basic).await;
    app.provider.set_client_secret("first-secret");
    app.connect_tenant("acme").await;
    app.provider.set_client_secret("neither");
    let before = app.provider.stats();
    let status = refresh(&app, "acme").await.unwrap_err();
    crate::helpers::assert_reason(&status, tonic::Code::Internal, "PROVIDER_REJECTED_CLIENT");
    let secrets = secrets(&app);
    assert_eq!((secrets.in_use(), secrets.switches()), (0, 0));
    let stats = app.provider.stats();
    assert_eq!(stats.reuse_detected, 0);
    // Each attempt of the refresh tries each secret once (the vault's own retries aside).
    assert_eq!((stats.refresh_requests - before.refresh_requests) % 2, 0);
}

#[tokio::test]
async fn a_rotation_end_to_end_needs_no_restart_and_fails_no_caller() {
    let dir = SecretDir::new();
    let (old, new) = ("rotation-old-secret", "rotation-new-secret");
    // Steady state: both files hold the secret in use.
    dir.write("client-secret", old);
    dir.write("client-secret-next", old);
    let app = spawn(&dir, &["client-secret", "client-secret-next"], ClientAuth::Basic).await;
    app.provider.set_client_secret(old);
    app.connect_tenant("acme").await;
    let secrets = secrets(&app);

    // 1. The new secret goes into `client-secret-next`; the vault keeps using the old one.
    dir.write("client-secret-next", new);
    eventually("the new secret is loaded", || values(&secrets) == [old, new]).await;
    refresh(&app, "acme").await.unwrap();
    assert_eq!(secrets.in_use(), 0);

    // 2. The provider switches; every caller request keeps succeeding.
    app.provider.set_client_secret(new);
    for _ in 0..3 {
        refresh(&app, "acme").await.expect("no caller sees the rotation");
    }
    assert_eq!((secrets.in_use(), secrets.switches()), (1, 1));

    // 3. The new secret goes into `client-secret` too: it stays the one in use (now first).
    dir.write("client-secret", new);
    eventually("the rotation is finished", || values(&secrets) == [new, new]).await;
    assert_eq!(secrets.in_use(), 0);
    let before = app.provider.stats();
    refresh(&app, "acme").await.unwrap();
    assert_eq!(app.provider.stats().refresh_requests - before.refresh_requests, 1);
    assert_eq!(secrets.refused_reloads(), 0);
}

#[tokio::test]
async fn a_broken_secret_file_is_refused_and_the_secrets_in_place_kept() {
    let logs = Captured::install();
    let dir = SecretDir::new();
    dir.write("client-secret", "kept-secret-91d2");
    let app = spawn(&dir, &["client-secret"], ClientAuth::Post).await;
    app.provider.set_client_secret("kept-secret-91d2");
    app.connect_tenant("acme").await;
    let secrets = secrets(&app);

    dir.write("client-secret", "\n");
    eventually("the empty file is refused", || secrets.refused_reloads() > 0).await;
    assert_eq!(values(&secrets), ["kept-secret-91d2"]);
    refresh(&app, "acme").await.expect("the kept secret still works");

    std::fs::remove_file(dir.path("client-secret")).unwrap();
    let refused = secrets.refused_reloads();
    eventually("the missing file is refused", || secrets.refused_reloads() > refused).await;
    assert_eq!(values(&secrets), ["kept-secret-91d2"]);
    refresh(&app, "acme").await.expect("the kept secret still works");

    // Fixed: taken again.
    dir.write("client-secret", "fixed-secret-55ab");
    eventually("the fixed file is loaded", || values(&secrets) == ["fixed-secret-55ab"]).await;
    let text = logs.text();
    assert!(text.contains("CLIENT SECRET RELOAD REFUSED"), "the refusal is logged");
    assert!(!text.contains("kept-secret-91d2") && !text.contains("fixed-secret-55ab"));
}
