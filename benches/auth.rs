//! Criterion figures for what authentication and the audit add to every GetAccessToken: the
//! caller's identification (bearer hash compared with every configured hash, or the client
//! certificate's names, read once per connection), its policy and limits, and the audit count;
//! and what the shutdown's cut-off (`api::CutOffLayer`) adds to a call, against the same call
//! without it. The rest of the call is measured by the perf harness (`./scripts/bench`).

use std::{hint::black_box, sync::Arc};

use criterion::{criterion_group, criterion_main, Criterion};
use figment::providers::{Format, Toml};
use http::HeaderMap;
use token_vault::{
    audit::{Audit, AuditEvent, EventKind},
    auth::{hash_token, Authenticator, CertificateNames, Rpc},
    config::Settings,
    connection_key::ConnectionKey,
    store::{PoolOptions, Store},
};

/// 20 callers: 10 by token, 10 by SPIFFE ID, each with a prefix tenant pattern.
fn settings() -> Settings {
    let mut toml = String::from(
        r#"
mode = "production"
[database]
url = "postgres://bench@127.0.0.1:1/none"
[encryption]
keyring = "k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[tls]
cert_file = "unused.crt"
key_file = "unused.key"
client_ca_file = "unused-ca.crt"
[audit]
flush_interval = "1h"
[providers.understory]
preset = "understory"
client_id = "c"
client_secret = "s"
redirect_uris = ["https://app.example/cb"]
"#,
    );
    for i in 0..10 {
        let hash: String = hash_token(&format!("token-{i}"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        toml.push_str(&format!(
            "[[auth.callers]]\nname = \"svc-{i}\"\nbearer_token_sha256 = [\"{hash}\"]\nrpcs = [\"GetAccessToken\"]\nproviders = [\"*\"]\ntenants = [\"team-{i}-*\"]\nmax_concurrent_calls = 1000\nrequests_per_second = 100000000\n"
        ));
        toml.push_str(&format!(
            "[[auth.callers]]\nname = \"mtls-{i}\"\nmtls_uris = [\"spiffe://cluster.local/ns/n{i}/sa/s{i}\"]\nrpcs = [\"GetAccessToken\"]\nproviders = [\"*\"]\ntenants = [\"team-{i}-*\"]\n"
        ));
    }
    Settings::from_figment(Settings::defaults().merge(Toml::string(&toml))).expect("bench settings are valid")
}

fn client_certificate() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["s9.n9.svc".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/n9/sa/s9".try_into().expect("an IA5 string"),
    ));
    vec![params.self_signed(&key).expect("a certificate").der().clone()]
}

fn authentication(c: &mut Criterion) {
    let auth = Authenticator::from_settings(&settings()).expect("the policy builds");
    let mut headers = HeaderMap::new();
    // The last configured token: every hash is compared whatever matches.
    headers.insert("authorization", "Bearer token-9".parse().expect("a header value"));
    c.bench_function("auth_bearer_identify_admit_authorize", |b| {
        b.iter(|| {
            let caller = auth.identify(black_box(&headers), None).expect("known");
            assert!(caller.allows_rpc(Rpc::GetAccessToken));
            let permit = caller.admit(Some(Rpc::GetAccessToken)).expect("within limits");
            let key = ConnectionKey::from_stored(black_box("team-9-acme"), "understory");
            caller.may_use(&key).expect("allowed");
            drop(permit);
        })
    });
    let chain = client_certificate();
    // Once per connection, when its TLS handshake ends.
    c.bench_function("auth_mtls_read_certificate_names", |b| {
        b.iter(|| CertificateNames::read(black_box(&chain)))
    });
    let names = CertificateNames::read(&chain);
    let no_headers = HeaderMap::new();
    c.bench_function("auth_mtls_identify_admit_authorize", |b| {
        b.iter(|| {
            let caller = auth
                .identify(&no_headers, Some(black_box(&names)))
                .map_err(|u| u.detail)
                .expect("known");
            let permit = caller.admit(Some(Rpc::GetAccessToken)).expect("within limits");
            let key = ConnectionKey::from_stored(black_box("team-9-acme"), "understory");
            caller.may_use(&key).expect("allowed");
            drop(permit);
        })
    });
}

