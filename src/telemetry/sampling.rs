//! Which traces are exported, decided where a trace starts in this process and before any of its
//! span data is built.
//!
//! tracing-opentelemetry builds a span's OpenTelemetry data (name, kind, attributes, start time)
//! when the span opens, records into it while it runs, and hands it to the SDK when it closes;
//! only then does the SDK's sampler run. With 1 % of calls sampled, 99 % of that work was thrown
//! away, about 6 % of the vault's CPU on the hot path (docs/performance.md, "What an unsampled
//! span costs"). So the sampler that `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
//! configure (read by the SDK's own [`Config`], as before) is asked once per trace instead, where
//! the trace starts in this process:
//! - a call's server span, in [`super::rpc_span`], with the caller's `traceparent` as the parent
//!   and before the span exists. An unsampled call gets a bare span of its own callsite
//!   ([`UNSAMPLED_RPC_SPAN`]) that tracing-opentelemetry never sees;
//! - any other span that starts a trace (background work: the keeper's statements, the audit's
//!   flushes), in [`ExportedTraces::enabled`].
//!
//! Every other span follows the trace it is in: exported when an exported span encloses it, and
//! kept from tracing-opentelemetry when it sits only under spans that are not exported (an
//! unsampled call's refresh, token request and statements). For that, every span that could be
//! exported must exist in `tracing`'s tree whether or not it is, also where the log level does
//! not want it (the refresh's span at `warn`): [`keep_in_tree`] is the layer that wants them all
//! and does nothing with them. The SDK then keeps every span it is handed (`Sampler::AlwaysOn`
//! in `init`).
//!
//! Two differences from the SDK deciding alone, both deliberate:
//! - A span is decided by the span current where it opens, not by an explicit `parent:`: it is
//!   exported when an exported span encloses it, not when only unexported spans do, and starts
//!   a trace when no span does. The vault's spans are contextual (their parent is the current
//!   span), the one exception being the server span, a root by construction and decided in
//!   `rpc_span`.
//! - For a trace started here, `traceidratio` is asked with a trace id drawn for the decision,
//!   not the one the SDK later gives the span (tracing-opentelemetry offers no way to pass it).
//!   The fraction sampled is the same; what differs is that the decision cannot be recomputed
//!   from the exported trace id, which only matters to a downstream service sampling by trace
//!   id, and the vault propagates no trace context downstream.

use std::sync::OnceLock;

use opentelemetry::{
    trace::{SpanKind, TraceContextExt as _, TraceId},
    Context as OtelContext,
};
use opentelemetry_sdk::trace::{Config, IdGenerator as _, RandomIdGenerator, SamplingDecision, ShouldSample};
use tracing::{subscriber::Interest, Level, Metadata, Subscriber};
use tracing_subscriber::{
    filter::{filter_fn, LevelFilter, Targets},
    layer::{Context, Filter},
    registry::LookupSpan,
    Layer,
};

use super::RPC_SPAN_TARGET;

/// The name of the server span of a call that is not sampled ([`super::rpc_span`]): a callsite
/// of its own, so that filters tell it from a sampled call's span by its metadata alone.
pub(super) const UNSAMPLED_RPC_SPAN: &str = "rpc.unsampled";

/// The sampler [`super::rpc_span`] asks, set by `init` when traces are exported. Process-wide like
/// the SDK's global tracer provider: tonic takes the span function as a plain `fn`.
static ROOT_SAMPLER: OnceLock<RootSampler> = OnceLock::new();

/// The sampler asked where a trace starts: the one the environment configures for the SDK.
#[derive(Clone, Debug)]
pub(super) struct RootSampler(Box<dyn ShouldSample>);

impl RootSampler {
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, read and defaulted (to
    /// `parentbased_always_on`) by the SDK's own configuration, with its warnings.
    pub(super) fn from_env() -> Self {
        Self(Config::default().sampler)
    }

    #[cfg(test)]
    pub(super) fn new(sampler: impl ShouldSample + 'static) -> Self {
        Self(Box::new(sampler))
    }

    /// Whether a trace starting here, under `parent` when a caller's context came with the
    /// call, is exported.
    pub(super) fn samples(&self, parent: Option<&OtelContext>, name: &str, kind: SpanKind) -> bool {
        let parent_trace = parent
            .map(|cx| cx.span().span_context().trace_id())
            .filter(|id| *id != TraceId::INVALID);
        let trace_id = parent_trace.unwrap_or_else(|| RandomIdGenerator::default().new_trace_id());
        let result = self.0.should_sample(parent, trace_id, name, &kind, &[], &[]);
        // `RecordOnly` is recorded and not exported; nothing here reads unexported spans.
        matches!(result.decision, SamplingDecision::RecordAndSample)
    }
}

/// Makes `sampler` the one [`super::rpc_span`] asks. The first call wins: a process has one
/// environment, and tests that start telemetry twice in one process start it from the same.
pub(super) fn install(sampler: RootSampler) {
    let _ = ROOT_SAMPLER.set(sampler);
}

/// The installed sampler, when traces are exported.
pub(super) fn installed() -> Option<&'static RootSampler> {
    ROOT_SAMPLER.get()
}

