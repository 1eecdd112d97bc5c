//! Tracing at each hop: the W3C trace context (`traceparent`) is read from the request, or a new
//! trace starts here; the proxy opens one span for its hop (SERVER on inbound, CLIENT on
//! outbound) and rewrites `traceparent` so that whatever happens next is that span's child.
//!
//! A span costs two ids and a timestamp until its request ends. Only then is the export decided:
//! sampled traces (the caller's decision, or the head-sampling ratio for new traces), and any
//! request that failed or was slow, whatever the sampling said. Finished spans go to the exporter
//! through a bounded queue; when it is full the span is dropped and counted, never waited for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::Telemetry;
use crate::headers::TRACEPARENT;

/// A position in a trace: the trace, the span, and whether the trace is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`). Anything malformed, all-zero
    /// ids, version `ff`, or uppercase hex (which the spec says to ignore) yields `None`; a
    /// higher version is read by its first four fields, as the spec asks.
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || (value.len() > 55 && (value[..2] == *b"00" || value[55] != b'-')) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let (mut version, mut trace_id, mut span_id, mut flags) = ([0u8; 1], [0u8; 16], [0u8; 8], [0u8; 1]);
        lower_hex(&value[0..2], &mut version)?;
        lower_hex(&value[3..35], &mut trace_id)?;
        lower_hex(&value[36..52], &mut span_id)?;
        lower_hex(&value[53..55], &mut flags)?;
        if version == [0xff] || trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags[0] & 1 == 1 })
    }

    /// The `traceparent` value for this position. Marked sensitive so HPACK never indexes it: a
    /// value unique to each request would only churn the connection's dynamic table and push out
    /// the headers that do repeat.
    pub(crate) fn header_value(&self) -> HeaderValue {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // The slices are exactly twice the ids' lengths: encoding cannot fail.
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        if self.sampled {
            out[54] = b'1';
        }
        let mut value = HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// The trace id as 32 lowercase hex digits (what logs and the trace API show).
    pub(crate) fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// Decodes lowercase hex (the only case the spec allows) into `out`.
fn lower_hex(src: &[u8], out: &mut [u8]) -> Option<()> {
    if !src.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode_to_slice(src, out).ok()
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// An endpoint as a span records it: values, not the balancer's endpoint. Built once per
/// endpoint; cloning it for a span costs two reference counts, no allocation.
#[derive(Clone, Debug)]
pub(crate) struct EndpointTag {
    /// The instance id.
    pub(crate) instance: Arc<str>,
    /// The address dialled.
    pub(crate) addr: Arc<str>,
}

/// Which side of a hop a span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// The inbound proxy receiving a call for its app.
    Server,
    /// The outbound proxy making its app's call.
    Client,
}

/// When spans are exported.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TraceSettings {
    /// Share of new traces sampled (0.0-1.0); a caller's decision is always followed.
    pub(crate) sampling: f64,
    /// Requests at least this slow are exported even when not sampled.
    pub(crate) slow: Duration,
}

/// A finished span, as handed to the exporter.
#[derive(Debug)]
pub(crate) struct FinishedSpan {
    pub(crate) context: TraceContext,
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) kind: SpanKind,
    /// The gRPC method label (`/pkg.Service/Method`, or `other`).
    pub(crate) method: String,
    /// The service on the other side of the hop.
    pub(crate) peer_service: String,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    /// The gRPC status label (`OK`, `UNAVAILABLE` ...).
    pub(crate) status: &'static str,
    /// The proxy's own reason when it answered the call itself.
    pub(crate) error: Option<&'static str>,
    /// The socket address on the other side (the caller's on inbound, the endpoint's on outbound).
    pub(crate) peer_addr: Option<String>,
    /// The chosen endpoint's instance id (outbound).
    pub(crate) endpoint: Option<String>,
    /// Attempts sent to another endpoint (outbound).
    pub(crate) retries: u32,
    /// Why the last retry was made (`mesh_retries_total`'s reason), if any.
    pub(crate) retry_reason: Option<&'static str>,
}

/// Starts spans and queues finished ones for export.
#[derive(Debug)]
pub(crate) struct Tracer {
    settings: TraceSettings,
    queue: mpsc::Sender<FinishedSpan>,
    queue_full: IntCounter,
    unsampled: IntCounter,
}

impl Tracer {
    pub(crate) fn new(settings: TraceSettings, queue: mpsc::Sender<FinishedSpan>, telemetry: &Telemetry) -> Self {
        Self { settings, queue, queue_full: telemetry.span_queue_full(), unsampled: telemetry.spans_unsampled() }
    }

    /// Opens this hop's span under the request's trace context (or starts a trace) and points the
    /// request's `traceparent` at it.
    pub(crate) fn start(self: &Arc<Self>, kind: SpanKind, headers: &mut HeaderMap) -> ActiveSpan {
        let (context, parent) = step(headers, self.settings.sampling);
        ActiveSpan {
            tracer: self.clone(),
            context,
            parent,
            kind,
            start: SystemTime::now(),
            peer_addr: None,
            endpoint: None,
            retries: 0,
            retry_reason: None,
        }
    }

    /// Whether a finished span goes to the collector: sampled, failed, or slow.
    fn wanted(&self, sampled: bool, status: &str, duration: Duration) -> bool {
        let wanted = sampled || status != "OK" || duration >= self.settings.slow;
        if !wanted {
            self.unsampled.inc();
        }
        wanted
    }

