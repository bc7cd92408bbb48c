//! Logs, traces and metrics. Logs go to standard output through `tracing` (JSON lines in
//! containers, readable text at a terminal). When `telemetry.otlp_endpoint` is set, spans and
//! metrics are also exported over OTLP/gRPC; the returned guard flushes them on exit. When
//! `telemetry.metrics_listen` is set, the same metrics are also read for Prometheus, at each
//! scrape, into the registry that [`prometheus_registry`] returns (served by `startup`).
//!
//! Span names and attributes follow the OpenTelemetry semantic conventions: one server span
//! per RPC (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) continuing the
//! caller's W3C trace context, with child spans for the provider call and database work. Which
//! traces are exported is decided once per trace, where it starts, before any span data is
//! built (`sampling`).

use std::{io::IsTerminal, sync::OnceLock};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::TracerProvider as _,
    KeyValue,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    metrics::SdkMeterProvider,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracer, SdkTracerProvider},
    Resource,
};
use tracing::{Dispatch, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    filter::{filter_fn, FilterExt, LevelFilter},
    fmt::{self, MakeWriter},
    layer::{Layered, SubscriberExt},
    registry::LookupSpan,
    util::SubscriberInitExt,
    EnvFilter, Layer, Registry,
};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

mod sampling;

/// The Prometheus exporter's registry, one per process like the global meter provider it reads.
static PROMETHEUS_REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// What `/metrics` serves: the registry that `init` filled with the Prometheus reader, if
/// `telemetry.metrics_listen` was set.
pub fn prometheus_registry() -> Option<prometheus::Registry> {
    PROMETHEUS_REGISTRY.get().cloned()
}

/// The registry's metrics in the Prometheus text exposition format (0.0.4), and its content type.
/// Gathering runs the observable instruments' callbacks, which only read counters.
pub fn encode_prometheus(registry: &prometheus::Registry) -> Result<(Vec<u8>, &'static str), String> {
    use prometheus::Encoder as _;
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    encoder
        .encode(&registry.gather(), &mut body)
        .map_err(|e| e.to_string())?;
    Ok((body, prometheus::TEXT_FORMAT))
}

/// Keeps the exporters alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops telemetry export"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry: cannot build the OTLP exporter for {what}: {message}")]
pub struct TelemetryError {
    what: &'static str,
    message: String,
}

/// Installs the global subscriber (and, with an OTLP endpoint, the global tracer and meter
/// providers; with `metrics_listen`, the meter provider and the registry
/// that [`prometheus_registry`] returns). Must run inside a Tokio runtime when exporting.
/// `RUST_LOG`, when set, wins over the configured log level; it does not filter exported spans.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let log_layer = log_layer(json, std::io::stdout().is_terminal(), filter, std::io::stdout);

    let mut guard = TelemetryGuard {
        tracer_provider: None,
        meter_provider: None,
    };
    let resource = Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    // One meter provider with a reader per destination, so that OTLP and Prometheus see the same
    // instruments, attributes and units: whichever is configured, or both.
    let mut meters = SdkMeterProvider::builder().with_resource(resource.clone());
    let mut any_reader = false;
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| TelemetryError {
                what: "metrics",
                message: e.to_string(),
            })?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
            .with_interval(telemetry.metrics_interval)
            .build();
        meters = meters.with_reader(reader);
        any_reader = true;
    }
    if telemetry.metrics_listen.is_some() {
        // Read at each scrape (cumulative, as Prometheus wants), into a registry of our own
        // rather than the `prometheus` crate's process-wide default.
        let registry = prometheus::Registry::new();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| TelemetryError {
                what: "Prometheus metrics",
                message: e.to_string(),
            })?;
        meters = meters.with_reader(reader);
        any_reader = true;
        // A second init (tests in one process) keeps the first registry; the process has one.
        let _ = PROMETHEUS_REGISTRY.set(registry);
    }
    if any_reader {
        let meter_provider = meters.build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        guard.meter_provider = Some(meter_provider);
    }

    let otel_layer = match &telemetry.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError {
                    what: "traces",
                    message: e.to_string(),
                })?;
            // The environment's sampler decides where each trace starts (`sampling`), before
            // any span data is built; the SDK keeps whatever it is then handed.
            let sampler = sampling::RootSampler::from_env();
            let tracer_provider = SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource)
                .with_sampler(Sampler::AlwaysOn)
                .build();
            opentelemetry::global::set_tracer_provider(tracer_provider.clone());
            let tracer = tracer_provider.tracer("token-vault");
            guard.tracer_provider = Some(tracer_provider);
            Some((trace_layer(tracer, sampler.clone()), sampler))
        }
    };

    let (otel_layer, sampler) = otel_layer.unzip();
    // `try_init`: tests and embedders may have installed a subscriber already. Only with ours
    // does `rpc_span` decide the sampling: another subscriber gets the calls' spans as before.
    if subscriber(log_layer, otel_layer).try_init().is_ok() {
        if let Some(sampler) = sampler {
            sampling::install(sampler);
        }
    }
    Ok(guard)
}

