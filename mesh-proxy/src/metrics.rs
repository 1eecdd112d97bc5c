//! The proxy's metrics, all in one place. Names follow the brief (`mesh_` prefix, `_total`,
//! `_seconds`); every label set is closed: directions and gRPC codes are fixed lists, service
//! names come from the registry (bounded by the services in use), and gRPC methods are capped
//! per process (the rest count as `other`, and the overflow is itself counted).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::trace::ActiveSpan;

/// Most distinct `grpc_method` label values.
pub(crate) const MAX_METHODS: usize = 256;

/// Which listener a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From a peer proxy to the local app.
    Inbound,
    /// From the local app to another service.
    Outbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Every metric the proxy exports.
#[derive(Debug)]
pub(crate) struct ProxyMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    pub(crate) proxy_errors: IntCounterVec,
    pub(crate) open_connections: IntGaugeVec,
    pub(crate) connections: IntCounterVec,
    pub(crate) connection_errors: IntCounterVec,
    pub(crate) limit_hits: IntCounterVec,
    pub(crate) endpoints: IntGaugeVec,
    pub(crate) retries: IntCounterVec,
    /// Requests sent to each endpoint by the balancer.
    pub(crate) balancer_picks: IntCounterVec,
    pub(crate) tls_handshakes: IntCounterVec,
    pub(crate) authz_decisions: IntCounterVec,
    identity_expiry: prometheus::IntGauge,
    identity_renewals: IntCounterVec,
    label_overflow: IntCounter,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    /// Requests in flight, by direction (inbound, outbound).
    open_streams: [IntGauge; 2],
    /// Telemetry items (spans, metric points) sent to the collector.
    pub(crate) telemetry_exported: IntCounterVec,
    /// Telemetry items dropped, by signal and reason (queue_full, export_failed).
    pub(crate) telemetry_dropped: IntCounterVec,
    /// Finished spans not exported: not sampled, neither failed nor slow.
    pub(crate) spans_unsampled: IntCounter,
    /// Log each request (target `access`).
    pub(crate) access_log: AtomicBool,
    methods: Mutex<HashSet<String>>,
}

const REQUEST_LABELS: [&str; 5] = ["direction", "src_service", "dst_service", "grpc_method", "grpc_status"];

