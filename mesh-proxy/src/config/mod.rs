//! The proxy's configuration, typed and nested by concern: what the outbound side, the inbound
//! side, registration, the admin server, identity and telemetry each need. Built from flags and
//! `MESH_<NAME>` variables by [`Args::into_config`]; anything that does not parse or does not fit
//! stops the proxy with one line naming the setting.

mod args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_registry::{Address, EtcdConfig, InstanceId, Layout, RegistrationConfig, ServiceName};

pub use self::args::Args;
pub use crate::balance::BalancerSettings;
pub use crate::endpoint::client::ClientSettings;
pub use crate::endpoint::listen::H2Limits;
pub use crate::identity::IdentityConfig;
pub use crate::inbound::limit::LimitMode;

/// The proxy's typed configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This instance's service.
    pub service: ServiceName,
    /// This instance's id.
    pub instance_id: InstanceId,
    /// Runtime worker threads.
    pub workers: usize,
    /// Calls from the local app to other services.
    pub outbound: OutboundConfig,
    /// Calls from peers to the local app; `None` in outbound-only mode.
    pub inbound: Option<InboundConfig>,
    /// This instance's record in the registry; `None` in outbound-only mode.
    pub registration: Option<RegistrationSettings>,
    /// The ingress gateway's listeners and document, when this proxy is the gateway.
    pub gateway: Option<GatewayConfig>,
    /// The admin server.
    pub admin: AdminConfig,
    /// Identity and mutual TLS, if on.
    pub identity: Option<IdentityConfig>,
    /// What is reported, and where.
    pub telemetry: TelemetryConfig,
    /// On shutdown, how long in-flight streams may take to finish after GOAWAY.
    pub drain_timeout: Duration,
    /// etcd connection.
    pub etcd: EtcdConfig,
    /// Key layout.
    pub layout: Layout,
}

/// The outbound side.
#[derive(Clone, Copy, Debug)]
pub struct OutboundConfig {
    /// Where the local app sends its calls.
    pub addr: SocketAddr,
    /// HTTP/2 limits of the outbound listener.
    pub limits: H2Limits,
    /// HTTP/2 settings of connections to peers (and to the app).
    pub client: ClientSettings,
    /// Bound on connecting to a peer.
    pub connect_timeout: Duration,
    /// How long a call waits for a ready endpoint.
    pub fail_fast_timeout: Duration,
    /// A service's discovery watch is dropped after this long unused.
    pub discovery_idle_timeout: Duration,
    /// Load balancing.
    pub balancer: BalancerSettings,
}

/// The inbound side.
#[derive(Clone, Copy, Debug)]
pub struct InboundConfig {
    /// Where peers connect.
    pub addr: SocketAddr,
    /// The local application (h2c).
    pub app: SocketAddr,
    /// HTTP/2 limits of the inbound listener.
    pub limits: H2Limits,
    /// Bound on connecting to the app.
    pub connect_timeout: Duration,
    /// How often a registered instance's app is probed (two failures in a row deregister it).
    pub probe_interval: Duration,
    /// How many calls the app may have in flight.
    pub limit: LimitMode,
}

/// The ingress gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Its document: routes and certificates (checked when the config is built, followed after).
    pub document: PathBuf,
    /// The TLS listener, when the document names a certificate.
    pub tls_addr: Option<SocketAddr>,
    /// The plaintext listener (development).
    pub plain_addr: Option<SocketAddr>,
    /// HTTP/2 limits and the connection cap of each listener.
    pub limits: H2Limits,
    /// Bound on an HTTP/1.1 request's headers.
    pub header_read_timeout: Duration,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// This instance's registration.
#[derive(Clone, Debug)]
pub struct RegistrationSettings {
    /// What peers dial.
    pub advertise: Address,
    /// Labels (`version=v2` ...).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Lease timing.
    pub lease: RegistrationConfig,
    /// On shutdown, how long to wait after deregistering for peers to notice.
    pub deregister_wait: Duration,
}

/// The admin server.
#[derive(Clone, Copy, Debug)]
pub struct AdminConfig {
    /// `/live`, `/ready`, `/metrics` ...
    pub addr: SocketAddr,
}

/// What the proxy reports, and where.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// The collector's OTLP/gRPC endpoint, if exporting.
    pub collector: Option<tonic::transport::Uri>,
    /// Share of new traces sampled.
    pub sampling: f64,
    /// Slow-request threshold (always exported).
    pub slow: Duration,
    /// Span queue bound.
    pub span_queue: usize,
    /// Metrics push interval.
    pub metrics_interval: Duration,
    /// Per-request access log.
    pub access_log: bool,
}

/// A configuration that cannot be used. Each message names the setting (flag and variable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The inbound address is a wildcard and nothing says what peers should dial.
    #[error(
        "--advertise-addr (MESH_ADVERTISE_ADDR) is required: the inbound address {0} is a wildcard peers cannot dial"
    )]
    AdvertiseRequired(SocketAddr),
    /// The inbound address does not make an address to advertise.
    #[error("--inbound-addr (MESH_INBOUND_ADDR): {0}")]
    Address(mesh_registry::name::NameError),
    /// Lease timing that cannot work.
    #[error("--lease-ttl/--lease-keepalive-interval (MESH_LEASE_TTL/MESH_LEASE_KEEPALIVE_INTERVAL): {0}")]
    Lease(mesh_registry::register::ConfigError),
    /// A required setting is missing.
    #[error("{0} is required with --identity-ca-addr")]
    Missing(&'static str),
    /// A file a setting names cannot be read.
    #[error("{setting} {}: {source}", path.display())]
    Unreadable {
        /// The setting.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway's document cannot be used (the message names the file and the line or entry).
    #[error("--gateway (MESH_GATEWAY): {0}")]
    Gateway(String),
    /// The gateway would have no listener.
    #[error(
        "--gateway (MESH_GATEWAY) {}: no listener: name a certificate in it (TLS) or give --gateway-plain-addr",
        .0.display()
    )]
    GatewayListener(PathBuf),
    /// The trust bundle holds no certificate.
    #[error("--identity-trust-bundle (MESH_IDENTITY_TRUST_BUNDLE) {}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
}
