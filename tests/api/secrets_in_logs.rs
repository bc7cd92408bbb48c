//! Every log line the vault writes at the most verbose level, through a whole life of flows
//! (authorizations, refreshes, rotation, denial, rejected codes, provider failures, bad input),
//! holds none of the secrets involved: tokens, codes, PKCE verifiers, the client secret.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use token_vault::proto;
use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use crate::{
    helpers::{spawn_app_with, TestOptions, REDIRECT_URI},
    provider::Fault,
};

/// Collects everything the global subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

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
    assert!(secrets.len() >= 12, "{} secrets", secrets.len());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {}",
            logs.lines().find(|l| l.contains(secret.as_str())).unwrap_or_default()
        );
    }
}