fn audit(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _guard = runtime.enter();
    let settings = settings();
    let store = Store::connect_lazy(
        &settings.database.url,
        &PoolOptions {
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(1),
        },
    )
    .expect("a lazy pool");
    let (audit, _writer) = Audit::start(store, &settings.audit, tokio_util::sync::CancellationToken::new());
    let caller: Arc<str> = "svc-9".into();
    let event = |tenant: &str| {
        AuditEvent::new(EventKind::GetAccessToken, &caller, "ok")
            .tenant(tenant)
            .provider("understory")
            .detail("cache")
    };
    c.bench_function("audit_count_same_key", |b| {
        b.iter(|| audit.count(event(black_box("team-9-acme"))))
    });
    let tenants: Vec<String> = (0..40_000).map(|i| format!("team-9-{i:06}")).collect();
    let mut i = 0;
    c.bench_function("audit_count_40k_tenants", |b| {
        b.iter(|| {
            i = (i + 1) % tenants.len();
            audit.count(event(black_box(&tenants[i])))
        })
    });
}

/// Pending on its first poll (waking itself), ready on the next: a call that waits once.
struct WaitsOnce(bool);

impl std::future::Future for WaitsOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

type Answer = Result<http::Response<tonic::body::Body>, std::convert::Infallible>;

/// A service answering on its first poll (a cached token).
fn answers_at_once() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<tonic::body::Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Answer>,
> + Clone {
    tower::service_fn(|_: http::Request<()>| async { Ok(http::Response::new(tonic::body::Body::empty())) })
}

/// A service that waits once before answering (a database read).
fn waits_once() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<tonic::body::Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Answer>,
> + Clone {
    tower::service_fn(|_: http::Request<()>| async {
        WaitsOnce(false).await;
        Ok(http::Response::new(tonic::body::Body::empty()))
    })
}

/// A call answered on its first poll (a cached token) and one that waits once (a database
/// read), each with and without the cut-off's race in front of it.
fn shutdown_cut_off(c: &mut Criterion) {
    use tower::{Layer, Service};

    let (at_once, waiting) = (answers_at_once(), waits_once());
    let cut_off = token_vault::api::CutOffLayer::new(tokio_util::sync::CancellationToken::new());
    let (raced_at_once, raced_waiting) = (cut_off.layer(at_once.clone()), cut_off.layer(waiting.clone()));
    // The server clones the service for every request, so each call here does too.
    c.bench_function("call_answered_at_once", |b| {
        b.iter(|| futures::executor::block_on(at_once.clone().call(black_box(http::Request::new(())))))
    });
    c.bench_function("call_answered_at_once_with_cut_off", |b| {
        b.iter(|| futures::executor::block_on(raced_at_once.clone().call(black_box(http::Request::new(())))))
    });
    c.bench_function("call_that_waits_once", |b| {
        b.iter(|| futures::executor::block_on(waiting.clone().call(black_box(http::Request::new(())))))
    });
    c.bench_function("call_that_waits_once_with_cut_off", |b| {
        b.iter(|| futures::executor::block_on(raced_waiting.clone().call(black_box(http::Request::new(())))))
    });
}

/// `server.call_timeout` as tonic's server timeout kept it, a timer made for every call (here
/// `tokio::time::timeout`'s, made the same way: the clock read, the runtime's handle taken, the
/// timer driver's lock taken when it is dropped), and as `listener::CallTimeoutLayer` keeps it,
/// a timer made only once the call waits.
fn call_timeout(c: &mut Criterion) {
    use tower::{Layer, Service};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // The timers need the runtime's time driver; the calls are polled on this thread.
    let _entered = runtime.enter();
    let limit = std::time::Duration::from_secs(60);
    let (at_once, waiting) = (answers_at_once(), waits_once());
    let layer = token_vault::listener::CallTimeoutLayer::new(limit);
    let (bounded_at_once, bounded_waiting) = (layer.layer(at_once.clone()), layer.layer(waiting.clone()));
    c.bench_function("call_answered_at_once_with_a_timer_per_call", |b| {
        b.iter(|| {
            futures::executor::block_on(tokio::time::timeout(
                limit,
                at_once.clone().call(black_box(http::Request::new(()))),
            ))
        })
    });
    c.bench_function("call_answered_at_once_with_call_timeout", |b| {
        b.iter(|| futures::executor::block_on(bounded_at_once.clone().call(black_box(http::Request::new(())))))
    });
    c.bench_function("call_that_waits_once_with_a_timer_per_call", |b| {
        b.iter(|| {
            futures::executor::block_on(tokio::time::timeout(
                limit,
                waiting.clone().call(black_box(http::Request::new(()))),
            ))
        })
    });
    c.bench_function("call_that_waits_once_with_call_timeout", |b| {
        b.iter(|| futures::executor::block_on(bounded_waiting.clone().call(black_box(http::Request::new(())))))
    });
}

criterion_group!(benches, authentication, audit, shutdown_cut_off, call_timeout);
criterion_main!(benches);
