//! A listener: accepts connections (up to a cap), hands each to the transport, and serves
//! HTTP/2 on it (or, at the gateway's edge, HTTP/1.1 and HTTP/2, told apart by the first bytes)
//! with every limit set explicitly. On shutdown it stops accepting, sends GOAWAY on every
//! connection, and waits for in-flight streams up to the drain deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::first_byte::FirstByteDeadline;
use super::transport::{Acceptor, BoxIo, PeerInfo};
use crate::telemetry::events::{AcceptFailed, ConnectionFailed, ConnectionRefused};
use crate::telemetry::labels::ConnectionError;
use crate::telemetry::runtime::MonitoredExecutor;
use crate::telemetry::{Direction, Telemetry};

/// HTTP/2 server limits, set explicitly on every listener.
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// Connection-level window.
    pub connection_window: u32,
    /// Stream-level window.
    pub stream_window: u32,
    /// Most open connections.
    pub max_connections: usize,
    /// PING interval; a peer that does not answer within it is dropped.
    pub idle_timeout: Duration,
    /// Bound on the preface and first SETTINGS.
    pub handshake_timeout: Duration,
}

/// Why a connection's HTTP failed.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every HTTP/2 limit, set explicitly.
macro_rules! h2_limits {
    ($h2:expr, $limits:expr) => {
        $h2.timer(TokioTimer::new())
            .max_concurrent_streams($limits.max_concurrent_streams)
            .max_header_list_size($limits.max_header_list_size)
            .initial_connection_window_size($limits.connection_window)
            .initial_stream_window_size($limits.stream_window)
            .keep_alive_interval($limits.idle_timeout)
            .keep_alive_timeout($limits.idle_timeout)
            .max_pending_accept_reset_streams(Some(50))
            .max_local_error_reset_streams(Some(1024))
            .max_send_buf_size(256 * 1024)
    };
}

/// A bound listener and how to serve it.
pub(crate) struct Listener {
    pub(crate) listener: TcpListener,
    pub(crate) direction: Direction,
    pub(crate) limits: H2Limits,
    pub(crate) acceptor: Acceptor,
    pub(crate) telemetry: Arc<Telemetry>,
    /// How long in-flight streams may take after GOAWAY.
    pub(crate) drain: Duration,
    /// Instruments the listener's connection and stream tasks.
    pub(crate) tasks: tokio_metrics::TaskMonitor,
}

/// Serves `handler` over HTTP/2 until `shutdown` turns true, then drains: between proxies, and
/// from the local app.
pub(crate) async fn serve<H, F, B>(listener: Listener, handler: H, shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>, &Arc<PeerInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let h2 = sidecar_h2(listener.limits, listener.tasks.clone());
    // Each serving function holds one connection type: a sidecar's listeners never compile the
    // HTTP/1.1 path (sharing a task with it cost ~1 000 instructions per call, by callgrind).
    let connect = move |io, handler, peer, watcher: Watcher| {
        let connection = h2.serve_connection(io, stream_service(handler, peer));
        async move { watcher.watch(connection).await.map_err(BoxError::from) }
    };
    accept_loop(listener, handler, shutdown, connect).await;
}

/// Serves `handler` over HTTP/1.1 and HTTP/2, told apart by the first bytes (the gateway's edge),
/// until `shutdown` turns true, then drains. A connection's first bytes, and an HTTP/1.1 request's
/// headers, must arrive within `header_read_timeout`, or the connection is closed (slowloris).
pub(crate) async fn serve_http<H, F, B>(
    listener: Listener,
    header_read_timeout: Duration,
    handler: H,
    shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, &Arc<PeerInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limits = listener.limits;
    let mut builder = auto::Builder::new(MonitoredExecutor(listener.tasks.clone()));
    h2_limits!(builder.http2(), limits);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(100)
        .max_buf_size(limits.max_header_list_size.max(8192) as usize);
    let connect = move |io: TokioIo<BoxIo>, handler, peer, watcher: Watcher| {
        let builder = builder.clone();
        // Nothing is read before the first bytes tell the protocol: they get the same deadline.
        let io = TokioIo::new(FirstByteDeadline::new(io.into_inner(), header_read_timeout));
        async move { watcher.watch(builder.serve_connection(io, stream_service(handler, peer))).await }
    };
    accept_loop(listener, handler, shutdown, connect).await;
}

type Watcher = hyper_util::server::graceful::Watcher;

