//! One outside request at the gateway, recorded once when its response ends: the golden signals
//! by route and host (`mesh_gateway_requests_total`, `mesh_gateway_request_duration_seconds`),
//! the gateway's span (the root of the request's trace, unless the outside caller's
//! `traceparent` is trusted), and, when the document asks for it, a JSON access log line.
//!
//! Label values stay bounded whatever outside clients send: `route` is a route's name (or
//! `unrouted` / `preflight`), `host` the route's pattern as the document writes it (`*` for any),
//! `code` an HTTP status, `grpc_status` a code name.
//!
//! The access log goes to standard output through a bounded queue and a thread of its own: a
//! slow reader of the log never slows traffic; a line the full queue cannot take is dropped and
//! counted (`mesh_telemetry_dropped_total{signal="access_log"}`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method};
use prometheus::IntCounter;
use serde::Serialize;

use super::Telemetry;
use super::labels::{DropReason, EdgeOutcome, EdgeProtocol, STATUS_CANCELLED, STATUS_NONE, STATUS_RESET, Signal};
use super::trace::ActiveSpan;

/// Access log lines waiting for the writer thread, at most.
pub(crate) const ACCESS_LOG_QUEUE: usize = 4096;
/// Longest path, host or user agent an access log line carries (longer ones are cut, marked `…`).
const MAX_FIELD: usize = 512;
/// The `peer.service` of the gateway's span: the caller is outside the mesh.
const OUTSIDE: &str = "outside";

/// The gateway's access log: JSON lines to a writer (standard output), through a bounded queue.
#[derive(Debug)]
pub(crate) struct AccessLog {
    lines: SyncSender<Vec<u8>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// A log written to standard output by a thread of its own.
    pub(crate) fn to_stdout(telemetry: &Telemetry) -> std::io::Result<Arc<Self>> {
        Self::to_writer(std::io::stdout(), ACCESS_LOG_QUEUE, telemetry)
    }

    /// A log written to `out` by a thread of its own, `queue` lines at most waiting.
    pub(crate) fn to_writer(
        out: impl Write + Send + 'static,
        queue: usize,
        telemetry: &Telemetry,
    ) -> std::io::Result<Arc<Self>> {
        let (lines, rx) = std::sync::mpsc::sync_channel(queue);
        std::thread::Builder::new().name("mesh-access-log".into()).spawn(move || write_lines(out, &rx))?;
        let dropped = telemetry
            .families
            .telemetry_dropped
            .with_label_values(&[Signal::AccessLog.as_str(), DropReason::QueueFull.as_str()]);
        Ok(Arc::new(Self { lines, dropped }))
    }

    fn write(&self, entry: &AccessEntry) {
        let Ok(mut line) = serde_json::to_vec(entry) else { return };
        line.push(b'\n');
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty; ends when every sender has.
fn write_lines(mut out: impl Write, lines: &Receiver<Vec<u8>>) {
    while let Ok(line) = lines.recv() {
        let mut written = out.write_all(&line);
        while let (Ok(()), Ok(line)) = (&written, lines.try_recv()) {
            written = out.write_all(&line);
        }
        if written.and_then(|()| out.flush()).is_err() {
            // Standard output is gone: nothing else to write to. Keep draining so senders
            // never block (they do not: they try), and count nothing twice.
            while lines.recv().is_ok() {}
            return;
        }
    }
}

/// One access log line. Never the request's credentials: no `authorization`, no cookies, no
/// query string; the subject is the verified token's `sub`.
#[derive(Debug, Default, Serialize)]
struct AccessEntry {
    time: String,
    client: Option<String>,
    method: String,
    host: String,
    path: String,
    protocol: &'static str,
    user_agent: Option<String>,
    route: String,
    service: Option<String>,
    subject: Option<String>,
    status: u16,
    grpc_status: &'static str,
    mesh_error: Option<String>,
    duration_ms: f64,
    response_bytes: u64,
    trace_id: String,
}

/// What the gateway knows of an outside request when it arrives.
#[derive(Debug)]
pub(crate) struct EdgeRequest<'a> {
    pub(crate) protocol: EdgeProtocol,
    pub(crate) method: &'a Method,
    /// As the client sent it (for the log only).
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) client: Option<SocketAddr>,
}

/// One outside request's telemetry, from its arrival to the end of its response (or until the
/// client goes away: recorded as CANCELLED).
#[derive(Debug)]
pub(crate) struct EdgeCall {
    telemetry: Arc<Telemetry>,
    protocol: EdgeProtocol,
    route: Arc<str>,
    host: Arc<str>,
    started: Instant,
    /// The `grpc_method` label of the request's path (the span's name).
    method: Arc<str>,
    span: Option<ActiveSpan>,
    /// Present when the document asks for an access log.
    log: Option<(Arc<AccessLog>, Box<AccessEntry>)>,
    /// The response's status, once it has one.
    code: Option<http::StatusCode>,
    grpc_status: Option<&'static str>,
    response_bytes: u64,
    ended: bool,
}

