//! The Python example (`examples/python/get_access_token.py`) against the real vault, with the
//! stubs grpcio-tools generated from the proto and a bearer caller: a token, a tenant that is
//! not connected, and a denied tenant with the vault's ErrorInfo reason. `scripts/python-example`
//! (run by `scripts/test`) prepares the virtualenv and the stubs under `target/python-example`.

use std::path::{Path, PathBuf};

use crate::{callers::connect_as, client_crate::bearer_app};

fn prepared() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-example");
    let python = dir.join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/python-example (./scripts/test does)",
        python.display()
    );
    (python, dir.join("stubs"))
}

/// Runs the example for `tenant` as the caller with `token-team-a`: (exit code, stdout, stderr).
async fn run_example(target: std::net::SocketAddr, tenant: &str) -> (i32, String, String) {
    let (python, stubs) = prepared();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/get_access_token.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args(["--target", &target.to_string(), tenant])
        .env("PYTHONPATH", stubs)
        .env("TOKEN_VAULT_TOKEN", "token-team-a")
        .output()
        .await
        .expect("python runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[tokio::test]
async fn the_python_example_gets_a_token_and_reads_the_vaults_error_reasons() {
    let app = bearer_app().await;
    let mut team_a = crate::callers::bearer_client(app.addr, Some("token-team-a")).await;
    connect_as(&app, &mut team_a, "team-a-1").await.unwrap();

    let (code, out, err) = run_example(app.addr, "team-a-1").await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.starts_with("team-a-1: a bearer token for [offline booking.read], valid for 35"),
        "{out}\n{err}"
    );
    assert!(!out.contains(&app.provider.newest_access_token()));

    let (code, out, err) = run_example(app.addr, "team-a-2").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "team-a-2: not connected; start BeginAuthorization"),
        "{err}"
    );

    // Outside team-a's tenants: the reason comes from the ErrorInfo in the status details.
    let (code, out, err) = run_example(app.addr, "team-b-1").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with("team-b-1: PERMISSION_DENIED CALLER_NOT_ALLOWED: "),
        "{err}"
    );
}
