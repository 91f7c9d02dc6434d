//! A minimal OTLP/gRPC trace receiver for benchmarks and the demo: accepts every export and
//! counts the spans, writing the count to a file once a second.
//!
//! `cargo run --release --example otlp_sink -- 127.0.0.1:4317 /tmp/spans.count`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let count: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| r.scope_spans.iter()).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(count as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4317".into()).parse().expect("ADDRESS:PORT");
    let count_file = args.next();
    let sink = Sink::default();
    if let Some(file) = count_file {
        let spans = sink.spans.clone();
        tokio::spawn(async move {
            loop {
                let _ = std::fs::write(&file, format!("{}\n", spans.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve(addr)
        .await
        .expect("OTLP receiver");
}
