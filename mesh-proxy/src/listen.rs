//! A listener: accepts connections (up to a cap), hands each to the transport, and serves
//! HTTP/2 on it with every limit set explicitly. On shutdown it stops accepting, sends GOAWAY on
//! every connection, and waits for in-flight streams up to the drain deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::body::ResponseBody;
use crate::config::H2Limits;
use crate::metrics::{Direction, ProxyMetrics};
use crate::runtime::MonitoredExecutor;
use crate::transport::Acceptor;

/// A bound listener and how to serve it.
pub(crate) struct Listener {
    pub(crate) listener: TcpListener,
    pub(crate) direction: Direction,
    pub(crate) limits: H2Limits,
    pub(crate) acceptor: Acceptor,
    pub(crate) metrics: Arc<ProxyMetrics>,
    /// How long in-flight streams may take after GOAWAY.
    pub(crate) drain: Duration,
    /// Instruments the listener's connection and stream tasks.
    pub(crate) tasks: tokio_metrics::TaskMonitor,
}

/// Serves `handler` until `shutdown` turns true, then drains.
pub(crate) async fn serve<H, F>(listener: Listener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let Listener { listener, direction, limits, acceptor, metrics, drain, tasks } = listener;
    let dir = direction.as_str();
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http2::Builder::new(MonitoredExecutor(tasks.clone()));
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .initial_connection_window_size(limits.connection_window)
        .initial_stream_window_size(limits.stream_window)
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.idle_timeout)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(1024))
        .max_send_buf_size(256 * 1024);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(direction = dir, %error, "accept failed");
                    metrics.limit_hits.with_label_values(&["accept_error"]).inc();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.limit_hits.with_label_values(&["max_connections"]).inc();
            tracing::warn!(direction = dir, %addr, limit = limits.max_connections, "connection refused: at the connection limit");
            drop(tcp);
            continue;
        };
        metrics.connections.with_label_values(&[dir]).inc();
        let open = metrics.open_connections.with_label_values(&[dir]);
        open.inc();
        let (acceptor, handler, metrics, builder) =
            (acceptor.clone(), handler.clone(), metrics.clone(), builder.clone());
        let watcher = graceful.watcher();
        // The handshake runs in the connection's own task, never on the accept loop.
        tokio::spawn(tasks.instrument(async move {
            let _slot = slot;
            match acceptor.accept(tcp, addr).await {
                Ok((io, peer)) => {
                    tracing::trace!(direction = dir, peer = %peer.addr, "accepted");
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        let response = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(response.await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(io), service);
                    if let Err(error) = watcher.watch(connection).await {
                        let reason = classify(&error);
                        metrics.connection_errors.with_label_values(&[dir, reason]).inc();
                        tracing::debug!(direction = dir, %addr, %error, reason, "connection ended with an error");
                    }
                }
                Err(error) => {
                    metrics.connection_errors.with_label_values(&[dir, "handshake"]).inc();
                    tracing::debug!(direction = dir, %addr, %error, "handshake failed");
                }
            }
            open.dec();
        }));
    }
    drop(listener);
    tracing::info!(direction = dir, connections = graceful.count(), "draining");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(direction = dir, "drain deadline reached; closing the remaining streams");
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// The `reason` label for a connection error.
fn classify(error: &hyper::Error) -> &'static str {
    if error.is_timeout() {
        return "timeout";
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return if h2.is_io() { "io" } else { "protocol" };
        }
        if e.is::<std::io::Error>() {
            return "io";
        }
        source = e.source();
    }
    if error.is_parse() { "protocol" } else { "other" }
}