impl EdgeCall {
    /// Starts recording `request`, under `span` (its trace's position) with trace id `trace_id`.
    pub(crate) fn start(
        telemetry: &Arc<Telemetry>,
        request: &EdgeRequest<'_>,
        span: Option<ActiveSpan>,
        trace_id: [u8; 16],
        log: Option<&Arc<AccessLog>>,
    ) -> Self {
        let log = log.map(|log| {
            let header = |name: http::header::HeaderName| request.headers.get(name).map(|v| field(v.as_bytes()));
            let entry = AccessEntry {
                time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                client: request.client.map(|c| c.to_string()),
                method: request.method.to_string(),
                host: field(request.host.as_bytes()),
                path: field(request.path.as_bytes()),
                protocol: request.protocol.as_str(),
                user_agent: header(http::header::USER_AGENT),
                trace_id: hex::encode(trace_id),
                ..AccessEntry::default()
            };
            (log.clone(), Box::new(entry))
        });
        let span = span.map(|mut span| {
            if let Some(client) = request.client {
                span.set_peer(client);
            }
            span
        });
        Self {
            telemetry: telemetry.clone(),
            protocol: request.protocol,
            route: Arc::from(mesh_registry::gateway::UNROUTED),
            host: Arc::from("other"),
            started: Instant::now(),
            method: telemetry.method_label(request.path),
            span,
            log,
            code: None,
            grpc_status: None,
            response_bytes: 0,
            ended: false,
        }
    }

    /// The route that took the request, and which of its host patterns.
    pub(crate) fn routed(&mut self, route: &Arc<str>, host: &str) {
        self.route = route.clone();
        self.host = Arc::from(host);
    }

    /// The mesh service the request goes to (for the log).
    pub(crate) fn service(&mut self, service: &str) {
        if let Some((_, entry)) = &mut self.log {
            entry.service = Some(service.to_string());
        }
    }

    /// The caller's verified subject (for the log).
    pub(crate) fn subject(&mut self, subject: &HeaderValue) {
        if let Some((_, entry)) = &mut self.log {
            entry.subject = Some(field(subject.as_bytes()));
        }
    }

    /// The response's head: its status, a trailers-only gRPC status, the proxy's own reason.
    /// `empty`: the response has no body to come (nothing more will be seen of it).
    pub(crate) fn respond(&mut self, status: http::StatusCode, headers: &HeaderMap, empty: bool) {
        self.code = Some(status);
        if let Some(value) = headers.get("grpc-status") {
            self.grpc_status = Some(super::labels::grpc_status(value.as_bytes()));
        }
        if let (Some((_, entry)), Some(error)) = (&mut self.log, headers.get(crate::headers::MESH_ERROR)) {
            entry.mesh_error = Some(field(error.as_bytes()));
        }
        self.ended |= empty;
    }

    /// A data frame of `len` bytes went out.
    pub(crate) fn data(&mut self, len: usize) {
        self.response_bytes += len as u64;
    }

    /// The response's trailers (or gRPC-Web's trailer frame) went out: the call has ended.
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(value) = trailers.get("grpc-status") {
            self.grpc_status = Some(super::labels::grpc_status(value.as_bytes()));
        }
        self.ended = true;
    }

    /// The response body ended.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }

    /// The response body failed on its way (the service's stream was reset).
    pub(crate) fn broken(&mut self) {
        self.grpc_status = Some(STATUS_RESET);
        self.ended = true;
    }

    /// The `grpc_status` label: the call's, `none` for plain HTTP, CANCELLED if it never ended.
    fn grpc_status(&self) -> &'static str {
        match (self.ended, self.grpc_status, self.protocol) {
            (false, _, _) => STATUS_CANCELLED,
            (true, Some(status), _) => status,
            (true, None, EdgeProtocol::Http) => STATUS_NONE,
            (true, None, _) => "UNKNOWN",
        }
    }
}

impl Drop for EdgeCall {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let grpc_status = self.grpc_status();
        let outcome = EdgeOutcome::of(self.code, grpc_status);
        let m = &self.telemetry.families;
        let (route, host, protocol) = (&*self.route, &*self.host, self.protocol.as_str());
        let code = self.code.as_ref().map_or(STATUS_NONE, http::StatusCode::as_str);
        let labels = [route, host, protocol, code, grpc_status, outcome.as_str()];
        m.gateway_requests.with_label_values(&labels).inc();
        m.gateway_duration.with_label_values(&[route, host, protocol]).observe(elapsed.as_secs_f64());
        if let Some((log, mut entry)) = self.log.take() {
            entry.route = route.to_string();
            entry.status = self.code.map_or(0, |c| c.as_u16());
            entry.grpc_status = grpc_status;
            entry.duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
            entry.response_bytes = self.response_bytes;
            log.write(&entry);
        }
        if let Some(span) = self.span.take() {
            // A plain HTTP answer below 500 is not a failed span.
            let status = match (grpc_status, outcome) {
                (STATUS_NONE, EdgeOutcome::ServerError) => "UNKNOWN",
                (STATUS_NONE, _) => "OK",
                (status, _) => status,
            };
            span.finish(&self.method, OUTSIDE, status, None, elapsed);
        }
    }
}

