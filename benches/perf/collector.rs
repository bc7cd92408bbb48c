//! A stand-in OpenTelemetry collector for the traced hot path: it accepts OTLP/gRPC exports of
//! traces and metrics, as a collector in the cluster would, decodes them, counts the spans and
//! keeps nothing. It runs in the bench's process, beside the load client: a collector shares
//! a node's cores with what it collects from, and the vault's exports must be received and
//! decoded for its exporter to go on.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        metrics_service_server::{MetricsService, MetricsServiceServer},
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
};
use tonic::{Request, Response, Status};

/// The running collector; it stops with the bench's process.
pub struct Collector {
    /// Where the vault exports to (`telemetry.otlp_endpoint`).
    pub endpoint: String,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
}

#[derive(Clone)]
struct Receiver(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Collector {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a port for the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("a bound address"));
        let counts = Arc::new(Counts::default());
        let receiver = Receiver(counts.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .add_service(MetricsServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self { endpoint, counts }
    }

    /// Spans received so far, from every vault that exported here.
    pub fn spans(&self) -> u64 {
        self.counts.spans.load(Ordering::Relaxed)
    }
}
