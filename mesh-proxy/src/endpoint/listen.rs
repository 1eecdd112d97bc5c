//! A listener: accepts connections (up to a cap), hands each to the transport, and serves
//! HTTP/2 on it (or, at the gateway's edge, HTTP/1.1 and HTTP/2, told apart by the first bytes)
//! with every limit set explicitly. On shutdown it stops accepting, sends GOAWAY on every
//! connection, and waits for in-flight streams up to the drain deadline.

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

use super::transport::Acceptor;
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

/// What a listener speaks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Protocols {
    /// HTTP/2 only: between proxies, and from the local app.
    H2,
    /// HTTP/1.1 and HTTP/2 (the gateway's edge): an HTTP/1.1 request's headers must arrive within
    /// `header_read_timeout`, or the connection is closed (slowloris).
    Http1AndH2 { header_read_timeout: Duration },
}

/// The connection builder for [`Protocols`].
#[derive(Clone)]
enum Builder {
    H2(http2::Builder<MonitoredExecutor>),
    Auto(auto::Builder<MonitoredExecutor>),
}

/// A bound listener and how to serve it.
pub(crate) struct Listener {
    pub(crate) listener: TcpListener,
    pub(crate) direction: Direction,
    pub(crate) limits: H2Limits,
    pub(crate) protocols: Protocols,
    pub(crate) acceptor: Acceptor,
    pub(crate) telemetry: Arc<Telemetry>,
    /// How long in-flight streams may take after GOAWAY.
    pub(crate) drain: Duration,
    /// Instruments the listener's connection and stream tasks.
    pub(crate) tasks: tokio_metrics::TaskMonitor,
}

/// Serves `handler` until `shutdown` turns true, then drains.
pub(crate) async fn serve<H, F, B>(listener: Listener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Listener { listener, direction, limits, protocols, acceptor, telemetry, drain, tasks } = listener;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let builder = builder(limits, protocols, MonitoredExecutor(tasks.clone()));
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
        let (acceptor, handler, telemetry, builder) =
            (acceptor.clone(), handler.clone(), telemetry.clone(), builder.clone());
        let watcher = graceful.watcher();
        // The handshake runs in the connection's own task, never on the accept loop.
        tokio::spawn(tasks.instrument(async move {
            let (_slot, _open) = (slot, open);
            match acceptor.accept(tcp, addr).await {
                Ok((io, peer)) => {
                    tracing::trace!(%direction, peer = %peer.addr, "accepted");
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        // `map`, not an async block: a block holding `response` and awaiting it
                        // would be twice the size of the handler's future, and hyper moves it.
                        handler(req).map(Ok::<_, std::convert::Infallible>)
                    });
                    let io = TokioIo::new(io);
                    let result = match &builder {
                        Builder::H2(h2) => watcher.watch(h2.serve_connection(io, service)).await.map_err(Into::into),
                        Builder::Auto(auto) => watcher.watch(auto.serve_connection(io, service)).await,
                    };
                    if let Err(error) = result {
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

/// The connection builder, with every limit set.
fn builder(limits: H2Limits, protocols: Protocols, executor: MonitoredExecutor) -> Builder {
    macro_rules! h2_limits {
        ($h2:expr) => {
            $h2.timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_header_list_size(limits.max_header_list_size)
                .initial_connection_window_size(limits.connection_window)
                .initial_stream_window_size(limits.stream_window)
                .keep_alive_interval(limits.idle_timeout)
                .keep_alive_timeout(limits.idle_timeout)
                .max_pending_accept_reset_streams(Some(50))
                .max_local_error_reset_streams(Some(1024))
                .max_send_buf_size(256 * 1024)
        };
    }
    match protocols {
        Protocols::H2 => {
            let mut h2 = http2::Builder::new(executor);
            h2_limits!(h2);
            Builder::H2(h2)
        }
        Protocols::Http1AndH2 { header_read_timeout } => {
            let mut auto = auto::Builder::new(executor);
            h2_limits!(auto.http2());
            auto.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_headers(100)
                .max_buf_size(limits.max_header_list_size.max(8192) as usize);
            Builder::Auto(auto)
        }
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
        if e.is::<std::io::Error>() {
            return ConnectionError::Io;
        }
        source = e.source();
    }
    if hyper.is_some_and(hyper::Error::is_parse) { ConnectionError::Protocol } else { ConnectionError::Other }
}
