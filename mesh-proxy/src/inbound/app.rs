//! Is the local app there? Asked before the proxy registers its instance and every probe interval
//! while it is registered: `grpc.health.v1`
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

/// Asks one app, over one lazily connected channel that is kept between probes (a probe is one
/// small RPC, not a new connection) and reconnects by itself once the app is back.
#[derive(Debug, Clone)]
pub(crate) struct AppProbe {
    app: SocketAddr,
    client: Option<HealthClient<tonic::transport::Channel>>,
}

impl AppProbe {
    pub(crate) fn new(app: SocketAddr) -> Self {
        let client = tonic::transport::Endpoint::from_shared(format!("http://{app}"))
            .ok()
            .map(|e| HealthClient::new(e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true).connect_lazy()));
        Self { app, client }
    }

    /// Probes the app once, within `timeout`.
    pub(crate) async fn probe(&mut self, timeout: Duration) -> AppState {
        let Some(client) = self.client.as_mut() else {
            return AppState::NotReady(format!("{} is not a usable address", self.app));
        };
        let check = client.check(HealthCheckRequest { service: String::new() });
        match tokio::time::timeout(timeout, check).await {
            Err(_) => AppState::NotReady(format!("no answer within {timeout:?}")),
            Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32 => AppState::Ready,
            Ok(Ok(reply)) => AppState::NotReady(format!("health status {}", reply.get_ref().status)),
            // The app does not serve grpc.health.v1: it accepted a connection, which is what we can know.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => AppState::Ready,
            Ok(Err(status)) => AppState::NotReady(format!("health check failed: {}", status.message())),
        }
    }
}
