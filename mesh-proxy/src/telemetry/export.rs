//! OTLP/gRPC export to the collector: spans in batches from the tracer's bounded queue, and
//! the proxy's metrics registry every interval (the same series `/metrics` shows, as cumulative
//! OTLP sums, gauges and histograms).
//!
//! Export never holds traffic up. Each export is bounded by a timeout; a batch that cannot be
//! sent (collector down, slow, refusing) is dropped and counted, and the channel reconnects by
//! itself when the collector returns. Metrics are cumulative, so a lost export loses no counts:
//! the next one carries them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as otlp_metrics;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prometheus::proto::{MetricFamily, MetricType};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use super::Telemetry;
use super::events::{TelemetryDropped, TelemetryExported};
use super::labels::{DropReason, Signal, grpc_code};
use super::trace::{FinishedSpan, SpanKind};

/// Most spans in one export request.
pub(crate) const MAX_BATCH: usize = 512;
/// How long a batch gathers after its first span. The exporter sleeps meanwhile instead of waking
/// for every span (wakeups are what a busy proxy can least afford); at the default queue of 2048
/// this keeps up with 20 000 spans/s.
const BATCH_GATHER: Duration = Duration::from_millis(100);
/// Bound on one export call.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how often to export.
#[derive(Clone, Debug)]
pub(crate) struct ExportSettings {
    pub(crate) endpoint: Endpoint,
    pub(crate) metrics_interval: Duration,
    pub(crate) service: String,
    pub(crate) instance: String,
}

/// Asks the exporter for a last export (spans queued so far and the metrics), answered when done.
#[derive(Debug)]
pub(crate) struct Flush(oneshot::Sender<()>);

/// Builds the lazily connected channel to the collector.
pub(crate) fn endpoint(uri: &tonic::transport::Uri) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Channel::builder(uri.clone())
        .connect_timeout(Duration::from_secs(1))
        .timeout(EXPORT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30)))
}

/// Runs the exporter until the queue closes. A [`Flush`] sent on `flush` exports what is queued
/// and the current metrics at once.
pub(crate) async fn run(
    settings: ExportSettings,
    mut spans: mpsc::Receiver<FinishedSpan>,
    mut flush: mpsc::Receiver<Flush>,
    registry: prometheus::Registry,
    telemetry: Arc<Telemetry>,
) {
    let channel = settings.endpoint.connect_lazy();
    let mut traces = TraceServiceClient::new(channel.clone());
    let mut metrics_client = MetricsServiceClient::new(channel);
    let resource = resource(&settings);
    let started = unix_nanos(SystemTime::now());
    let mut tick = tokio::time::interval(settings.metrics_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = spans.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
                if batch.len() < MAX_BATCH {
                    tokio::time::sleep(BATCH_GATHER).await;
                    while batch.len() < MAX_BATCH {
                        let Ok(span) = spans.try_recv() else { break };
                        batch.push(span);
                    }
                }
                export_spans(&mut traces, &resource, batch.drain(..), &telemetry).await;
            }
            _ = tick.tick() => {
                export_metrics(&mut metrics_client, &resource, &registry, started, &telemetry).await;
            }
            Some(Flush(done)) = flush.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                    if batch.len() == MAX_BATCH {
                        export_spans(&mut traces, &resource, batch.drain(..), &telemetry).await;
                    }
                }
                export_spans(&mut traces, &resource, batch.drain(..), &telemetry).await;
                export_metrics(&mut metrics_client, &resource, &registry, started, &telemetry).await;
                let _ = done.send(());
            }
        }
    }
}

/// Asks the exporter to flush and waits up to `timeout` for it.
pub(crate) async fn flush(tx: &mpsc::Sender<Flush>, timeout: Duration) {
    let (done, wait) = oneshot::channel();
    if tx.try_send(Flush(done)).is_ok() {
        let _ = tokio::time::timeout(timeout, wait).await;
    }
}

