//! A small HTTP/1.1 server for admin ports and read APIs (`/metrics`, health, the trace API): a
//! bounded number of connections, each on its own task, a bound on how long a client may take to
//! send its request headers, and a synchronous handler per request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A response body.
pub type Body = Full<Bytes>;

/// A request handler.
pub type Handler = Arc<dyn Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync>;

/// How a server is bounded.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most connections served at once; more are closed at once and counted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Counts connections refused at the cap, if given.
    pub refused: Option<prometheus::IntCounter>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 256, header_read_timeout: Duration::from_secs(10), refused: None }
    }
}

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(refused) = &limits.refused {
                refused.inc();
            }
            drop(tcp);
            continue;
        };
        let handler = handler.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let response = handler(&req);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A response with a body and content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// A JSON response.
pub fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
    }
}

/// A plain-text response (a newline is added).
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", message.into() + "\n")
}

/// The Prometheus text exposition of `registry`.
pub fn metrics(registry: &prometheus::Registry) -> Response<Body> {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    match prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        Ok(()) => respond(StatusCode::OK, "text/plain; version=0.0.4", buf),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
