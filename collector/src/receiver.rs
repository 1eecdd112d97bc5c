//! The OTLP/gRPC receiver: the standard `TraceService` and `MetricsService`, so any OpenTelemetry
//! SDK or collector can export here, not only the mesh's proxies. Rejected items are reported in
//! the response's partial success, as OTLP specifies.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use crate::pipeline::Pipeline;

/// Largest accepted export request.
pub(crate) const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Both OTLP services over one pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Receiver(pub(crate) Arc<Pipeline>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let rejected = self.0.accept_spans(request.into_inner());
        let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: "spans with invalid ids or over the store's size bound were dropped".into(),
        });
        Ok(Response::new(ExportTraceServiceResponse { partial_success }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let rejected = self.0.accept_metrics(request.into_inner());
        let partial_success = (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: "see mesh_collector_dropped_total{signal=\"metric_points\"} for reasons".into(),
        });
        Ok(Response::new(ExportMetricsServiceResponse { partial_success }))
    }
}

/// The two tonic services.
pub(crate) fn services(receiver: Receiver) -> (TraceServiceServer<Receiver>, MetricsServiceServer<Receiver>) {
    (
        TraceServiceServer::new(receiver.clone()).max_decoding_message_size(MAX_MESSAGE),
        MetricsServiceServer::new(receiver).max_decoding_message_size(MAX_MESSAGE),
    )
}
