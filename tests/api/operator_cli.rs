//! `token-vault connections list|show|delete` and `keys status`, run as the real binary against
//! a running vault: JSON that scripts parse, page tokens followed, filters applied, a deletion
//! confirmed or declined, failures printed with their status code and stable reason, and the
//! operator's credentials (a bearer token from a file or the environment, a client
//! certificate) presented. No token or secret is ever printed.

use std::{io::Write, path::PathBuf, process::Stdio};

use serde_json::Value;
use token_vault::{auth::hash_token, proto};

use crate::{
    callers::{Pki, BILLING_SPIFFE},
    helpers::{settings_toml, spawn_app, spawn_app_with, TestApp, TestOptions},
};

/// What one run of the binary did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("TOKEN_VAULT_BEARER_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the token-vault binary runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `connections <args> --addr <app>` in a blocking thread, so that the vault keeps serving.
async fn connections(app: &TestApp, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut all = vec!["connections".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(["--addr".to_owned(), format!("http://{}", app.addr)]);
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env, &stdin)
    })
    .await
    .unwrap()
}

fn tenants(listing: &Value) -> Vec<String> {
    listing["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tenant_id"].as_str().unwrap().to_owned())
        .collect()
}

/// No token the provider issued appears in `text`.
fn assert_no_token(app: &TestApp, text: &str) {
    for token in app.provider.issued_secrets() {
        assert!(!text.contains(&token), "a token was printed:\n{text}");
    }
    assert!(!text.contains(&app.client_secret), "the client secret was printed");
}

#[tokio::test]
async fn list_follows_pages_and_filters_show_describes_and_delete_asks_first() {
    let app = spawn_app().await;
    for tenant in ["acme-1", "acme-2", "acme-3", "other"] {
        app.connect_tenant(tenant).await;
    }

    // Pages of one: every page token followed.
    let all = connections(&app, &["list", "--output", "json", "--page-size", "1"], &[], "").await;
    assert!(all.success, "{}", all.stderr);
    assert_eq!(tenants(&all.json()), ["acme-1", "acme-2", "acme-3", "other"]);
    assert_no_token(&app, &all.stdout);

    let acme = connections(
        &app,
        &[
            "list",
            "--tenant-prefix",
            "acme-",
            "--status",
            "active",
            "--output",
            "json",
        ],
        &[],
        "",
    )
    .await;
    assert_eq!(tenants(&acme.json()), ["acme-1", "acme-2", "acme-3"]);
    let limited = connections(
        &app,
        &["list", "--limit", "2", "--page-size", "1", "--output", "json"],
        &[],
        "",
    )
    .await;
    assert_eq!(tenants(&limited.json()), ["acme-1", "acme-2"]);
    let none = connections(&app, &["list", "--status", "disconnected", "--output", "json"], &[], "").await;
    assert_eq!(tenants(&none.json()), Vec::<String>::new());
    let text = connections(&app, &["list"], &[], "").await;
    assert!(text.stdout.contains("4 connection(s)"), "{}", text.stdout);

    let shown = connections(&app, &["show", "acme-1", "--output", "json"], &[], "").await;
    assert!(shown.success, "{}", shown.stderr);
    let shown_json = shown.json();
    assert_eq!(shown_json["tenant_id"], "acme-1");
    assert_eq!(shown_json["provider"], "understory");
    assert_eq!(shown_json["status"], "active");
    assert_eq!(shown_json["has_refresh_token"], true);
    assert!(shown_json["access_token_expires_at"].as_str().unwrap().ends_with('Z'));
    assert_no_token(&app, &shown.stdout);

    // Declined (and end of input declines too): nothing changes.
    for answer in ["n\n", ""] {
        let declined = connections(&app, &["delete", "acme-1"], &[], answer).await;
        assert!(!declined.success, "a declined deletion exits non-zero");
        assert!(declined.stderr.contains("[y/N]"), "{}", declined.stderr);
    }
    assert_eq!(
        app.connection("acme-1").await.unwrap().status,
        proto::ConnectionStatus::Active as i32
    );

    let confirmed = connections(&app, &["delete", "acme-1", "--output", "json"], &[], "y\n").await;
    assert!(confirmed.success, "{}", confirmed.stderr);
    assert_eq!(confirmed.json()["revocation"], "revoked");
    let forced = connections(&app, &["delete", "acme-2", "--yes", "--output", "json"], &[], "").await;
    assert_eq!(forced.json()["revocation"], "revoked");
    assert_eq!(app.provider.revocations().len(), 2);
    let disconnected = connections(&app, &["list", "--status", "disconnected", "--output", "json"], &[], "").await;
    assert_eq!(tenants(&disconnected.json()), ["acme-1", "acme-2"]);
    assert_no_token(&app, &confirmed.stdout);
}

#[tokio::test]
async fn a_failed_call_prints_its_code_and_reason_and_exits_non_zero() {
    let app = spawn_app().await;

    let json = connections(&app, &["show", "nobody", "--output", "json"], &[], "").await;
    assert!(!json.success);
    let error = &json.json()["error"];
    assert_eq!(error["code"], "NOT_FOUND");
    assert_eq!(error["reason"], "CONNECTION_NOT_FOUND");

    let text = connections(&app, &["show", "nobody"], &[], "").await;
    assert!(!text.success);
    assert!(
        text.stderr.contains("NOT_FOUND (CONNECTION_NOT_FOUND)"),
        "{}",
        text.stderr
    );

    let bad = connections(&app, &["show", "bad\ttenant", "--output", "json"], &[], "").await;
    assert_eq!(bad.json()["error"]["reason"], "INVALID_REQUEST_FIELD");

    // Never reached: no server there. The connection failure is the call's error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = tokio::task::spawn_blocking(move || {
        run(
            &[
                "connections",
                "list",
                "--output",
                "json",
                "--addr",
                &format!("http://{closed}"),
            ],
            &[],
            "",
        )
    })
    .await
    .unwrap();
    assert!(!unreachable.success);
    assert_eq!(unreachable.json()["error"]["code"], "UNAVAILABLE");

    // A failure before any call (a CA for a plaintext address) is one JSON document too.
    let misused = connections(
        &app,
        &["list", "--output", "json", "--ca", "/nonexistent/ca.crt"],
        &[],
        "",
    )
    .await;
    assert!(!misused.success);
    let message = misused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("--ca"), "{message}");
}