impl ProxyMetrics {
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mesh_request_duration_seconds",
                "Request latency through the proxy, to the end of the response.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &REQUEST_LABELS,
        )?;
        registry.register(Box::new(duration.clone()))?;
        let label_overflow = IntCounter::new(
            "mesh_metric_label_overflow_total",
            "Requests whose gRPC method was recorded as `other` because the method label limit was reached.",
        )?;
        registry.register(Box::new(label_overflow.clone()))?;
        let open_streams = gauge("mesh_open_streams", "Requests in flight through the proxy.", &["direction"])?;
        let spans_unsampled = IntCounter::new(
            "mesh_spans_unsampled_total",
            "Finished spans not exported: not sampled, and neither failed nor slow.",
        )?;
        registry.register(Box::new(spans_unsampled.clone()))?;
        let metrics = Self {
            requests: counter("mesh_requests_total", "Requests through the proxy, by outcome.", &REQUEST_LABELS)?,
            duration,
            proxy_errors: counter(
                "mesh_proxy_errors_total",
                "Requests the proxy answered itself, by stable reason.",
                &["direction", "reason"],
            )?,
            open_connections: gauge(
                "mesh_open_connections",
                "Open connections accepted by the proxy.",
                &["direction"],
            )?,
            connections: counter("mesh_connections_total", "Connections accepted by the proxy.", &["direction"])?,
            connection_errors: counter(
                "mesh_connection_errors_total",
                "Accepted connections that ended in an error, by class (protocol, timeout, io).",
                &["direction", "reason"],
            )?,
            limit_hits: counter("mesh_limit_hits_total", "Times a configured limit refused work.", &["limit"])?,
            endpoints: gauge("mesh_endpoints", "Endpoints known per destination service.", &["dst_service"])?,
            retries: counter(
                "mesh_retries_total",
                "Requests sent to another endpoint because the first never left (connect failure, closed connection).",
                &["dst_service"],
            )?,
            balancer_picks: counter(
                "mesh_balancer_picks_total",
                "Endpoints chosen by the balancer, by destination service and endpoint instance id (series go with the endpoint).",
                &["dst_service", "endpoint"],
            )?,
            tls_handshakes: counter(
                "mesh_tls_handshakes_total",
                "mTLS handshakes between proxies by outcome and reason (expired, not_yet_valid, unknown_ca, wrong_identity, no_client_certificate, not_tls, timeout ...).",
                &["direction", "outcome", "reason"],
            )?,
            authz_decisions: counter(
                "mesh_authz_decisions_total",
                "Inbound authorization decisions by result (allow, deny).",
                &["result"],
            )?,
            identity_expiry: {
                let g = prometheus::IntGauge::new(
                    "mesh_identity_expiry_timestamp_seconds",
                    "When this proxy's current certificate expires, Unix seconds (0: none).",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            identity_renewals: counter(
                "mesh_identity_renewals_total",
                "Certificate requests to the control plane by outcome.",
                &["outcome"],
            )?,
            label_overflow,
            request_bytes: counter(
                "mesh_request_bytes_total",
                "Request body bytes through the proxy.",
                &["direction", "src_service", "dst_service"],
            )?,
            response_bytes: counter(
                "mesh_response_bytes_total",
                "Response body bytes through the proxy.",
                &["direction", "src_service", "dst_service"],
            )?,
            open_streams: [
                open_streams.with_label_values(&[Direction::Inbound.as_str()]),
                open_streams.with_label_values(&[Direction::Outbound.as_str()]),
            ],
            telemetry_exported: counter(
                "mesh_telemetry_exported_total",
                "Telemetry sent to the collector, by signal (spans; metrics counts data points).",
                &["signal"],
            )?,
            telemetry_dropped: counter(
                "mesh_telemetry_dropped_total",
                "Telemetry dropped instead of slowing traffic, by signal and reason (queue_full, export_failed).",
                &["signal", "reason"],
            )?,
            spans_unsampled,
            access_log: AtomicBool::new(false),
            methods: Mutex::new(HashSet::new()),
        };
        // Export the per-direction series at 0 from the start, so dashboards and alerts see
        // them before the first connection.
        for direction in [Direction::Inbound, Direction::Outbound] {
            metrics.open_connections.with_label_values(&[direction.as_str()]).set(0);
            metrics.connections.with_label_values(&[direction.as_str()]).reset();
        }
        Ok(metrics)
    }

    /// Records a certificate request's outcome and the current certificate's expiry.
    pub(crate) fn record_identity(&self, outcome: &str, expiry_unix: i64) {
        self.identity_renewals.with_label_values(&[outcome]).inc();
        if expiry_unix > 0 {
            self.identity_expiry.set(expiry_unix);
        }
    }

    /// The `grpc_method` label for a request path: `/pkg.Service/Method` for gRPC paths while
    /// under the limit, `other` beyond it or for anything else.
    pub(crate) fn method_label(&self, path: &str) -> String {
        let grpc_like = path.len() <= 128
            && path.starts_with('/')
            && path[1..].split('/').count() == 2
            && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
        if !grpc_like {
            return "other".to_string();
        }
        let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        if methods.contains(path) {
            return path.to_string();
        }
        if methods.len() < MAX_METHODS {
            methods.insert(path.to_string());
            return path.to_string();
        }
        self.label_overflow.inc();
        "other".to_string()
    }

    /// Starts timing a request.
    pub(crate) fn start(self: &Arc<Self>, direction: Direction, src: &str, dst: &str, method: String) -> Recorder {
        self.open_streams[direction as usize].inc();
        Recorder {
            metrics: self.clone(),
            direction,
            peers: [src, dst].map(str::to_string),
            method,
            started: Instant::now(),
            span: None,
            error: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            outcome: None,
        }
    }
}

/// One request's telemetry: times it, counts its bytes, carries its span, and records all of it
/// once, when the response ends (or, if the caller gave up first, when it is dropped: CANCELLED).
#[derive(Debug)]
pub(crate) struct Recorder {
    metrics: Arc<ProxyMetrics>,
    direction: Direction,
    /// Source and destination services.
    peers: [String; 2],
    method: String,
    started: Instant,
    span: Option<ActiveSpan>,
    error: Option<&'static str>,
    request_bytes: Arc<AtomicU64>,
    /// Final gRPC status and response bytes, once known.
    outcome: Option<(&'static str, u64)>,
}

impl Recorder {
    /// Attaches this hop's span.
    pub(crate) fn trace(&mut self, span: ActiveSpan) {
        self.span = Some(span);
    }