    fn export(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.queue_full.inc();
        }
    }
}

/// Moves a request one step down its trace: a new position under the request's `traceparent`
/// (or at the root of a new trace, sampled at `sampling`), written back to `traceparent`.
/// Returns the position and its parent's span id.
pub(crate) fn step(headers: &mut HeaderMap, sampling: f64) -> (TraceContext, Option<[u8; 8]>) {
    let parent = headers.get(&TRACEPARENT).and_then(|v| TraceContext::parse(v.as_bytes()));
    let context = match parent {
        Some(parent) => TraceContext { span_id: random_span_id(), ..parent },
        None => {
            TraceContext { trace_id: random_trace_id(), span_id: random_span_id(), sampled: fastrand::f64() < sampling }
        }
    };
    headers.insert(TRACEPARENT, context.header_value());
    (context, parent.map(|p| p.span_id))
}

/// A hop's span while its request runs.
#[derive(Debug)]
pub(crate) struct ActiveSpan {
    tracer: Arc<Tracer>,
    pub(crate) context: TraceContext,
    parent: Option<[u8; 8]>,
    kind: SpanKind,
    start: SystemTime,
    peer_addr: Option<SocketAddr>,
    endpoint: Option<EndpointTag>,
    retries: u32,
    retry_reason: Option<&'static str>,
}

impl ActiveSpan {
    /// The caller's socket address (inbound).
    pub(crate) fn set_peer(&mut self, addr: SocketAddr) {
        self.peer_addr = Some(addr);
    }

    /// The endpoint this attempt went to (outbound).
    pub(crate) fn set_endpoint(&mut self, endpoint: &EndpointTag) {
        if self.endpoint.is_some() {
            self.retries += 1;
        }
        self.endpoint = Some(endpoint.clone());
    }

    /// The call is being sent again, for `reason`.
    pub(crate) fn retried_for(&mut self, reason: &'static str) {
        self.retry_reason = Some(reason);
    }

    /// Ends the span and hands it to the exporter if it is wanted. Nothing is allocated for a
    /// span that is not.
    pub(crate) fn finish(
        self,
        method: &str,
        peer_service: &str,
        status: &'static str,
        error: Option<&'static str>,
        duration: Duration,
    ) {
        if !self.tracer.wanted(self.context.sampled, status, duration) {
            return;
        }
        let (endpoint, endpoint_addr) = self.endpoint.map(|e| (e.instance.to_string(), e.addr.to_string())).unzip();
        let span = FinishedSpan {
            context: self.context,
            parent: self.parent,
            kind: self.kind,
            method: method.to_string(),
            peer_service: peer_service.to_string(),
            start: self.start,
            duration,
            status,
            error,
            peer_addr: endpoint_addr.or_else(|| self.peer_addr.map(|a| a.to_string())),
            endpoint,
            retries: self.retries,
            retry_reason: self.retry_reason,
        };
        self.tracer.export(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::parse(VALID).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.header_value().as_bytes(), VALID);
        let unsampled = TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A future version may append fields after a dash.
        assert!(TraceContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
    }

    fn tracer(sampling: f64) -> (Arc<Tracer>, mpsc::Receiver<FinishedSpan>) {
        let (tx, rx) = mpsc::channel(2);
        let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap();
        let settings = TraceSettings { sampling, slow: Duration::from_secs(1) };
        (Arc::new(Tracer::new(settings, tx, &telemetry)), rx)
    }

    #[test]
    fn a_hop_is_a_child_of_the_callers_span_and_propagates_its_own() {
        let (tracer, _rx) = tracer(0.0);
        let mut headers = HeaderMap::new();
        headers
            .insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let span = tracer.start(SpanKind::Server, &mut headers);
        assert_eq!(span.parent, Some(TraceContext::parse(VALID).unwrap().span_id));
        assert_eq!(span.context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(span.context.sampled, "the caller's decision is followed");
        let sent = TraceContext::parse(headers[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(sent, span.context, "what goes on is this span's child");

        let mut fresh = HeaderMap::new();
        let root = tracer.start(SpanKind::Client, &mut fresh);
        assert_eq!(root.parent, None);
        assert!(!root.context.sampled, "ratio 0 samples no new trace");
        assert!(fresh.contains_key(&TRACEPARENT));
    }

    #[test]
    fn failed_and_slow_requests_are_exported_even_unsampled_and_a_full_queue_drops() {
        let (tracer, mut rx) = tracer(0.0);
        let start = |t: &Arc<Tracer>| t.start(SpanKind::Server, &mut HeaderMap::new());
        start(&tracer).finish("/a/b", "x", "OK", None, Duration::from_millis(1));
        assert!(rx.try_recv().is_err(), "unsampled, fast and OK: not exported");
        start(&tracer).finish("/a/b", "x", "UNAVAILABLE", Some("no_endpoints"), Duration::from_millis(1));
        start(&tracer).finish("/a/b", "x", "OK", None, Duration::from_secs(2));
        start(&tracer).finish("/a/b", "x", "INTERNAL", None, Duration::from_millis(1));
        assert_eq!(rx.try_recv().unwrap().error, Some("no_endpoints"));
        assert_eq!(rx.try_recv().unwrap().duration, Duration::from_secs(2));
        assert_eq!(tracer.queue_full.get(), 1, "the third did not fit a queue of 2");
        assert_eq!(tracer.unsampled.get(), 1);
    }
}
