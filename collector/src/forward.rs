//! Optional forwarding: everything received is also sent on, unchanged, to another OTLP/gRPC
//! endpoint (any OpenTelemetry backend). A bounded queue sits between receiving and sending;
//! when the next hop is slow or down, requests are dropped and counted, never waited for.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::health::{Dropped, Health, Signal};

/// One received export, to send on.
#[derive(Debug)]
pub(crate) enum Forwardable {
    Traces(ExportTraceServiceRequest, u64),
    Metrics(ExportMetricsServiceRequest, u64),
}

impl Forwardable {
    fn signal(&self) -> (Signal, u64) {
        match self {
            Self::Traces(_, n) => (Signal::Spans, *n),
            Self::Metrics(_, n) => (Signal::MetricPoints, *n),
        }
    }
}

/// The sending side of the forwarding queue.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    queue: mpsc::Sender<Forwardable>,
    health: Health,
}

impl Forwarder {
    /// Starts forwarding to `uri` with a queue of `capacity` requests.
    pub(crate) fn start(uri: tonic::transport::Uri, capacity: usize, health: Health) -> Self {
        let (queue, rx) = mpsc::channel(capacity);
        let channel = Channel::builder(uri)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        tokio::spawn(send_forever(rx, channel, health.clone()));
        Self { queue, health }
    }

    /// Queues an export, or drops and counts it if the queue is full.
    pub(crate) fn forward(&self, item: Forwardable) {
        let (signal, n) = item.signal();
        if self.queue.try_send(item).is_err() {
            self.health.dropped(signal, Dropped::ForwardQueueFull, n);
        }
    }
}

async fn send_forever(mut rx: mpsc::Receiver<Forwardable>, channel: Channel, health: Health) {
    let mut traces = TraceServiceClient::new(channel.clone());
    let mut metrics = MetricsServiceClient::new(channel);
    while let Some(item) = rx.recv().await {
        let (signal, n) = item.signal();
        let result = match item {
            Forwardable::Traces(req, _) => traces.export(req).await.map(|_| ()),
            Forwardable::Metrics(req, _) => metrics.export(req).await.map(|_| ()),
        };
        match result {
            Ok(()) => health.forwarded(signal, n),
            Err(status) => {
                health.dropped(signal, Dropped::ForwardFailed, n);
                tracing::debug!(%status, signal = signal.as_str(), "forwarding failed; dropped");
            }
        }
    }
}