/// A header or path for the log: valid UTF-8 (lossy), at most [`MAX_FIELD`] bytes.
fn field(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FIELD)]).into_owned();
    if bytes.len() > MAX_FIELD { text + "…" } else { text }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use prometheus::Registry;

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn request<'a>(headers: &'a HeaderMap, protocol: EdgeProtocol) -> EdgeRequest<'a> {
        EdgeRequest {
            protocol,
            method: &Method::POST,
            host: "API.example.com",
            path: "/mesh.demo.v1.Echo/Unary",
            headers,
            client: Some(SocketAddr::from(([127, 0, 0, 2], 40000))),
        }
    }

    fn count(t: &Telemetry, labels: &[&str]) -> u64 {
        t.families.gateway_requests.get_metric_with_label_values(labels).map_or(0, |c| c.get())
    }

    #[test]
    fn calls_are_counted_by_route_host_and_outcome() -> prometheus::Result<()> {
        let t = Telemetry::new(&Registry::new(), false)?;
        let headers = HeaderMap::new();
        let route: Arc<str> = Arc::from("echo");
        // A gRPC call that ends with its trailers.
        let mut call = EdgeCall::start(&t, &request(&headers, EdgeProtocol::Grpc), None, [1; 16], None);
        call.routed(&route, "*.example.com");
        call.respond(http::StatusCode::OK, &HeaderMap::new(), false);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        call.trailers(&trailers);
        drop(call);
        assert_eq!(count(&t, &["echo", "*.example.com", "grpc", "200", "UNAVAILABLE", "server_error"]), 1);
        // Plain HTTP: a 404 is the client's problem, a 503 the gateway's.
        for (status, outcome) in [(404, "client_error"), (503, "server_error"), (304, "success")] {
            let mut call = EdgeCall::start(&t, &request(&headers, EdgeProtocol::Http), None, [1; 16], None);
            call.respond(http::StatusCode::from_u16(status).unwrap_or_default(), &HeaderMap::new(), true);
            drop(call);
            assert_eq!(count(&t, &["unrouted", "other", "http", &status.to_string(), "none", outcome]), 1);
        }
        // The client went away before the end.
        let mut call = EdgeCall::start(&t, &request(&headers, EdgeProtocol::GrpcWeb), None, [1; 16], None);
        call.respond(http::StatusCode::OK, &HeaderMap::new(), false);
        drop(call);
        assert_eq!(count(&t, &["unrouted", "other", "grpc_web", "200", "CANCELLED", "client_error"]), 1);
        Ok(())
    }

    #[test]
    fn the_access_log_is_json_without_credentials_and_bounded() -> prometheus::Result<()> {
        let t = Telemetry::new(&Registry::new(), false)?;
        let out = Shared::default();
        let log = AccessLog::to_writer(out.clone(), 8, &t).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer secret-token"));
        headers.insert("user-agent", HeaderValue::from_static("grpc-python/1.7"));
        let mut call = EdgeCall::start(&t, &request(&headers, EdgeProtocol::Grpc), None, [0xab; 16], Some(&log));
        call.routed(&Arc::from("echo"), "*");
        call.service("store");
        call.subject(&HeaderValue::from_static("alice"));
        call.respond(http::StatusCode::OK, &HeaderMap::new(), false);
        call.data(12);
        call.ended();
        drop(call);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = String::from_utf8_lossy(&out.0.lock()).into_owned();
            if text.ends_with('\n') || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(line["client"], "127.0.0.2:40000");
        assert_eq!(line["route"], "echo");
        assert_eq!(line["service"], "store");
        assert_eq!(line["subject"], "alice");
        assert_eq!(line["grpc_status"], "UNKNOWN", "a gRPC call that ended without a status");
        assert_eq!(line["trace_id"], "ab".repeat(16));
        assert_eq!(line["response_bytes"], 12);
        assert_eq!(line["user_agent"], "grpc-python/1.7");
        assert!(!text.contains("secret-token"), "{text}");
        // A full queue drops lines and counts them, never blocks.
        let stuck = AccessLog { lines: std::sync::mpsc::sync_channel(1).0, dropped: log.dropped.clone() };
        for _ in 0..3 {
            stuck.write(&AccessEntry::default());
        }
        assert_eq!(log.dropped.get(), 3, "a queue with no reader takes nothing");
        assert_eq!(field(&[b'a'; 600]).len(), MAX_FIELD + "…".len());
        Ok(())
    }
}
