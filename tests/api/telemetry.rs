//! Traces and metrics reach an OTLP collector (run in-process here) with the expected names and
//! attributes, continue the caller's W3C trace context, and carry no secret. And a real vault
//! process, logging as in a container, writes JSON lines that name the flow they belong to but
//! not the per-call spans kept for traces.

use std::{collections::HashSet, time::Duration};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, KeyValue},
    trace::v1::{span::SpanKind, Span},
};
use token_vault::{
    config::{LogFormat, LogSettings, TelemetrySettings},
    proto,
};
use tonic::Request;

use crate::{
    callers::{bearer_app, bearer_client},
    helpers::{spawn_app_with, token_from, token_request, TestOptions},
    otlp_collector::{Collector, Keep},
    replicas::Cluster,
};

/// Every span of every export, in the order received.
fn spans_in(traces: &[ExportTraceServiceRequest]) -> Vec<Span> {
    traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.clone())
        .collect()
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn attr_str<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// This test process's telemetry, exported to `collector` (one subscriber per process: each
/// test that calls this runs in a process of its own under nextest).
fn export_to(collector: &Collector) -> token_vault::telemetry::TelemetryGuard {
    token_vault::telemetry::init(
        &LogSettings {
            format: LogFormat::Text,
            level: "warn".into(),
        },
        &TelemetrySettings {
            otlp_endpoint: Some(collector.endpoint.clone()),
            service_name: "token-vault-test".into(),
            metrics_interval: Duration::from_millis(200),
            connection_count_interval: Duration::from_millis(100),
            metrics_listen: None,
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_arrive_named_by_convention_and_without_secrets() {
    let collector = Collector::start(Keep::Exports).await;
    let guard = export_to(&collector);

    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        extra_toml: "[telemetry]\nconnection_count_interval = \"100ms\"\n".into(),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A caller with a W3C trace context: the vault's span continues that trace.
    let mut request = Request::new(proto::GetAccessTokenRequest {
        tenant_id: "acme".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    app.client.clone().get_access_token(request).await.unwrap();
    app.get_token("acme").await.unwrap();
    assert!(app.get_token("nobody").await.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();

    let traces = collector.traces();
    let spans = spans_in(&traces);
    let services: HashSet<_> = traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .filter_map(|r| attr_str(&r.resource.as_ref()?.attributes, "service.name").map(str::to_owned))
        .collect();
    assert_eq!(services, HashSet::from(["token-vault-test".to_string()]));

    let rpc: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "tokenvault.v1.TokenVault/GetAccessToken")
        .collect();
    assert_eq!(rpc.len(), 3, "one server span per GetAccessToken call");
    for span in &rpc {
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(attr_str(&span.attributes, "rpc.system"), Some("grpc"));
        assert_eq!(
            attr_str(&span.attributes, "rpc.service"),
            Some("tokenvault.v1.TokenVault")
        );
        assert_eq!(attr_str(&span.attributes, "rpc.method"), Some("GetAccessToken"));
        assert!(attr(&span.attributes, "rpc.grpc.status_code").is_some());
    }
    let codes: HashSet<i64> = rpc
        .iter()
        .filter_map(|s| match attr(&s.attributes, "rpc.grpc.status_code") {
            Some(Value::IntValue(c)) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(codes, HashSet::from([0, 5]), "OK twice and NOT_FOUND once");

    let continued = rpc
        .iter()
        .find(|s| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c")
        .expect("the call carrying traceparent continued its trace");
    assert_eq!(hex(&continued.parent_span_id), "b7ad6b7169203331");
    // The two calls without one each start a trace of their own, with no parent.
    let roots: Vec<&&Span> = rpc.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 2, "calls without traceparent are roots");
    assert!(roots.iter().all(|s| s.trace_id != continued.trace_id));
    assert_ne!(roots[0].trace_id, roots[1].trace_id);

    // The refresh it caused is a child of that call, and the token request a child of it.
    let refresh = spans
        .iter()
        .find(|s| s.name == "refresh" && s.parent_span_id == continued.span_id)
        .expect("a refresh span under the RPC span");
    let token_request = spans
        .iter()
        .find(|s| s.name == "POST token endpoint" && s.parent_span_id == refresh.span_id)
        .expect("a provider span under the refresh span");
    assert_eq!(token_request.kind, SpanKind::Client as i32);
    assert_eq!(attr_str(&token_request.attributes, "grant_type"), Some("refresh_token"));
    assert!(
        matches!(
            attr(&token_request.attributes, "http.response.status_code"),
            Some(Value::IntValue(200))
        ),
        "{:?}",
        token_request.attributes
    );
    let db = spans
        .iter()
        .filter(|s| s.trace_id == continued.trace_id && s.name.ends_with(" connections"))
        .count();
    assert!(db >= 2, "database work of the refresh shows in the same trace");
    let system = if crate::test_db::sqlite_store() {
        "sqlite"
    } else {
        "postgresql"
    };
    assert!(spans
        .iter()
        .any(|s| attr_str(&s.attributes, "db.system.name") == Some(system)));

    let metrics = collector.metrics();
    let names: HashSet<String> = metrics
        .iter()
        .flat_map(|m| &m.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| s.metrics.iter().map(|m| m.name.clone()))
        .collect();
    for expected in [
        "tokenvault.access_token.requests",
        "tokenvault.provider.request.duration",
        "tokenvault.refreshes",
        "tokenvault.refresh.provider_requests",
        "tokenvault.refresh.unsaved_rotation_retries",
        "tokenvault.connections",
    ] {
        assert!(names.contains(expected), "metric {expected} missing from {names:?}");
    }

    let everything = format!("{traces:?}{metrics:?}");
    assert!(everything.contains("acme"), "the export is readable");
    for secret in app.provider.issued_secrets().iter().chain([&app.client_secret]) {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret reached the telemetry export"
        );
    }
}

/// Calls the authentication layer refuses still have their server span, with the status they
/// were answered and marked failed: UNAUTHENTICATED for a call without credentials,
/// PERMISSION_DENIED for a caller whose policy does not cover the tenant. The layer answers
/// them before the service runs, so it records the status itself; before, it did so outside
/// the call's span, and the span carried no status at all.
#[tokio::test]
async fn refused_calls_are_traced_with_the_status_they_were_answered() {
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

    let collector = Collector::start(Keep::Exports).await;
    let guard = export_to(&collector);
    let app = bearer_app().await;

    let anonymous = app
        .client
        .clone()
        .get_access_token(token_request("team-a-1"))
        .await
        .expect_err("no credentials");
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated, "{anonymous:?}");
    let denied = bearer_client(app.addr, Some("token-team-a"))
        .await
        .get_access_token(token_request("team-b-1"))
        .await
        .expect_err("team-a may not read team-b's tenants");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();

    let spans = spans_in(&collector.traces());
    let rpc: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "tokenvault.v1.TokenVault/GetAccessToken")
        .collect();
    let mut codes: Vec<i64> = rpc
        .iter()
        .filter_map(|s| match attr(&s.attributes, "rpc.grpc.status_code") {
            Some(Value::IntValue(c)) => Some(*c),
            _ => None,
        })
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [
            tonic::Code::PermissionDenied as i64,
            tonic::Code::Unauthenticated as i64
        ],
        "one span per refused call, each with its status: {rpc:?}"
    );
    for span in rpc {
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32),
            "a refused call's span is marked failed: {span:?}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span names a JSON log line lists (`spans`, outermost first).
fn span_names(line: &serde_json::Value) -> Vec<String> {
    line["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The vault's own binary logging as in a container (JSON lines at info: what the default
/// `auto` format gives when standard output is not a terminal; the tests' settings say text),
/// through hot calls, a caller error and a refresh. Every line is one JSON object; the
/// refresh's lines name the `vault.refresh` span and its tenant; no line lists the per-call
/// RPC span or a statement's span, which are for traces only (formatting them cost the hot
/// path about a quarter of its throughput, docs/performance.md).
#[tokio::test]
async fn a_vault_process_logs_json_lines_naming_the_refresh_and_not_the_per_call_spans() {
    let cluster = Cluster::start(
        1,
        TestOptions {
            access_ttl: 2,
            ..Default::default()
        },
        None,
        &[("TOKEN_VAULT_LOG__FORMAT", "json")],
    )
    .await;
    cluster.connect_tenant("acme").await;
    let token = |tenant: &str| token_from(cluster.client(0), token_request(tenant));
    let first = token("acme").await.unwrap();
    for _ in 0..20 {
        assert_eq!(token("acme").await.unwrap(), first, "served from the cache");
    }
    assert_eq!(token("nobody").await.unwrap_err().code(), tonic::Code::NotFound);
    // Past the refresh margin of a 2 s token: the next call refreshes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = token("acme").await.unwrap();
    assert_ne!(refreshed, first);
    assert_eq!(cluster.provider.stats().refresh_requests, 1);

    let logs = cluster.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "the process logged its start and the flows:\n{logs}");
    for line in &lines {
        for name in span_names(line) {
            assert!(
                name != "rpc" && name != "db",
                "a trace-only span reached a log line: {line}"
            );
        }
        let target = line["target"].as_str().unwrap_or_default();
        assert!(target != "token_vault::rpc" && target != "token_vault::db", "{line}");
    }
    let refresh_line = lines
        .iter()
        .find(|l| l["message"] == "refreshed")
        .unwrap_or_else(|| panic!("the refresh is logged:\n{logs}"));
    let spans = refresh_line["spans"].as_array().unwrap();
    let refresh_span = spans
        .iter()
        .find(|s| s["name"] == "vault.refresh")
        .unwrap_or_else(|| panic!("the refresh's line names its span: {refresh_line}"));
    assert_eq!(refresh_span["tenant_id"], "acme");
    assert_eq!(refresh_line["level"], "INFO");
    for secret in cluster.provider.issued_secrets() {
        assert!(!logs.contains(&secret), "a token reached the log");
    }
}

/// A stampede on one refresh is one `refresh` span in the traces, however many callers wait
/// for it: a vault process exporting to the in-process collector, 50 callers at once for a
/// tenant whose token is due and which that process never cached, so all of them read the
/// row, find it stale and ask for the refresh together. Each caller that joined the refresh
/// in flight used to leave an empty `refresh` span of its own.
#[tokio::test]
async fn callers_joining_a_refresh_in_flight_add_no_refresh_span() {
    let collector = Collector::start(Keep::Exports).await;
    let mut cluster = exporting_cluster(2, &collector, &[]).await;
    cluster.connect_tenant("acme").await;
    // Past the refresh margin of a 2 s token; process 1 has not seen the tenant yet.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tokens: HashSet<String> = cluster
        .stampede("acme", &[1], 50)
        .await
        .into_iter()
        .map(|answer| answer.expect("every caller gets a token"))
        .collect();
    assert_eq!(tokens.len(), 1, "one refreshed token for every caller");
    assert_eq!(cluster.provider.stats().refresh_requests, 1);
    // On SIGTERM the process flushes what its exporter holds before it exits.
    cluster.terminate(1);
    assert!(cluster.wait_exit(1, Duration::from_secs(20)).await.success());

    let spans = spans_in(&collector.traces());
    let named = |name: &str| spans.iter().filter(|s| s.name == name).count();
    assert_eq!(
        named("tokenvault.v1.TokenVault/GetAccessToken"),
        50,
        "one server span per call"
    );
    assert_eq!(named("refresh"), 1, "one refresh span for the one refresh");
    assert_eq!(named("POST token endpoint"), 1, "one token request");
}

/// With a fraction of traces sampled (here none of the traces that start in the vault:
/// `parentbased_traceidratio` at 0), a vault process exports the whole trace of a call whose
/// caller sampled it, its refresh, token request and statements included, and nothing else:
/// not the calls that start their trace in the vault, not the refresh one of them caused, not a
/// call whose caller did not sample its trace, not the vault's background work. Whether a
/// trace is exported is decided where it starts, before any of its spans' data is built
/// (`telemetry::sampling`), from the standard variables. (At 0 a span escaping an unsampled
/// call as a trace of its own would be dropped too: the next test is the one that shows none
/// does.)
#[tokio::test]
async fn a_process_sampling_a_fraction_exports_whole_traces_and_nothing_of_the_rest() {
    let collector = Collector::start(Keep::Exports).await;
    let sampler = [
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ];
    let mut cluster = exporting_cluster(1, &collector, &sampler).await;
    cluster.connect_tenant("acme").await;
    cluster.connect_tenant("beta").await;
    // Past the refresh margin of a 2 s token: the next call for each tenant refreshes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let with_traceparent = |tenant: &str, flags: &str| token_from(cluster.client(0), traced_request(tenant, flags));
    // A refresh in a call that starts its trace here, then one in a call continuing a sampled
    // trace.
    token_from(cluster.client(0), token_request("beta")).await.unwrap();
    with_traceparent("acme", "01").await.unwrap();
    // Hot calls: starting their trace here, and continuing a caller's unsampled one.
    for _ in 0..20 {
        token_from(cluster.client(0), token_request("acme")).await.unwrap();
    }
    with_traceparent("acme", "00").await.unwrap();
    assert_eq!(cluster.provider.stats().refresh_requests, 2);
    // On SIGTERM the process flushes what its exporter holds before it exits.
    cluster.terminate(0);
    assert!(cluster.wait_exit(0, Duration::from_secs(20)).await.success());

    let spans = spans_in(&collector.traces());
    let foreign: Vec<&str> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) != CALLER_TRACE)
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        foreign.is_empty(),
        "spans of traces not sampled were exported: {foreign:?}"
    );
    let named = |name: &str| spans.iter().filter(|s| s.name == name).count();
    assert_eq!(
        named("tokenvault.v1.TokenVault/GetAccessToken"),
        1,
        "the sampled call only"
    );
    assert_eq!(named("refresh"), 1, "its refresh only");
    assert_eq!(named("POST token endpoint"), 1, "its token request only");
    assert!(
        spans.iter().filter(|s| s.name.ends_with(" connections")).count() >= 2,
        "its statements: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

/// At the SDK's default sampler (`parentbased_always_on`), a caller that did not sample its
/// trace gets nothing exported for its call, not even the refresh the call started. That
/// refresh runs on a task of its own; its token request and statements open under spans that
/// are not exported (at the tests' `warn` level no log line wants the refresh's span either)
/// and must not start traces of their own, which this sampler would export. A caller that
/// sampled its trace gets its whole refresh in it.
#[tokio::test]
async fn a_refresh_under_a_caller_that_did_not_sample_exports_nothing() {
    let collector = Collector::start(Keep::Exports).await;
    let mut cluster = exporting_cluster(1, &collector, &[]).await;
    cluster.connect_tenant("acme").await;
    cluster.connect_tenant("beta").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let with_traceparent = |tenant: &str, flags: &str| token_from(cluster.client(0), traced_request(tenant, flags));
    with_traceparent("beta", "00").await.unwrap();
    with_traceparent("acme", "01").await.unwrap();
    assert_eq!(cluster.provider.stats().refresh_requests, 2);
    cluster.terminate(0);
    assert!(cluster.wait_exit(0, Duration::from_secs(20)).await.success());

    let spans = spans_in(&collector.traces());
    let refresh_grants: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "POST token endpoint" && attr_str(&s.attributes, "grant_type") == Some("refresh_token"))
        .collect();
    assert_eq!(refresh_grants.len(), 1, "the sampled call's token request only");
    assert_eq!(hex(&refresh_grants[0].trace_id), CALLER_TRACE);
    let refreshes: Vec<&Span> = spans.iter().filter(|s| s.name == "refresh").collect();
    assert_eq!(refreshes.len(), 1, "the sampled call's refresh only");
    assert_eq!(hex(&refreshes[0].trace_id), CALLER_TRACE);
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "tokenvault.v1.TokenVault/GetAccessToken")
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(hex(&calls[0].trace_id), CALLER_TRACE);
    // The authorizations started traces here, sampled, so the sampler did export roots.
    assert!(spans.iter().any(|s| s.name.ends_with("/CompleteAuthorization")));
}

/// The trace id of the callers' `traceparent` in these tests.
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// `n` vault processes with 2 s tokens, exporting to `collector`, with `env` beside.
async fn exporting_cluster(n: usize, collector: &Collector, env: &[(&str, &str)]) -> Cluster {
    let endpoint = [("TOKEN_VAULT_TELEMETRY__OTLP_ENDPOINT", collector.endpoint.as_str())];
    let env: Vec<(&str, &str)> = endpoint.into_iter().chain(env.iter().copied()).collect();
    Cluster::start(
        n,
        TestOptions {
            access_ttl: 2,
            ..Default::default()
        },
        None,
        &env,
    )
    .await
}

/// GetAccessToken for `tenant` from a caller in the trace [`CALLER_TRACE`], which it sampled
/// (`flags` `01`) or not (`00`).
fn traced_request(tenant: &str, flags: &str) -> Request<proto::GetAccessTokenRequest> {
    let mut request = Request::new(token_request(tenant));
    let header = format!("00-{CALLER_TRACE}-b7ad6b7169203331-{flags}");
    request
        .metadata_mut()
        .insert("traceparent", header.parse().expect("an ASCII header"));
    request
}