async fn export_spans(
    client: &mut TraceServiceClient<Channel>,
    resource: &Resource,
    batch: impl ExactSizeIterator<Item = FinishedSpan>,
    telemetry: &Telemetry,
) {
    let n = batch.len() as u64;
    if n == 0 {
        return;
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans: batch.map(otlp_span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    match client.export(request).await {
        Ok(_) => TelemetryExported { signal: Signal::Spans, items: n }.emit(telemetry),
        Err(status) => {
            let error = Some(&status as &dyn std::fmt::Display);
            TelemetryDropped { signal: Signal::Spans, reason: DropReason::ExportFailed, items: n, error }
                .emit(telemetry);
        }
    }
}

async fn export_metrics(
    client: &mut MetricsServiceClient<Channel>,
    resource: &Resource,
    registry: &prometheus::Registry,
    started: u64,
    telemetry: &Telemetry,
) {
    let families = registry.gather();
    let now = unix_nanos(SystemTime::now());
    let converted: Vec<otlp_metrics::Metric> = families.iter().filter_map(|f| otlp_metric(f, started, now)).collect();
    let points: u64 = converted.iter().map(points).sum();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![otlp_metrics::ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![otlp_metrics::ScopeMetrics {
                scope: Some(scope()),
                metrics: converted,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    match client.export(request).await {
        Ok(_) => TelemetryExported { signal: Signal::Metrics, items: points }.emit(telemetry),
        Err(status) => {
            let error = Some(&status as &dyn std::fmt::Display);
            let dropped =
                TelemetryDropped { signal: Signal::Metrics, reason: DropReason::ExportFailed, items: points, error };
            dropped.emit(telemetry);
        }
    }
}

fn points(metric: &otlp_metrics::Metric) -> u64 {
    use otlp_metrics::metric::Data;
    (match &metric.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
    }) as u64
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn resource(settings: &ExportSettings) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", settings.service.clone()),
            string("service.instance.id", settings.instance.clone()),
            string("telemetry.sdk.name", "mesh-proxy"),
            string("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "mesh-proxy".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

/// A finished hop as an OTLP span, with the OpenTelemetry RPC attribute names.
fn otlp_span(s: FinishedSpan) -> Span {
    let name = s.method.trim_start_matches('/').to_string();
    let mut attributes = Vec::with_capacity(10);
    attributes.push(string("rpc.system", "grpc"));
    if let Some((service, method)) = name.split_once('/') {
        attributes.push(string("rpc.service", service));
        attributes.push(string("rpc.method", method));
    }
    attributes.push(kv("rpc.grpc.status_code", any_value::Value::IntValue(grpc_code(s.status))));
    attributes.push(string("peer.service", s.peer_service));
    attributes.push(string("mesh.grpc_status", s.status));
    if let Some(addr) = s.peer_addr {
        let key = if s.kind == SpanKind::Client { "server.address" } else { "client.address" };
        attributes.push(string(key, addr));
    }
    if let Some(endpoint) = s.endpoint {
        attributes.push(string("mesh.endpoint", endpoint));
    }
    if s.retries > 0 {
        attributes.push(kv("mesh.retries", any_value::Value::IntValue(i64::from(s.retries))));
    }
    if let Some(reason) = s.retry_reason {
        attributes.push(kv("mesh.retry.reason", any_value::Value::StringValue(reason.to_string())));
    }
    if let Some(reason) = s.error {
        attributes.push(string("mesh.error", reason));
    }
    let start = unix_nanos(s.start);
    let failed = s.status != "OK";
    Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(s.context.sampled),
        name,
        kind: match s.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(u64::try_from(s.duration.as_nanos()).unwrap_or(u64::MAX)),
        attributes,
        status: Some(Status {
            code: if failed { status::StatusCode::Error } else { status::StatusCode::Unset } as i32,
            message: if failed { s.error.unwrap_or(s.status).to_string() } else { String::new() },
        }),
        ..Default::default()
    }
}

/// One Prometheus family as an OTLP metric: counters as cumulative monotonic sums, gauges as
/// gauges, histograms as cumulative explicit-bucket histograms (Prometheus buckets are
/// cumulative counts, OTLP's are per bucket). `start` is when this process started counting.
pub(crate) fn otlp_metric(family: &MetricFamily, start: u64, now: u64) -> Option<otlp_metrics::Metric> {
    use otlp_metrics::metric::Data;
    use otlp_metrics::number_data_point::Value;
    let attributes = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
        m.get_label().iter().map(|l| string(l.name(), l.value())).collect()
    };
    let number = |m: &prometheus::proto::Metric, value: f64| otlp_metrics::NumberDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(Value::AsDouble(value)),
        ..Default::default()
    };
    let metrics = family.get_metric();
    let data = match family.get_field_type() {
        MetricType::COUNTER => Data::Sum(otlp_metrics::Sum {
            data_points: metrics.iter().map(|m| number(m, m.get_counter().get_value())).collect(),
            aggregation_temporality: otlp_metrics::AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => Data::Gauge(otlp_metrics::Gauge {
            data_points: metrics.iter().map(|m| number(m, m.get_gauge().get_value())).collect(),
        }),
        MetricType::HISTOGRAM => Data::Histogram(otlp_metrics::Histogram {
            data_points: metrics
                .iter()
                .map(|m| {
                    let h = m.get_histogram();
                    let buckets = h.get_bucket();
                    let mut bounds = Vec::with_capacity(buckets.len());
                    let mut counts = Vec::with_capacity(buckets.len() + 1);
                    let mut below = 0;
                    for b in buckets.iter().filter(|b| b.upper_bound().is_finite()) {
                        bounds.push(b.upper_bound());
                        counts.push(b.cumulative_count().saturating_sub(below));
                        below = b.cumulative_count();
                    }
                    counts.push(h.get_sample_count().saturating_sub(below));
                    otlp_metrics::HistogramDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.get_sample_count(),
                        sum: Some(h.get_sample_sum()),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: otlp_metrics::AggregationTemporality::Cumulative as i32,
        }),
        _ => return None,
    };
    Some(otlp_metrics::Metric {
        name: family.name().to_string(),
        description: family.help().to_string(),
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    #[test]
    fn a_retried_call_s_span_says_how_often_and_why() {
        let context =
            super::super::trace::TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap_or_else(|| unreachable!());
        let span = otlp_span(FinishedSpan {
            context,
            parent: None,
            kind: SpanKind::Client,
            method: "/shop.Orders/Get".into(),
            peer_service: "orders".into(),
            start: std::time::SystemTime::now(),
            duration: std::time::Duration::from_millis(3),
            status: "OK",
            error: None,
            peer_addr: None,
            endpoint: Some("orders-2".into()),
            retries: 2,
            retry_reason: Some("per_try_timeout"),
        });
        let attr = |key: &str| span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone());
        let int = |key| attr(key).and_then(|v| v.value);
        assert!(matches!(int("mesh.retries"), Some(any_value::Value::IntValue(2))));
        assert!(matches!(int("mesh.retry.reason"), Some(any_value::Value::StringValue(r)) if r == "per_try_timeout"));
    }

    #[test]
    fn prometheus_histograms_become_per_bucket_otlp_counts() {
        let registry = Registry::new();
        let h = HistogramVec::new(HistogramOpts::new("lat_seconds", "l").buckets(vec![0.1, 1.0]), &["m"]).unwrap();
        registry.register(Box::new(h.clone())).unwrap();
        let c = IntCounterVec::new(Opts::new("calls_total", "c"), &["m"]).unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.with_label_values(&["x"]).observe(v);
        }
        c.with_label_values(&["x"]).inc_by(3);
        let families = registry.gather();
        let converted: Vec<_> = families.iter().filter_map(|f| otlp_metric(f, 1, 2)).collect();
        use otlp_metrics::metric::Data;
        let Some(Data::Sum(sum)) = &converted[0].data else { panic!("{:?}", converted[0]) };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].value, Some(otlp_metrics::number_data_point::Value::AsDouble(3.0)));
        assert_eq!(sum.data_points[0].attributes[0].key, "m");
        let Some(Data::Histogram(hist)) = &converted[1].data else { panic!("{:?}", converted[1]) };
        let p = &hist.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!(p.count, 4);
        assert_eq!(p.start_time_unix_nano, 1);
    }
}