/// The layer that hands spans to OpenTelemetry: this crate's spans at info and above, whatever
/// the log level, of the traces `sampler` samples where they start (`sampling`).
fn trace_layer<S>(tracer: SdkTracer, sampler: sampling::RootSampler) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let exported = sampling::ExportedTraces::new(sampling::traced_targets(), sampler);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Off, as work on every span that nothing here reads. A span's thread (an async call
        // hops between a runtime's threads, so the one it started on says nothing) cost a copy
        // of the thread's name; its busy and idle times cost two clock reads on every poll of
        // an instrumented future; making the span's OpenTelemetry context current on every
        // poll serves code that asks OpenTelemetry for the current context, which nothing here
        // does: parents are found through `tracing`'s own span tree. A span's source file,
        // module, line and target are four more attributes to build, encode and ship with
        // every span, which its name already identifies.
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_location(false)
        .with_target(false)
        .with_filter(exported)
        .and_then(sampling::keep_in_tree())
}

/// The log layer type [`log_layer`] returns, over the registry.
type LogLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The registry with the log layer and, when traces are exported, their layer. Not
/// `.with(Option<_>)`: an absent layer answers "always" to every callsite, which keeps the
/// trace-only spans open on every call for no one.
fn subscriber<T>(log: LogLayer, traces: Option<T>) -> Dispatch
where
    T: Layer<Layered<LogLayer, Registry>> + Send + Sync + 'static,
{
    let logged = tracing_subscriber::registry().with(log);
    match traces {
        Some(traces) => Dispatch::new(logged.with(traces)),
        None => Dispatch::new(logged),
    }
}

/// The target of the server span of each gRPC call ([`rpc_span`]).
pub const RPC_SPAN_TARGET: &str = "token_vault::rpc";

/// The target of the span around each database statement: the stores' `db_span!` macros name
/// it literally, as the store sits below this module in the layer map.
pub const DB_SPAN_TARGET: &str = "token_vault::db";

/// Spans made for traces only, kept out of the logs: one per call and one per statement. The
/// log layer formats a span's fields when it opens (as JSON in containers) and, when the call
/// records its status, parses that JSON back and writes it again; that work came on every call,
/// on the hot path too, for fields that said which RPC a log line came from, which its own
/// message and the `vault.refresh` and `oauth.token_request` spans (both still in the logs)
/// already say. Without an OTLP endpoint no layer wants these spans, and they cost nothing.
fn is_trace_only(meta: &Metadata<'_>) -> bool {
    meta.is_span() && (meta.target() == RPC_SPAN_TARGET || meta.target() == DB_SPAN_TARGET)
}

/// The log layer: JSON lines or text, at `filter`'s levels, without the trace-only spans.
fn log_layer<S, W>(json: bool, ansi: bool, filter: EnvFilter, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let format = if json {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .boxed()
    } else {
        fmt::layer().with_ansi(ansi).with_writer(writer).boxed()
    };
    // The exclusion claims no level of its own (TRACE), so that the pair keeps `filter`'s
    // maximum level: without a hint, tracing would ask about every debug and trace callsite in
    // h2, hyper and tokio, which halved the hot path's throughput in the benchmark.
    let not_trace_only = filter_fn(|meta| !is_trace_only(meta)).with_max_level_hint(LevelFilter::TRACE);
    format.with_filter(filter.and(not_trace_only)).boxed()
}