fn is_rpc(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == RPC_SPAN_TARGET
}

fn is_unsampled_rpc(meta: &Metadata<'_>) -> bool {
    is_rpc(meta) && meta.name() == UNSAMPLED_RPC_SPAN
}

/// The filter of the OpenTelemetry layer: this crate's spans and events at `targets`' levels,
/// of the traces that are sampled.
pub(super) struct ExportedTraces {
    targets: Targets,
    sampler: RootSampler,
}

impl ExportedTraces {
    pub(super) fn new(targets: Targets, sampler: RootSampler) -> Self {
        Self { targets, sampler }
    }
}

impl<S> Filter<S> for ExportedTraces
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_unsampled_rpc(meta) {
            return Interest::never();
        }
        let interest = Filter::<S>::callsite_enabled(&self.targets, meta);
        if interest.is_never() || !meta.is_span() || is_rpc(meta) {
            interest
        } else {
            // Any other span's answer depends on the trace it opens in.
            Interest::sometimes()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        if is_unsampled_rpc(meta) || !Filter::<S>::enabled(&self.targets, meta, cx) {
            return false;
        }
        if !meta.is_span() || is_rpc(meta) {
            // Events attach to an exported span or to none; a sampled call's span was
            // decided in `rpc_span`.
            return true;
        }
        // `cx` sees only the spans this filter enabled: an exported span encloses this one.
        if cx.lookup_current().is_some() {
            return true;
        }
        // Spans enclose it, none of them exported: it is part of a trace that is not sampled.
        if cx.current_span().id().is_some() {
            return false;
        }
        // It starts a trace.
        self.sampler.samples(None, meta.name(), SpanKind::Internal)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.targets)
    }
}

/// The spans that may be exported: this crate's, at info and above, whatever the log level.
pub(super) fn traced_targets() -> Targets {
    Targets::new().with_target("token_vault", Level::INFO)
}

/// Does nothing with the spans it sees.
pub(super) struct KeepInTree;

impl<S: Subscriber> Layer<S> for KeepInTree {}

