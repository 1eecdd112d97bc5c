//! The admin server: `/live` (the process runs), `/serving` (the listeners serve: with mTLS, the
//! certificate is in hand; what an app that calls out through this proxy waits for), `/ready`
//! (registered and serving: what peers and orchestrators wait for; in outbound-only mode, the same
//! as `/serving`), `/metrics` (Prometheus text), `/identity` (this proxy's identity and
//! certificate expiry, JSON). HTTP/1.1 on the shared small server (at most 64 connections, 10 s
//! to send a request's headers), loopback by default.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use mesh_common::http1::{self, Body, respond};
use tokio::net::TcpListener;

use crate::identity::IdentityState;
use crate::telemetry::Telemetry;
use crate::telemetry::labels::Limit;

/// What the admin server reports.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) ready: AtomicBool,
    /// The listeners serve.
    pub(crate) serving: AtomicBool,
    pub(crate) registry: prometheus::Registry,
    /// Set once the proxy has an identity (mTLS on).
    pub(crate) identity: std::sync::OnceLock<Arc<IdentityState>>,
    /// The service policies in force, as the status record says them (JSON).
    pub(crate) policies: std::sync::OnceLock<tokio::sync::watch::Receiver<Vec<u8>>>,
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

/// Serves the admin endpoints until the process exits.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, telemetry: &Telemetry) {
    let limits = http1::Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        refused: Some(telemetry.limit_counter(Limit::AdminConnections)),
    };
    http1::serve(listener, Arc::new(move |req| respond_to(req.uri().path(), &state)), limits).await;
}

fn respond_to(path: &str, state: &AdminState) -> Response<Body> {
    let text = |status, body: &'static str| respond(status, "text/plain", Bytes::from_static(body.as_bytes()));
    match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/serving" if state.serving.load(Ordering::Acquire) => text(StatusCode::OK, "serving\n"),
        "/serving" => text(StatusCode::SERVICE_UNAVAILABLE, "not serving yet\n"),
        "/identity" => respond(StatusCode::OK, "application/json", identity_json(state)),
        "/policies" => {
            let json = state.policies.get().map(|rx| rx.borrow().clone()).unwrap_or_else(|| b"{}".to_vec());
            respond(StatusCode::OK, "application/json", String::from_utf8_lossy(&json).into_owned())
        }
        "/metrics" => http1::metrics(&state.registry),
        _ => text(StatusCode::NOT_FOUND, "not found: try /live, /serving, /ready, /metrics, /identity\n"),
    }
}
