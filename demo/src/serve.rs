//! Serving a role: bind, serve h2c with `grpc.health.v1`, register, and shut down in order on
//! SIGTERM or Ctrl-C (deregister first so callers stop picking us, then drain).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::Router;

use crate::registration::RegisterArgs;

/// Binds `listen`, serves `router` on it, registers through `register`, and returns after a
/// clean shutdown.
pub(crate) async fn serve(
    role: &str,
    listen: SocketAddr,
    router: Router,
    register: &RegisterArgs,
    instance_id: mesh_registry::InstanceId,
) -> Result<(), String> {
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(role, %local, instance = %instance_id, "serving");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), async {
        let _ = stop_rx.await;
    }));
    let registration = register.start(role, instance_id, local).await?;
    mesh_common::cli::shutdown_signal().await;
    tracing::info!(role, "shutting down");
    if let Some(registration) = registration {
        registration.deregister().await;
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(register.drain_timeout(), server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("server failed: {e}")),
        Ok(Err(e)) => Err(format!("server task failed: {e}")),
        Err(_) => {
            tracing::warn!(role, "drain deadline reached; closing the remaining connections");
            Ok(())
        }
    }
}

/// A server with its HTTP/2 limits set explicitly (tonic leaves some unbounded).
pub(crate) fn builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(100))
        .http2_max_header_list_size(Some(16 * 1024))
        .initial_connection_window_size(Some(1024 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// Accepted connections with Nagle off: replies written in several pieces (headers, data,
/// trailers) must not wait for the peer's delayed ACK.
pub(crate) fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