#[tokio::test]
async fn a_bearer_token_is_read_from_a_file_or_the_environment() {
    const TOKEN: &str = "ops-token-0c4d9e";
    let hex: String = hash_token(TOKEN).iter().map(|b| format!("{b:02x}")).collect();
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            "[auth]\nmode = \"enforce\"\nallow_bearer_without_tls = true\n\
             [[auth.callers]]\nname = \"ops\"\nbearer_token_sha256 = [\"{hex}\"]\n\
             rpcs = [\"ListConnections\", \"GetConnection\", \"DeleteConnection\"]\nproviders = [\"*\"]\ntenants = [\"*\"]\n"
        ),
        ..Default::default()
    })
    .await;

    let anonymous = connections(&app, &["list", "--output", "json"], &[], "").await;
    assert_eq!(anonymous.json()["error"]["code"], "UNAUTHENTICATED");
    assert_eq!(anonymous.json()["error"]["reason"], "CALLER_UNKNOWN");

    let file = std::env::temp_dir().join(format!("tv-token-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let from_file = connections(
        &app,
        &["list", "--output", "json", "--token-file", file.to_str().unwrap()],
        &[],
        "",
    )
    .await;
    let _ = std::fs::remove_file(&file);
    assert!(from_file.success, "{}", from_file.stderr);
    assert_eq!(tenants(&from_file.json()), Vec::<String>::new());

    let from_env = connections(
        &app,
        &["list", "--output", "json"],
        &[("TOKEN_VAULT_BEARER_TOKEN", TOKEN)],
        "",
    )
    .await;
    assert!(from_env.success, "{}", from_env.stderr);

    let wrong = connections(&app, &["list"], &[("TOKEN_VAULT_BEARER_TOKEN", "not-the-token")], "").await;
    assert!(!wrong.success);
    assert!(
        wrong.stderr.contains("UNAUTHENTICATED (CALLER_UNKNOWN)"),
        "{}",
        wrong.stderr
    );
    for output in [&from_file, &from_env, &wrong] {
        assert!(!output.stdout.contains(TOKEN) && !output.stderr.contains(TOKEN));
        assert!(!output.stderr.contains("not-the-token"));
    }
}

#[tokio::test]
async fn mutual_tls_with_the_operators_certificate() {
    let pki = Pki::new("operator");
    let operator = pki.leaf(&[], &[BILLING_SPIFFE]);
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            "{}[auth]\nmode = \"enforce\"\n[[auth.callers]]\nname = \"ops\"\nmtls_uris = [\"{BILLING_SPIFFE}\"]\n\
             rpcs = [\"*\"]\nproviders = [\"*\"]\ntenants = [\"*\"]\n",
            pki.server_toml()
        ),
        client_tls: Some(pki.client(Some(&operator))),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let write = |name: &str, text: &str| -> PathBuf {
        let path = pki.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca, cert, key) = (
        write("operator-ca.crt", &pki.ca_pem()),
        write("operator.crt", &operator.cert),
        write("operator.key", &operator.key),
    );
    let addr = format!("https://localhost:{}", app.addr.port());
    let args = |with_cert: bool| {
        let mut args = vec![
            "connections",
            "list",
            "--output",
            "json",
            "--addr",
            &addr,
            "--ca",
            ca.to_str().unwrap(),
        ];
        if with_cert {
            args.extend(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let (with, without) = (args(true), args(false));
    let (with, without) = tokio::task::spawn_blocking(move || {
        fn as_str(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        (run(&as_str(&with), &[], ""), run(&as_str(&without), &[], ""))
    })
    .await
    .unwrap();

    assert!(with.success, "{}\n{}", with.stdout, with.stderr);
    assert_eq!(tenants(&with.json()), ["acme"]);
    assert!(!without.success, "without a client certificate the call is refused");
    assert!(without.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("transport error"));
}

#[tokio::test]
async fn keys_status_prints_json() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let dir = std::env::temp_dir().join(format!("tv-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The same database; a keyring whose key has the vault's key id (the counts read ids only).
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        settings_toml(
            &app.provider.uri(),
            app.database_url(),
            &app.client_secret,
            &TestOptions::default(),
        ),
    )
    .unwrap();

    let config_arg = config.to_str().unwrap().to_owned();
    // At debug level the text form logs every statement (to stdout); the JSON form stays one
    // document.
    let status = tokio::task::spawn_blocking(move || {
        run(
            &["keys", "status", "--output", "json", "--config", &config_arg],
            &[("TOKEN_VAULT_LOG__LEVEL", "debug")],
            "",
        )
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(status.success, "{}", status.stderr);
    let keys = status.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["key_id"], "test-key");
    assert_eq!(keys[0]["keyring"], "active");
    assert_eq!(keys[0]["access_token"], 1);
    assert_eq!(keys[0]["refresh_token"], 1);
    assert_no_token(&app, &status.stdout);
}