/// The layer that wants every span that may be exported, so that each exists whether or not
/// it is exported and whatever the log level. Without it an unsampled call's span, which no
/// other layer wants, would not exist, nor the refresh's span at `warn`, and the spans under
/// them (the token request, the statements) would each start a trace of their own, to be
/// sampled on their own. (tracing-subscriber 0.3 happens to make a span that every per-layer
/// filter declined when its callsite is asked each time, as the registry checks for "any
/// filter enabled" with `bits != u64::MAX`; this does not rest on that.)
pub(super) fn keep_in_tree<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let traced = traced_targets();
    let spans = filter_fn(move |meta| meta.is_span() && traced.would_enable(meta.target(), meta.level()))
        // Without a hint the subscriber's maximum level would be TRACE: every `log` record and
        // every disabled callsite of the libraries would be asked about.
        .with_max_level_hint(LevelFilter::INFO);
    KeepInTree.with_filter(spans)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
    };
    use tracing::Dispatch;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::{rpc_span, trace_layer, DB_SPAN_TARGET};

    /// Keeps what the SDK exports; a simple processor hands it each span as the span ends.
    #[derive(Clone, Debug, Default)]
    struct Exported(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Exported {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("not poisoned").extend(batch);
            Ok(())
        }
    }

    impl Exported {
        fn spans(&self) -> Vec<SpanData> {
            self.0.lock().expect("not poisoned").clone()
        }
    }

    /// A subscriber with the layer `init` installs, exporting to memory, and `sampler` asked
    /// where traces start outside a call.
    fn exporting(sampler: RootSampler) -> (Dispatch, Exported, SdkTracerProvider) {
        let exported = Exported::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exported.clone())
            .with_sampler(Sampler::AlwaysOn)
            .build();
        let layer = trace_layer(provider.tracer("test"), sampler);
        (
            Dispatch::new(tracing_subscriber::registry().with(layer)),
            exported,
            provider,
        )
    }

    fn call(traceparent: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri("/tokenvault.v1.TokenVault/GetAccessToken");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.body(()).expect("a request")
    }

    /// What a refresh under a call opens: its span, a statement's span in it, an event in that.
    fn refresh() {
        let refresh = tracing::info_span!("vault.refresh", otel.name = "refresh");
        refresh.in_scope(|| {
            let statement = tracing::info_span!(target: DB_SPAN_TARGET, "db", otel.name = "UPDATE connections");
            statement.in_scope(|| tracing::info!("refreshed"));
        });
    }

    const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    /// A caller's `traceparent` in [`CALLER_TRACE`], sampled (`flags` `01`) or not (`00`).
    fn traceparent(flags: &str) -> String {
        format!("00-{CALLER_TRACE}-b7ad6b7169203331-{flags}")
    }

    /// The SDK's default, `parentbased_always_on`: a call whose caller did not sample its trace
    /// exports nothing, not even the refresh under it, which must not escape as a trace of its
    /// own; a call continuing a sampled trace exports itself and everything under it, in that
    /// trace; a call that starts its trace here, and background work, start sampled traces.
    #[test]
    fn an_unsampled_call_exports_nothing_of_its_trace_and_a_sampled_one_all_of_it() {
        let sampler = RootSampler::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        install(sampler.clone());
        let (dispatch, exported, provider) = exporting(sampler);
        tracing::dispatcher::with_default(&dispatch, || {
            let declined = rpc_span(&call(Some(&traceparent("00"))));
            assert!(!declined.is_disabled(), "kept in the tree for its children to find");
            declined.in_scope(refresh);
            drop(declined);
            let continued = rpc_span(&call(Some(&traceparent("01"))));
            continued.in_scope(refresh);
            drop(continued);
            rpc_span(&call(None)).in_scope(refresh);
            tracing::info_span!("keeper.pass").in_scope(refresh);
        });
        drop(dispatch);
        provider.force_flush().expect("flushed");

        let spans = exported.spans();
        let trace = |i: usize| spans[i].span_context.trace_id();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        const CALL: &str = "tokenvault.v1.TokenVault/GetAccessToken";
        assert_eq!(
            names,
            [
                "UPDATE connections",
                "refresh",
                CALL,
                "UPDATE connections",
                "refresh",
                CALL,
                "UPDATE connections",
                "refresh",
                "keeper.pass"
            ],
            "three traces of three spans; nothing of the declined call's"
        );
        assert_eq!(trace(0).to_string(), CALLER_TRACE);
        for (first, root) in [(0, 2), (3, 5), (6, 8)] {
            let (statement, refresh, root) = (&spans[first], &spans[first + 1], &spans[root]);
            assert!((first..first + 3).all(|i| trace(i) == trace(first)), "one trace");
            assert_eq!(refresh.parent_span_id, root.span_context.span_id());
            assert_eq!(statement.parent_span_id, refresh.span_context.span_id());
            let events: Vec<_> = statement.events.iter().map(|e| e.name.as_ref()).collect();
            assert_eq!(events, ["refreshed"], "the event is in the statement's span");
        }
        assert_eq!(
            spans[2].parent_span_id,
            SpanId::from_hex("b7ad6b7169203331").expect("hex")
        );
        assert_eq!(
            spans[5].parent_span_id,
            SpanId::INVALID,
            "a call without traceparent is a root"
        );
        assert!(trace(3) != trace(0) && trace(6) != trace(3));
    }

    /// A refresh outlives the call that started it, on a task of its own: the spans opened in
    /// it after the call's span has closed are still part of the call's unsampled trace, and
    /// not traces of their own (the default sampler would export those), with no log layer
    /// wanting the refresh's span, as at `warn`.
    #[test]
    fn spans_under_an_unsampled_call_stay_unexported_after_the_call_ends() {
        let sampler = RootSampler::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        install(sampler.clone());
        let (dispatch, exported, provider) = exporting(sampler);
        tracing::dispatcher::with_default(&dispatch, || {
            let declined = rpc_span(&call(Some(&traceparent("00"))));
            let refresh = declined.in_scope(|| tracing::info_span!("vault.refresh", otel.name = "refresh"));
            drop(declined);
            refresh.in_scope(|| {
                let statement = tracing::info_span!(target: DB_SPAN_TARGET, "db", otel.name = "UPDATE connections");
                statement.in_scope(|| tracing::info!("refreshed"));
            });
        });
        drop(dispatch);
        provider.force_flush().expect("flushed");
        let names: Vec<String> = exported.spans().iter().map(|s| s.name.to_string()).collect();
        assert!(names.is_empty(), "exported from an unsampled call: {names:?}");
    }

    /// A trace started outside a call is sampled at the configured ratio, and whole: each
    /// exported root's child is exported with it, and no child without its root.
    #[test]
    fn traces_started_outside_a_call_are_sampled_at_the_ratio_and_kept_whole() {
        let (dispatch, exported, provider) = exporting(RootSampler::new(Sampler::TraceIdRatioBased(0.25)));
        const TRACES: usize = 4_000;
        tracing::dispatcher::with_default(&dispatch, || {
            for _ in 0..TRACES {
                tracing::info_span!("keeper.pass").in_scope(refresh);
            }
        });
        drop(dispatch);
        provider.force_flush().expect("flushed");

        let spans = exported.spans();
        let roots: Vec<&SpanData> = spans.iter().filter(|s| s.name == "keeper.pass").collect();
        // 1,000 expected; the binomial's standard deviation is 27, so this is over 5 of them.
        assert!(
            (850..=1150).contains(&roots.len()),
            "{} of {TRACES} sampled",
            roots.len()
        );
        assert!(roots.iter().all(|r| r.parent_span_id == SpanId::INVALID));
        for (name, parent) in [("refresh", "keeper.pass"), ("UPDATE connections", "refresh")] {
            let parents: std::collections::HashSet<SpanId> = spans
                .iter()
                .filter(|s| s.name == parent)
                .map(|s| s.span_context.span_id())
                .collect();
            let children: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
            assert_eq!(children.len(), roots.len(), "one {name} per sampled trace");
            assert!(children.iter().all(|c| parents.contains(&c.parent_span_id)));
        }
    }
}
