//! The admin server: `/live` (the process runs), `/serving` (the listeners serve: with mTLS, the
//! certificate is in hand; what an app that calls out through this proxy waits for), `/ready`
//! (registered and serving: what peers and orchestrators wait for; in outbound-only mode, the same
//! as `/serving`), `/metrics`
//! (Prometheus text), `/identity` (this proxy's identity and certificate expiry, JSON). HTTP/1.1,
//! loopback by default.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

/// What the admin server reports.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) ready: AtomicBool,
    /// The listeners serve.
    pub(crate) serving: AtomicBool,
    pub(crate) registry: prometheus::Registry,
    /// Set once the proxy has an identity (mTLS on).
    pub(crate) identity: std::sync::OnceLock<Arc<crate::identity::IdentityState>>,
}

fn identity_json(state: &AdminState) -> String {
    let Some(identity) = state.identity.get() else {
        return r#"{"mtls":false}"#.to_string();
    };
    let current = identity.current();
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = unix(std::time::SystemTime::now());
    let not_after = unix(current.not_after);
    format!(
        r#"{{"mtls":true,"identity":"{}","not_after":{not_after},"expires_in_seconds":{}}}"#,
        current.identity,
        i128::from(not_after) - i128::from(now)
    )
}

type Body = http_body_util::Full<Bytes>;

/// Serves the admin endpoints until the process exits.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = respond(req.uri().path(), &state);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn respond(path: &str, state: &AdminState) -> Response<Body> {
    let (status, body, content_type) = match path {
        "/live" => (StatusCode::OK, Bytes::from_static(b"live\n"), "text/plain"),
        "/ready" if state.ready.load(Ordering::Acquire) => {
            (StatusCode::OK, Bytes::from_static(b"ready\n"), "text/plain")
        }
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"not ready\n"), "text/plain"),
        "/serving" if state.serving.load(Ordering::Acquire) => {
            (StatusCode::OK, Bytes::from_static(b"serving\n"), "text/plain")
        }
        "/serving" => (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"not serving yet\n"), "text/plain"),
        "/identity" => (StatusCode::OK, Bytes::from(identity_json(state)), "application/json"),
        "/metrics" => {
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&state.registry.gather(), &mut buf) {
                Ok(()) => (StatusCode::OK, Bytes::from(buf), "text/plain; version=0.0.4"),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(e.to_string()), "text/plain"),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found: try /live, /serving, /ready, /metrics, /identity\n"),
            "text/plain",
        ),
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    if let Ok(ct) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    response
}
