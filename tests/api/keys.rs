//! Keys over time: a keyring with a new key, `keys rewrap` moving every stored value to it,
//! `keys status` showing when the old key protects nothing, the old key's removal, a value
//! under a key the vault no longer has, reloading a keyring file safely, and the two-phase
//! rotation (a key added decrypt-only, then made active).

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use figment::providers::{Format, Toml};
use token_vault::{
    config::{EncryptionSettings, Mode, Settings},
    crypto::{sealed_key_id, Keyring, SharedKeyring},
    keys::{key_usage, load_keyring, rewrap, KeyringReloader, Reload, ReloadError, RewrapOptions},
    proto::{self, token_vault_client::TokenVaultClient},
    startup::Application,
};
use tonic::{transport::Channel, Code};

use crate::helpers::{
    assert_reason, connect, dump_all_tables, on_rows, settings_toml, spawn_app_with, Rows, TestApp, TestOptions,
};

/// A keyring line `<id>:<base64>` for a fresh key.
fn key_line(id: &str) -> String {
    Keyring::generate(id).1.trim().to_owned()
}

/// The `[encryption]` override for a keyring made of `lines` (newest last).
fn keyring_toml(lines: &[&str]) -> String {
    format!("[encryption]\nkeyring = \"{}\"\n", lines.join(","))
}

/// Another vault process on the same database and provider as `app`, with its own keyring: a
/// restart with a changed keyring. Stops when the returned sender is dropped.
async fn restart_with(
    app: &TestApp,
    keyring: &[&str],
) -> (TokenVaultClient<Channel>, tokio::sync::oneshot::Sender<()>) {
    let toml = settings_toml(
        &app.provider.uri(),
        app.database_url(),
        &app.client_secret,
        &TestOptions::default(),
    );
    let settings = Settings::from_figment(
        Settings::defaults()
            .merge(Toml::string(&toml))
            .merge(Toml::string(&keyring_toml(keyring))),
    )
    .unwrap();
    let server = Application::build(settings).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    (connect(addr).await, stop)
}

async fn get_token(client: &TokenVaultClient<Channel>, tenant: &str) -> Result<String, tonic::Status> {
    client
        .clone()
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().access_token)
}

async fn begin_on(client: &TokenVaultClient<Channel>, tenant: &str) -> proto::BeginAuthorizationResponse {
    client
        .clone()
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await
        .expect("BeginAuthorization succeeds")
        .into_inner()
}

/// Consent at `app`'s provider, then complete on `client` (any vault on the same database).
async fn complete(client: &TokenVaultClient<Channel>, app: &TestApp, begun: proto::BeginAuthorizationResponse) {
    let code = app.provider.consent(&begun.authorization_url);
    client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await
        .expect("CompleteAuthorization succeeds");
}

#[tokio::test]
async fn rewrap_moves_every_value_to_the_new_key_and_the_old_key_can_be_removed() {
    let (a, b) = (key_line("key-a"), key_line("key-b"));
    // Short-lived tokens, so that refreshes write refresh-token history under each keyring.
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        extra_toml: keyring_toml(&[&a]),
        ..Default::default()
    })
    .await;
    let store = app.store();
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.get_token("acme").await.unwrap(); // a refresh: generation 2, history of two
    let pending = app.begin("pending-tenant").await; // a sealed PKCE verifier, not yet used
                                                     // Completing a state deletes it, verifier and all: only states still pending hold one.
    app.begin("pending-tenant-2").await;
    app.begin("pending-tenant-3").await;

    let before = key_usage(&store).await.unwrap();
    assert!(before.values_under("key-a") >= 8, "{before:?}");
    assert_eq!(before.values_not_under("key-a"), 0);

    // Restart with [A, B]: B seals new values, A still opens the old ones.
    let (ab_client, ab_stop) = restart_with(&app, &[&a, &b]).await;
    assert!(get_token(&ab_client, "acme").await.is_ok());
    complete(&ab_client, &app, app.begin("initech").await).await;
    let mixed = key_usage(&store).await.unwrap();
    assert!(mixed.values_under("key-b") >= 2, "new writes use key-b: {mixed:?}");
    assert!(mixed.values_under("key-a") > 0);

    // Small batches, so that several transactions and the keyset pagination are exercised.
    let ab = Keyring::parse(&format!("{a}\n{b}"), None).unwrap();
    let report = rewrap(&store, &ab, &RewrapOptions { batch_size: 2 }).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.total_rewritten() as i64 + report.changed_meanwhile as i64,
        mixed.values_under("key-a")
    );
    let after = key_usage(&store).await.unwrap();
    assert_eq!(after.values_under("key-a"), 0, "{after:?}");
    assert_eq!(after.values_not_under("key-b"), 0);
    let table = after.render(Some(&ab));
    assert!(table.contains("key-b") && table.contains("active"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("key-a") && l.contains(" 0 ")),
        "the old key is listed with nothing left to protect:\n{table}"
    );
    // A second run finds nothing to do.
    let again = rewrap(&store, &ab, &RewrapOptions::default()).await.unwrap();
    assert_eq!(again.total_rewritten(), 0);
    drop(ab_stop);

    // Restart with [B] only: every kind of value opens.
    let (b_client, _b_stop) = restart_with(&app, &[&b]).await;
    let generation = |tenant: &'static str| {
        let rows = app.rows.clone();
        async move {
            on_rows!(rows, |pool| sqlx::query_scalar::<_, i64>(
                "SELECT generation FROM connections WHERE tenant_id = $1"
            )
            .bind(tenant)
            .fetch_one(pool)
            .await
            .unwrap())
        }
    };
    assert_eq!(generation("globex").await, 1);
    for tenant in ["acme", "globex", "initech"] {
        get_token(&b_client, tenant)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e:?}"));
    }
    // globex's token had expired: it was refreshed with its refresh token sealed under A and
    // rewrapped (the provider rotates only a token it issued).
    assert_eq!(generation("globex").await, 2);
    assert_eq!(app.provider.stats().reuse_detected, 0);
    // The PKCE verifier sealed under A, rewrapped: the provider checks it against the challenge.
    complete(&b_client, &app, pending).await;

    // And, after all of it, no token in plaintext anywhere in the database.
    let dump = dump_all_tables(&app.rows).await;
    for secret in app.provider.issued_secrets().iter().chain([&app.client_secret]) {
        assert!(
            !dump.contains(secret.as_str()),
            "plaintext secret found in the database"
        );
    }
}

