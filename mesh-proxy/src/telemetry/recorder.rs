//! One call's telemetry: its golden signals (count, latency, bytes, status) and its span,
//! recorded once when the call ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Telemetry;
use super::labels::{Direction, ErrorReason, STATUS_CANCELLED};
use super::trace::ActiveSpan;

impl Telemetry {
    /// Starts timing a request.
    pub(crate) fn start(self: &Arc<Self>, direction: Direction, src: &str, dst: &str, method: Arc<str>) -> Recorder {
        self.families.open_streams[direction as usize].inc();
        Recorder {
            telemetry: self.clone(),
            direction,
            peers: [self.shared_name(src), self.shared_name(dst)],
            method,
            started: Instant::now(),
            span: None,
            error: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            outcome: None,
            route: None,
        }
    }
}

/// One request's telemetry: times it, counts its bytes, carries its span, and records all of it
/// once, when the response ends (or, if the caller gave up first, when it is dropped: CANCELLED).
#[derive(Debug)]
pub(crate) struct Recorder {
    telemetry: Arc<Telemetry>,
    direction: Direction,
    /// Source and destination services.
    peers: [Arc<str>; 2],
    method: Arc<str>,
    started: Instant,
    span: Option<ActiveSpan>,
    error: Option<ErrorReason>,
    request_bytes: Arc<AtomicU64>,
    /// Final gRPC status and response bytes, once known.
    outcome: Option<(&'static str, u64)>,
    /// The policy route the call took, and its subset (outbound).
    route: Option<(Arc<str>, Option<Arc<str>>)>,
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

    /// Marks the call as answered by the proxy itself, with a stable reason (and counts it).
    pub(crate) fn proxy_error(&mut self, reason: ErrorReason) {
        let labels = [self.direction.as_str(), reason.as_str()];
        self.telemetry.families.proxy_errors.with_label_values(&labels).inc();
        self.error = Some(reason);
    }

    /// The call took `route` of its service's policy, to `subset` (`None`: all instances).
    pub(crate) fn route(&mut self, route: Arc<str>, subset: Option<Arc<str>>) {
        self.route = Some((route, subset));
    }

    /// The subset drawn for the route already recorded, when it was drawn later.
    pub(crate) fn route_subset(&mut self, subset: Option<Arc<str>>) {
        if let Some((_, drawn)) = &mut self.route {
            *drawn = subset;
        }
    }

    /// Records the request with `status` (a [`super::labels::grpc_status`] value) and the response body size.
    pub(crate) fn finish(mut self, status: &'static str, response_bytes: u64) {
        self.outcome = Some((status, response_bytes));
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let (status, response_bytes) = self.outcome.unwrap_or((STATUS_CANCELLED, 0));
        let elapsed = self.started.elapsed();
        let m = &self.telemetry.families;
        m.open_streams[self.direction as usize].dec();
        let [src, dst] = &self.peers;
        let direction = self.direction.as_str();
        let values = [direction, src, dst, &self.method, status];
        m.requests.with_label_values(&values).inc();
        if let Some((route, subset)) = &self.route {
            let subset = subset.as_deref().unwrap_or("all");
            m.route_requests.with_label_values(&[dst, route, subset, status]).inc();
        }
        m.duration.with_label_values(&values).observe(elapsed.as_secs_f64());
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        if request_bytes > 0 {
            m.request_bytes.with_label_values(&[direction, src, dst]).inc_by(request_bytes);
        }
        if response_bytes > 0 {
            m.response_bytes.with_label_values(&[direction, src, dst]).inc_by(response_bytes);
        }
        if self.telemetry.access_log {
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
                mesh_error = self.error.map_or("", ErrorReason::as_str),
                trace_id = trace_id.as_deref().unwrap_or(""),
            );
        }
        if let Some(span) = self.span.take() {
            let peer = if self.direction == Direction::Inbound { src } else { dst };
            span.finish(&self.method, peer, status, self.error.map(ErrorReason::as_str), elapsed);
        }
    }
}
