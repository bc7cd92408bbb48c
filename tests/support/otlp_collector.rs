//! An OpenTelemetry collector in the process, for the tests and the benchmark (both include
//! this file with `#[path]`): it accepts OTLP/gRPC exports of traces and metrics on a port of
//! its own, as a collector in the cluster would, decodes them and counts the server spans (one
//! per RPC served). A test that reads the exports asks it to keep them; the benchmark, whose
//! vaults export a span per call by the million, only counts.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    trace::v1::span::SpanKind,
};
use tonic::{Request, Response, Status};

/// What the collector keeps of each export.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every export, to read back with [`Collector::traces`] and [`Collector::metrics`].
    Exports,
    /// The server span count only.
    #[allow(dead_code, reason = "the benchmark counts; the tests read the exports")]
    Counts,
}

/// The running collector; it stops with the runtime it was started on.
pub struct Collector {
    /// Where a vault exports to (`telemetry.otlp_endpoint`).
    pub endpoint: String,
    received: Arc<Received>,
}

struct Received {
    keep: Keep,
    server_spans: AtomicU64,
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
}

#[derive(Clone)]
struct Receiver(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let export = request.into_inner();
        let server_spans = export
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans)
            .filter(|span| span.kind == SpanKind::Server as i32)
            .count();
        self.0.server_spans.fetch_add(server_spans as u64, Ordering::Relaxed);
        if self.0.keep == Keep::Exports {
            self.0.traces.lock().unwrap().push(export);
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        if self.0.keep == Keep::Exports {
            self.0.metrics.lock().unwrap().push(request.into_inner());
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Collector {
    pub async fn start(keep: Keep) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("a bound address"));
        let received = Arc::new(Received {
            keep,
            server_spans: AtomicU64::new(0),
            traces: Mutex::default(),
            metrics: Mutex::default(),
        });
        let receiver = Receiver(received.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .add_service(MetricsServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self { endpoint, received }
    }

    /// Server spans (one per RPC served) received so far, from every process that exported
    /// here.
    #[allow(dead_code, reason = "the benchmark counts; the tests read the exports")]
    pub fn server_spans(&self) -> u64 {
        self.received.server_spans.load(Ordering::Relaxed)
    }

    /// The trace exports received so far ([`Keep::Exports`]).
    #[allow(dead_code, reason = "the tests read the exports; the benchmark counts")]
    pub fn traces(&self) -> Vec<ExportTraceServiceRequest> {
        self.received.traces.lock().unwrap().clone()
    }

    /// The metrics exports received so far ([`Keep::Exports`]).
    #[allow(dead_code, reason = "the tests read the exports; the benchmark counts")]
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.received.metrics.lock().unwrap().clone()
    }
}