    /// This hop's span, while the request runs.
    pub(crate) fn span_mut(&mut self) -> Option<&mut ActiveSpan> {
        self.span.as_mut()
    }

    /// The trace id, for logs.
    pub(crate) fn trace_id(&self) -> Option<String> {
        self.span.as_ref().map(|s| s.context.trace_id_hex())
    }

    /// The counter the request body adds its bytes to.
    pub(crate) fn request_bytes(&self) -> Arc<AtomicU64> {
        self.request_bytes.clone()
    }

    /// Marks the call as answered by the proxy itself, with a stable reason.
    pub(crate) fn proxy_error(&mut self, reason: &'static str) {
        self.error = Some(reason);
    }

    /// Records the request with `status` (a [`grpc_status_label`] value) and the response body size.
    pub(crate) fn finish(mut self, status: &'static str, response_bytes: u64) {
        self.outcome = Some((status, response_bytes));
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let (status, response_bytes) = self.outcome.unwrap_or(("CANCELLED", 0));
        let elapsed = self.started.elapsed();
        let m = &self.metrics;
        m.open_streams[self.direction as usize].dec();
        let [src, dst] = &self.peers;
        let direction = self.direction.as_str();
        let values = [direction, src, dst, &self.method, status];
        m.requests.with_label_values(&values).inc();
        m.duration.with_label_values(&values).observe(elapsed.as_secs_f64());
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        if request_bytes > 0 {
            m.request_bytes.with_label_values(&[direction, src, dst]).inc_by(request_bytes);
        }
        if response_bytes > 0 {
            m.response_bytes.with_label_values(&[direction, src, dst]).inc_by(response_bytes);
        }
        if m.access_log.load(Ordering::Relaxed) {
            let trace_id = self.trace_id();
            tracing::info!(
                target: "access",
                direction,
                src_service = %src,
                dst_service = %dst,
                grpc_method = %self.method,
                grpc_status = status,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                request_bytes,
                response_bytes,
                mesh_error = self.error.unwrap_or(""),
                trace_id = trace_id.as_deref().unwrap_or(""),
            );
        }
        if let Some(span) = self.span.take() {
            let peer = if self.direction == Direction::Inbound { src } else { dst };
            span.finish(&self.method, peer, status, self.error, elapsed);
        }
    }
}

/// The `grpc_status` label for a `grpc-status` header value: the code's name (`OK`,
/// `UNAVAILABLE` ...), `UNKNOWN` for values outside the spec.
pub(crate) fn grpc_status_label(value: &[u8]) -> &'static str {
    std::str::from_utf8(value).ok().and_then(|s| s.trim().parse::<usize>().ok()).map_or("UNKNOWN", code_name)
}

/// The numeric gRPC code of a [`grpc_status_label`] value (2, UNKNOWN, for anything else).
pub(crate) fn grpc_status_code(label: &str) -> i64 {
    NAMES.iter().position(|n| *n == label).map_or(2, |i| i as i64)
}

/// The `grpc_status` label of a status the proxy makes itself.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    code_name(code as usize)
}

const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_name(code: usize) -> &'static str {
    NAMES.get(code).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_capped() -> prometheus::Result<()> {
        let m = ProxyMetrics::new(&Registry::new())?;
        assert_eq!(m.method_label("/pkg.Svc/Method"), "/pkg.Svc/Method");
        assert_eq!(m.method_label("/not grpc"), "other");
        assert_eq!(m.method_label("/a/b/c"), "other");
        for i in 1..MAX_METHODS {
            m.method_label(&format!("/s/m{i}"));
        }
        assert_eq!(m.method_label("/s/one-too-many"), "other");
        assert_eq!(m.label_overflow.get(), 1);
        Ok(())
    }

    #[test]
    fn status_labels_are_code_names() {
        assert_eq!(grpc_status_label(b"0"), "OK");
        assert_eq!(grpc_status_label(b"14"), "UNAVAILABLE");
        assert_eq!(grpc_status_label(b"99"), "UNKNOWN");
        assert_eq!(grpc_status_label(b"x"), "UNKNOWN");
        assert_eq!(code_label(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
    }
}