/// Collects formatted log lines of the current thread (the test's runtime is single-threaded,
/// so the server's tasks log here).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_value_under_a_removed_key_is_internal_and_the_log_names_the_key() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (a, b) = (key_line("retired-2025"), key_line("key-2026"));
    let app = spawn_app_with(TestOptions {
        extra_toml: keyring_toml(&[&a]),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    // The old key removed without a rewrap.
    let (client, _stop) = restart_with(&app, &[&b]).await;
    let err = get_token(&client, "acme").await.unwrap_err();
    let meta = assert_reason(&err, Code::Internal, "INTERNAL_ERROR");
    let error_id = &meta["error_id"];
    assert!(err.message().contains(error_id.as_str()));
    assert!(!err.message().contains("retired-2025"), "internals stay in the log");

    let logged = logs.text();
    let line = logged
        .lines()
        .find(|l| l.contains(error_id.as_str()))
        .unwrap_or_else(|| panic!("no log line with error_id {error_id}:\n{logged}"));
    assert!(line.contains("retired-2025"), "the log names the missing key: {line}");
    assert!(line.contains("not in the keyring"), "{line}");

    // The server goes on serving: a description needs no key, and a new tenant works.
    client
        .clone()
        .get_connection(proto::GetConnectionRequest {
            tenant_id: "acme".into(),
            provider: String::new(),
        })
        .await
        .unwrap();
    complete(&client, &app, begin_on(&client, "globex").await).await;
    assert!(get_token(&client, "globex").await.is_ok());
}

#[tokio::test]
async fn a_keyring_file_reloads_only_when_it_is_safe() {
    let (a, b) = (key_line("key-a"), key_line("key-b"));
    let app = spawn_app_with(TestOptions {
        extra_toml: keyring_toml(&[&a]),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await; // values under key-a
    let store = app.store();

    let dir = std::env::temp_dir().join(format!("tv-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keyring");
    let write = |text: &str| std::fs::write(&path, text).unwrap();
    write(&format!("{a}\n"));
    let settings = EncryptionSettings {
        keyring: None,
        keyring_file: Some(path.clone()),
        active_key: None,
        development_keyring_file: dir.join("unused"),
    };
    let loaded = load_keyring(&settings, Mode::Production).unwrap();
    let shared = SharedKeyring::new(loaded.keyring);
    let mut reloader = KeyringReloader::new(&settings, shared.clone(), loaded.file_digest, store.clone()).unwrap();
    assert_eq!(reloader.check().await.unwrap(), Reload::Unchanged);

    // A new key appended: taken, and it seals from now on.
    write(&format!("{a}\n{b}\n"));
    match reloader.check().await.unwrap() {
        Reload::Replaced {
            added,
            removed,
            previous_active,
            active,
            decrypt_only,
        } => {
            assert_eq!(added.iter().map(|k| k.as_str()).collect::<Vec<_>>(), ["key-b"]);
            assert!(removed.is_empty());
            assert_eq!(previous_active.as_str(), "key-a");
            assert_eq!(active.as_str(), "key-b");
            assert!(decrypt_only.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let aad = token_vault::crypto::Aad::for_generation(token_vault::crypto::Purpose::AccessToken, "t", "p", 1);
    assert_eq!(sealed_key_id(&shared.seal(&aad, b"x").unwrap()), Ok("key-b"));

    // Dropping key-a while it protects acme's tokens: refused, nothing changes.
    write(&format!("{b}\n"));
    match reloader.check().await {
        Err(ReloadError::StillInUse(which)) => assert!(which.contains("key-a"), "{which}"),
        other => panic!("{other:?}"),
    }
    assert!(shared.current().get("key-a").is_some());

    // A broken file, or one that gives key-a other bytes: refused, and the error holds no key.
    write("key-a:not base64\n");
    assert!(matches!(reloader.check().await, Err(ReloadError::Keyring(_))));
    let impostor = key_line("key-a");
    write(&format!("{impostor}\n{b}\n"));
    let err = reloader.check().await.unwrap_err();
    assert!(matches!(err, ReloadError::ChangedKey(_)), "{err:?}");
    assert!(!err.to_string().contains(impostor.split(':').nth(1).unwrap()));
    assert_eq!(shared.current().key_ids().count(), 2);

    // Once rewrapped, the same removal is accepted.
    rewrap(&store, &shared.current(), &RewrapOptions::default())
        .await
        .unwrap();
    write(&format!("{b}\n"));
    match reloader.check().await.unwrap() {
        Reload::Replaced { removed, .. } => {
            assert_eq!(removed.iter().map(|k| k.as_str()).collect::<Vec<_>>(), ["key-a"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(shared.current().get("key-a").is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reloader as a running vault has it: polled, swapping the keyring every flow uses.
#[tokio::test]
async fn a_running_vault_picks_up_a_changed_keyring_file() {
    let (a, b) = (key_line("key-a"), key_line("key-b"));
    let dir = std::env::temp_dir().join(format!("tv-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keyring");
    std::fs::write(&path, format!("{a}\n")).unwrap();
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            "[encryption]\nkeyring_file = \"{}\"\n[keys]\nreload_interval = \"50ms\"\n",
            path.display()
        ),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let key_of = |tenant: &'static str| {
        let rows = app.rows.clone();
        async move {
            let sealed: Vec<u8> = on_rows!(rows, |pool| sqlx::query_scalar(
                "SELECT access_token FROM connections WHERE tenant_id = $1"
            )
            .bind(tenant)
            .fetch_one(pool)
            .await
            .unwrap());
            sealed_key_id(&sealed).unwrap().to_owned()
        }
    };
    assert_eq!(key_of("acme").await, "key-a");

    std::fs::write(&path, format!("{a}\n{b}\n")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.connect_tenant("globex").await;
    assert_eq!(key_of("globex").await, "key-b", "new writes use the reloaded key");
    assert!(app.get_token("acme").await.is_ok(), "old values still open");

    // Dropping key-a while acme's tokens use it is refused: the vault keeps both keys.
    std::fs::write(&path, format!("{b}\n")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let store = app.store();
    assert!(key_usage(&store).await.unwrap().values_under("key-a") > 0);
    app.connect_tenant("initech").await;
    assert_eq!(key_of("initech").await, "key-b");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A temporary directory holding a keyring file, removed on drop.
struct KeyringFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl KeyringFile {
    fn new(lines: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("tv-keyring-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = Self {
            path: dir.join("keyring"),
            dir,
        };
        file.write(lines);
        file
    }

    fn write(&self, lines: &[&str]) {
        std::fs::write(&self.path, format!("{}\n", lines.join("\n"))).unwrap();
    }

    /// Settings that read this file and check it every 50 ms.
    fn toml(&self) -> String {
        format!(
            "[encryption]\nkeyring_file = \"{}\"\n[keys]\nreload_interval = \"50ms\"\n",
            self.path.display()
        )
    }
}

impl Drop for KeyringFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The key id framed into `tenant`'s stored access token.
async fn access_token_key(rows: &Rows, tenant: &str) -> String {
    let sealed: Vec<u8> = on_rows!(rows, |pool| sqlx::query_scalar(
        "SELECT access_token FROM connections WHERE tenant_id = $1"
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap());
    sealed_key_id(&sealed).unwrap().to_owned()
}

/// Connects tenants `{prefix}-0`, `{prefix}-1`, … through `client` until one is sealed under
/// `key` (a reload is asynchronous); panics after 10 s.
async fn connect_until_sealed_under(
    client: &TokenVaultClient<Channel>,
    app: &TestApp,
    prefix: &str,
    key: &str,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0.. {
        let tenant = format!("{prefix}-{i}");
        complete(client, app, begin_on(client, &tenant).await).await;
        let sealed_under = access_token_key(&app.rows, &tenant).await;
        if sealed_under == key {
            return tenant;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new values are still sealed under {sealed_under}, not {key}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn a_key_added_decrypt_only_reaches_every_replica_before_any_seals_with_it() {
    let (a, b) = (key_line("key-a"), key_line("key-b"));
    let b_decrypt_only = format!("{b} decrypt-only");
    let file = KeyringFile::new(&[&a]);
    let app = spawn_app_with(TestOptions {
        extra_toml: file.toml(),
        ..Default::default()
    })
    .await;
    // A replica that has not loaded the new key yet, and one that already seals with it (step
    // 2 reaches replicas in any order).
    let (lagging, _lagging_stop) = restart_with(&app, &[&a]).await;
    let (ahead, _ahead_stop) = restart_with(&app, &[&a, &b]).await;
    complete(&ahead, &app, begin_on(&ahead, "globex").await).await;
    assert_eq!(access_token_key(&app.rows, "globex").await, "key-b");

    // Step 1: the new key, decrypt-only. Once reloaded, the vault opens what key-b sealed…
    file.write(&[&a, &b_decrypt_only]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get_token("globex").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the decrypt-only key was never loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // …but goes on sealing under key-a, which the lagging replica can open.
    app.connect_tenant("acme").await;
    assert_eq!(access_token_key(&app.rows, "acme").await, "key-a");
    get_token(&lagging, "acme")
        .await
        .expect("a replica on the old keyring opens what a reloaded one wrote");
    let ring = Keyring::parse(&std::fs::read_to_string(&file.path).unwrap(), None).unwrap();
    let table = key_usage(&app.store()).await.unwrap().render(Some(&ring));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("key-b") && l.ends_with("decrypt-only")),
        "{table}"
    );

    // Step 2: made active by removing the marker; old values still open.
    file.write(&[&a, &b]);
    connect_until_sealed_under(&app.client, &app, "initech", "key-b").await;
    assert!(app.get_token("acme").await.is_ok());
    assert!(app.get_token("globex").await.is_ok());
}

/// Passes connections to Postgres only once opened, so that a vault's start-up can be held in
/// its migrations: after the keyring is loaded, before the reloader exists.
struct DatabaseGate {
    addr: std::net::SocketAddr,
    /// Notified at the first connection.
    connected: Arc<tokio::sync::Notify>,
    open: tokio::sync::watch::Sender<bool>,
}

impl DatabaseGate {
    async fn start(upstream: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connected = Arc::new(tokio::sync::Notify::new());
        let (open, opened) = tokio::sync::watch::channel(false);
        let gate = Self {
            addr: listener.local_addr().unwrap(),
            connected: connected.clone(),
            open,
        };
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                connected.notify_one();
                let (mut opened, upstream) = (opened.clone(), upstream.clone());
                tokio::spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        gate
    }
}

#[tokio::test]
async fn a_keyring_file_changed_while_the_vault_starts_is_picked_up() {
    let (a, b) = (key_line("key-a"), key_line("key-b"));
    let app = spawn_app_with(TestOptions::default()).await;
    let file = KeyringFile::new(&[&a]);

    // A second vault on the same database, through the gate.
    let mut url = url::Url::parse(app.database_url()).unwrap();
    let upstream = (url.host_str().unwrap().to_owned(), url.port().unwrap_or(5432));
    let gate = DatabaseGate::start(upstream).await;
    url.set_port(Some(gate.addr.port())).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    let toml = settings_toml(
        &app.provider.uri(),
        url.as_str(),
        &app.client_secret,
        &TestOptions::default(),
    );
    let settings = Settings::from_figment(
        Settings::defaults()
            .merge(Toml::string(&toml))
            .merge(Toml::string(&file.toml())),
    )
    .unwrap();
    let building = tokio::spawn(Application::build(settings));

    // The keyring is loaded before the database is touched: change the file while the
    // migrations wait at the gate.
    tokio::time::timeout(std::time::Duration::from_secs(10), gate.connected.notified())
        .await
        .expect("start-up reaches the database");
    file.write(&[&a, &b]);
    gate.open.send(true).unwrap();
    let server = building.await.unwrap().expect("the vault builds");
    let addr = server.local_addr();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));

    connect_until_sealed_under(&connect(addr).await, &app, "acme", "key-b").await;
}
