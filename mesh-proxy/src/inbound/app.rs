//! Is the local app there? Asked before the proxy registers its instance: `grpc.health.v1`
//! `Check("")` if the app serves it (SERVING means ready), otherwise a TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppState {
    Ready,
    NotReady(String),
}

/// Probes the app once, within `timeout`.
pub(crate) async fn probe(app: SocketAddr, timeout: Duration) -> AppState {
    match tokio::time::timeout(timeout, probe_inner(app)).await {
        Ok(state) => state,
        Err(_) => AppState::NotReady(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(app: SocketAddr) -> AppState {
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{app}")) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return AppState::NotReady(format!("cannot connect: {e}")),
        },
        Err(e) => return AppState::NotReady(e.to_string()),
    };
    match HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await {
        Ok(reply) if reply.get_ref().status == ServingStatus::Serving as i32 => AppState::Ready,
        Ok(reply) => AppState::NotReady(format!("health status {}", reply.get_ref().status)),
        // The app does not serve grpc.health.v1: it accepted a connection, which is what we can know.
        Err(status) if status.code() == tonic::Code::Unimplemented => AppState::Ready,
        Err(status) => AppState::NotReady(format!("health check failed: {status}")),
    }
}