/// The server span of one gRPC call, named `<service>/<method>` and continuing the caller's
/// trace (W3C `traceparent` in the request metadata). The handler records the status code.
///
/// Whether the call's trace is exported is decided here, before the span exists (`sampling`):
/// a call that is not sampled gets a bare span that only keeps its place in `tracing`'s tree, so
/// that nothing under it is exported either and none of its OpenTelemetry data is built.
pub fn rpc_span(request: &http::Request<()>) -> Span {
    let path = request.uri().path().trim_start_matches('/');
    let sampler = sampling::installed();
    // With our exporter, the caller's context is read first: it takes part in the decision.
    let mut caller = sampler.and_then(|_| caller_context(request));
    if let Some(sampler) = sampler {
        if !sampler.samples(caller.as_ref(), path, opentelemetry::trace::SpanKind::Server) {
            // A root like a sampled call's span.
            return tracing::info_span!(target: RPC_SPAN_TARGET, parent: None, sampling::UNSAMPLED_RPC_SPAN);
        }
    }
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    // A root in `tracing`'s tree: an RPC's parent, if any, is the caller's span, which only the
    // request's `traceparent` names.
    let span = tracing::info_span!(
        target: RPC_SPAN_TARGET,
        parent: None,
        "rpc",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    // Without our exporter (none configured, or another subscriber installed first), the span
    // is whatever the subscriber makes of it; with ours and no exporter, it is disabled and
    // there is no parent to look for.
    if sampler.is_none() && !span.is_disabled() {
        caller = caller_context(request);
    }
    if let Some(caller) = caller {
        let _ = span.set_parent(caller);
    }
    span
}

/// The caller's trace context, when the request carries a `traceparent`. W3C Trace Context is
/// the one format read (`tracestate` only ever travels with a `traceparent`), so the
/// propagator is named here rather than looked up in the global slot. Without the header the
/// call starts its trace and there is nothing to extract: the extraction was about 2 % of the
/// vault's CPU samples on the hot path (docs/performance.md).
fn caller_context(request: &http::Request<()>) -> Option<opentelemetry::Context> {
    let headers = request.headers();
    headers
        .contains_key(TRACEPARENT)
        .then(|| TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
}

/// Records a call's gRPC status code on the current RPC span.
pub fn record_status(code: tonic::Code) {
    let span = Span::current();
    span.record("rpc.grpc.status_code", code as i32);
    if !matches!(
        code,
        tonic::Code::Ok
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument
            | tonic::Code::DeadlineExceeded
    ) {
        // Server-side errors mark the span failed; caller mistakes and expected outcomes do not.
        span.record("otel.status_code", "ERROR");
    }
}

/// The W3C Trace Context header that carries the caller's trace and span ids.
const TRACEPARENT: &str = "traceparent";

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::EnvFilter;

    use super::*;

    /// Collects what the log layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    /// The stores sit below this module in the layer map, so their `db_span!` macros spell
    /// the target out: this keeps them and [`DB_SPAN_TARGET`] the same.
    #[test]
    fn the_stores_statement_spans_have_the_trace_only_target() {
        let target = format!("target: {DB_SPAN_TARGET:?},");
        for (store, source) in [
            ("postgres", include_str!("store/postgres/mod.rs")),
            ("sqlite", include_str!("store/sqlite/mod.rs")),
        ] {
            let macro_body = source
                .split("macro_rules! db_span")
                .nth(1)
                .unwrap_or_else(|| panic!("the {store} store defines db_span!"));
            let first_span = &macro_body[..macro_body.find(");").expect("the macro's span ends")];
            assert!(first_span.contains(&target), "{store}'s db_span! sets {target}");
        }
    }

    /// With traces exported, the subscriber still tells `tracing` (and the `log` crate, through
    /// `try_init`) that nothing above the log level is wanted: without that hint every disabled
    /// callsite and every `log` record of the libraries would be asked about.
    #[test]
    fn exporting_traces_keeps_the_subscribers_maximum_level() {
        use opentelemetry_sdk::trace::SdkTracerProvider;
        let provider = SdkTracerProvider::builder().build();
        let sampler = sampling::RootSampler::new(Sampler::AlwaysOn);
        let log = log_layer(true, false, EnvFilter::new("info"), Captured::default());
        let exporting = tracing_subscriber::registry()
            .with(log)
            .with(trace_layer(provider.tracer("test"), sampler.clone()));
        assert_eq!(exporting.max_level_hint(), Some(LevelFilter::INFO));
        let log = log_layer(true, false, EnvFilter::new("warn"), Captured::default());
        let exporting = tracing_subscriber::registry()
            .with(log)
            .with(trace_layer(provider.tracer("test"), sampler));
        assert_eq!(
            exporting.max_level_hint(),
            Some(LevelFilter::INFO),
            "exported spans are wanted at info whatever the log level"
        );
    }

    #[test]
    fn log_lines_list_the_flow_spans_and_not_the_per_call_ones() {
        let captured = Captured::default();
        let log = log_layer(true, false, EnvFilter::new("info"), captured.clone());
        let dispatch = subscriber(log, None::<tracing_subscriber::layer::Identity>);
        tracing::dispatcher::with_default(&dispatch, || {
            let request = http::Request::builder()
                .uri("/token_vault.v1.TokenVault/GetAccessToken")
                .body(())
                .unwrap();
            let rpc = rpc_span(&request);
            assert!(rpc.is_disabled(), "with logs only, nothing wants the RPC span");
            let _rpc = rpc.enter();
            let refresh = tracing::info_span!("vault.refresh", tenant_id = "acme");
            let _refresh = refresh.enter();
            let statement = tracing::info_span!(target: DB_SPAN_TARGET, "db", db.collection.name = "connections");
            assert!(statement.is_disabled());
            statement.in_scope(|| tracing::info!("refreshed"));
        });
        let written = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        // Below the level, callsites are skipped before any filter is asked.
        let layer: LogLayer = log_layer(true, false, EnvFilter::new("info"), captured.clone());
        assert_eq!(layer.max_level_hint(), Some(LevelFilter::INFO));
        let line: serde_json::Value = serde_json::from_str(written.trim()).expect("one JSON line");
        assert_eq!(line["message"], "refreshed");
        let spans: Vec<&str> = line["spans"]
            .as_array()
            .expect("the spans the line was logged in")
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(spans, ["vault.refresh"]);
        assert_eq!(line["spans"][0]["tenant_id"], "acme");
    }
}