/// Serves one in-process connection as a sidecar listener serves each of its connections (the
/// same HTTP/2 limits, executor and stream service), without the accept loop: the call-path
/// benchmark's proxies (`callpath.rs`).
#[cfg(test)]
pub(crate) fn serve_one<H, F, B>(
    limits: H2Limits,
    io: BoxIo,
    peer: PeerInfo,
    handler: H,
) -> impl Future<Output = Result<(), hyper::Error>> + Send
where
    H: Fn(Request<Incoming>, &Arc<PeerInfo>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let h2 = sidecar_h2(limits, crate::telemetry::runtime::task_monitor());
    h2.serve_connection(TokioIo::new(io), stream_service(handler, peer))
}

/// The HTTP/2 server of a sidecar's connections: every limit set, stream tasks instrumented.
fn sidecar_h2(limits: H2Limits, tasks: tokio_metrics::TaskMonitor) -> http2::Builder<MonitoredExecutor> {
    let mut h2 = http2::Builder::new(MonitoredExecutor(tasks));
    h2_limits!(h2, limits);
    h2
}

/// The stream service of one connection: each request is answered by the handler's future, given
/// the connection's peer (shared: no copy, and no extension map, per request), mapped (an async
/// block holding the response and awaiting it would be twice the size of the handler's future,
/// and hyper moves it).
fn stream_service<H, F, B>(
    handler: H,
    peer: PeerInfo,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
> + Send
+ 'static
where
    H: Fn(Request<Incoming>, &Arc<PeerInfo>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
{
    let peer = Arc::new(peer);
    service_fn(move |req: Request<Incoming>| handler(req, &peer).map(Ok::<_, Infallible>))
}

/// Accepts connections until `shutdown`, each served by `connect` (given the connection, the
/// handler and the peer) in its own task, then drains.
async fn accept_loop<H, F, B, C, CF>(listener: Listener, handler: H, mut shutdown: watch::Receiver<bool>, connect: C)
where
    H: Fn(Request<Incoming>, &Arc<PeerInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Fn(TokioIo<BoxIo>, H, PeerInfo, Watcher) -> CF + Clone + Send + 'static,
    CF: Future<Output = Result<(), BoxError>> + Send,
{
    let Listener { listener, direction, limits, acceptor, telemetry, drain, tasks } = listener;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    AcceptFailed { direction, error: &error }.emit(&telemetry);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ConnectionRefused { direction, peer: addr, limit: limits.max_connections }.emit(&telemetry);
            drop(tcp);
            continue;
        };
        let open = telemetry.connection_opened(direction);
        let (acceptor, handler, telemetry, connect) =
            (acceptor.clone(), handler.clone(), telemetry.clone(), connect.clone());
        let watcher = graceful.watcher();
        // The handshake runs in the connection's own task, never on the accept loop.
        tokio::spawn(tasks.instrument(async move {
            let (_slot, _open) = (slot, open);
            match acceptor.accept(tcp, addr).await {
                Ok((io, peer)) => {
                    tracing::trace!(%direction, peer = %peer.addr, "accepted");
                    if let Err(error) = connect(TokioIo::new(io), handler, peer, watcher).await {
                        let reason = classify(&*error);
                        ConnectionFailed { direction, peer: addr, reason, error: &*error }.emit(&telemetry);
                    }
                }
                Err(error) => {
                    let reason = ConnectionError::Handshake;
                    ConnectionFailed { direction, peer: addr, reason, error: &error }.emit(&telemetry);
                }
            }
        }));
    }
    drop(listener);
    tracing::info!(%direction, connections = graceful.count(), "draining");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(%direction, "drain deadline reached; closing the remaining streams");
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Why a connection ended in error.
fn classify(error: &(dyn std::error::Error + 'static)) -> ConnectionError {
    let hyper = error.downcast_ref::<hyper::Error>();
    if hyper.is_some_and(hyper::Error::is_timeout) {
        return ConnectionError::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return if h2.is_io() { ConnectionError::Io } else { ConnectionError::Protocol };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // A client that never sent its first bytes (first_byte.rs).
            let timed_out = io.kind() == std::io::ErrorKind::TimedOut;
            return if timed_out { ConnectionError::Timeout } else { ConnectionError::Io };
        }
        source = e.source();
    }
    if hyper.is_some_and(hyper::Error::is_parse) { ConnectionError::Protocol } else { ConnectionError::Other }
}
