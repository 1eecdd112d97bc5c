//! The proxy's configuration: every setting a flag and a `MESH_<NAME>` variable, parsed once into
//! typed values. Anything that does not parse stops the proxy with one line naming the setting.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_registry::cli::{EtcdArgs, LeaseArgs, duration};
use mesh_registry::{Address, EtcdConfig, InstanceId, Layout, RegistrationConfig, ServiceName};

/// Command-line flags and environment.
#[derive(clap::Parser, Debug)]
#[command(name = "mesh-proxy", version, about = "The mesh's sidecar proxy.")]
pub struct Args {
    /// This instance's service name.
    #[arg(long, env = "MESH_SERVICE")]
    service: ServiceName,
    /// This instance's id (default: host name and pid).
    #[arg(long = "instance-id", env = "MESH_INSTANCE_ID")]
    instance_id: Option<InstanceId>,
    /// The local application, serving h2c; `none` for a workload that serves nothing (a batch
    /// job, a CLI, a traffic generator): outbound only, no inbound listener, never registered.
    #[arg(long = "app-addr", env = "MESH_APP_ADDR", default_value = "127.0.0.1:8080", value_parser = app_addr, value_name = "ADDR|none")]
    app_addr: AppAddr,
    /// Where peers' proxies connect.
    #[arg(long = "inbound-addr", env = "MESH_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    inbound_addr: SocketAddr,
    /// Where the local application sends its outgoing calls (h2c).
    #[arg(long = "outbound-addr", env = "MESH_OUTBOUND_ADDR", default_value = "127.0.0.1:4140")]
    outbound_addr: SocketAddr,
    /// `/live`, `/ready` and `/metrics`.
    #[arg(long = "admin-addr", env = "MESH_ADMIN_ADDR", default_value = "127.0.0.1:4191")]
    admin_addr: SocketAddr,
    /// What peers dial to reach this instance (default: the inbound address, if not a wildcard).
    #[arg(long = "advertise-addr", env = "MESH_ADVERTISE_ADDR")]
    advertise_addr: Option<Address>,
    /// Labels to register with, `key=value,...` (e.g. `version=v1,zone=a`).
    #[arg(long, env = "MESH_LABELS", default_value = "", value_parser = mesh_registry::record::parse_labels)]
    labels: std::collections::BTreeMap<String, String>,
    /// Relative share of traffic this instance should get (0-10000).
    #[arg(long, env = "MESH_WEIGHT", default_value_t = mesh_registry::record::DEFAULT_WEIGHT)]
    weight: u32,
    /// Runtime worker threads.
    #[arg(long, env = "MESH_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Bound on connecting to a peer or to the app.
    #[arg(long = "connect-timeout", env = "MESH_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration, value_name = "DURATION")]
    connect_timeout: Duration,
    /// How long a call waits for a ready endpoint before failing with UNAVAILABLE.
    #[arg(long = "fail-fast-timeout", env = "MESH_FAIL_FAST_TIMEOUT", default_value = "3s", value_parser = duration, value_name = "DURATION")]
    fail_fast_timeout: Duration,
    /// On shutdown, how long to wait after deregistering for peers to notice.
    #[arg(long = "deregister-wait", env = "MESH_DEREGISTER_WAIT", default_value = "2s", value_parser = duration, value_name = "DURATION")]
    deregister_wait: Duration,
    /// On shutdown, how long in-flight streams may take to finish after GOAWAY.
    #[arg(long = "drain-timeout", env = "MESH_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    drain_timeout: Duration,
    /// A service's discovery watch is dropped after this long unused.
    #[arg(long = "discovery-idle-timeout", env = "MESH_DISCOVERY_IDLE_TIMEOUT", default_value = "5m", value_parser = duration, value_name = "DURATION")]
    discovery_idle_timeout: Duration,
    /// Peak-EWMA decay time: how long a latency spike is remembered. (linkerd uses 10 s; measured
    /// here, 10 s let sub-millisecond scheduling spikes skew traffic for seconds, 1 s did not.)
    #[arg(long = "ewma-decay", env = "MESH_EWMA_DECAY", default_value = "1s", value_parser = duration, value_name = "DURATION")]
    ewma_decay: Duration,
    /// Peak-EWMA starting latency for a new endpoint.
    #[arg(long = "ewma-default-rtt", env = "MESH_EWMA_DEFAULT_RTT", default_value = "30ms", value_parser = duration, value_name = "DURATION")]
    ewma_default_rtt: Duration,
    /// Most connections each listener holds open at once.
    #[arg(long = "max-connections", env = "MESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// HTTP/2 max concurrent streams per connection from the local app (outbound listener).
    #[arg(long = "outbound-max-streams", env = "MESH_OUTBOUND_MAX_STREAMS", default_value_t = 100)]
    outbound_max_streams: u32,
    /// HTTP/2 max concurrent streams per connection from peers (inbound listener).
    #[arg(long = "inbound-max-streams", env = "MESH_INBOUND_MAX_STREAMS", default_value_t = 1000)]
    inbound_max_streams: u32,
    /// HTTP/2 max header list size, bytes.
    #[arg(long = "max-header-list-size", env = "MESH_MAX_HEADER_LIST_SIZE", default_value_t = 16 * 1024)]
    max_header_list_size: u32,
    /// HTTP/2 connection flow-control window, bytes.
    #[arg(long = "connection-window", env = "MESH_CONNECTION_WINDOW", default_value_t = 1024 * 1024)]
    connection_window: u32,
    /// HTTP/2 stream flow-control window, bytes.
    #[arg(long = "stream-window", env = "MESH_STREAM_WINDOW", default_value_t = 256 * 1024)]
    stream_window: u32,
    /// Connections that send nothing (no frames, no PING answers) for this long are closed.
    #[arg(long = "idle-timeout", env = "MESH_IDLE_TIMEOUT", default_value = "60s", value_parser = duration, value_name = "DURATION")]
    idle_timeout: Duration,
    /// Bound on a new connection's HTTP/2 preface and SETTINGS exchange.
    #[arg(long = "handshake-timeout", env = "MESH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    handshake_timeout: Duration,
    /// The control plane's Certify API (`https://host:4150`). Setting it turns on mutual TLS
    /// between proxies; without it proxies talk plaintext (development only).
    #[arg(long = "identity-ca-addr", env = "MESH_IDENTITY_CA_ADDR")]
    identity_ca_addr: Option<tonic::transport::Uri>,
    /// The name in the CA's TLS certificate.
    #[arg(long = "identity-ca-name", env = "MESH_IDENTITY_CA_NAME", default_value = "mesh-registry")]
    identity_ca_name: String,
    /// PEM file with the mesh's trust bundle (verifies the CA, and peers until the CA sends its own).
    #[arg(long = "identity-trust-bundle", env = "MESH_IDENTITY_TRUST_BUNDLE")]
    identity_trust_bundle: Option<std::path::PathBuf>,
    /// The join token for this service.
    #[arg(long = "identity-token", env = "MESH_IDENTITY_TOKEN", hide_env_values = true)]
    identity_token: Option<String>,
    /// A file holding the join token (instead of --identity-token).
    #[arg(long = "identity-token-file", env = "MESH_IDENTITY_TOKEN_FILE", conflicts_with = "identity_token")]
    identity_token_file: Option<std::path::PathBuf>,
    /// The trust domain.
    #[arg(long = "trust-domain", env = "MESH_TRUST_DOMAIN", default_value = mesh_registry::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: mesh_registry::identity::TrustDomain,
    /// Renew the certificate once this fraction of its remaining lifetime has passed.
    #[arg(long = "identity-renew-fraction", env = "MESH_IDENTITY_RENEW_FRACTION", default_value_t = 0.7)]
    identity_renew_fraction: f64,
    /// The collector's OTLP/gRPC endpoint (`http://host:4317`). Without it nothing is exported
    /// (`/metrics` still serves the proxy's metrics).
    #[arg(long = "collector-endpoint", env = "MESH_COLLECTOR_ENDPOINT")]
    collector_endpoint: Option<tonic::transport::Uri>,
    /// Share of new traces sampled, 0-1 (a caller's `traceparent` decision is always followed;
    /// failed and slow requests are exported regardless).
    #[arg(long = "trace-sampling", env = "MESH_TRACE_SAMPLING", default_value_t = 0.1)]
    trace_sampling: f64,
    /// Requests at least this slow always export their span.
    #[arg(long = "trace-slow", env = "MESH_TRACE_SLOW", default_value = "500ms", value_parser = duration, value_name = "DURATION")]
    trace_slow: Duration,
    /// Finished spans waiting for export; beyond it spans are dropped and counted.
    #[arg(long = "span-queue", env = "MESH_SPAN_QUEUE", default_value_t = 2048)]
    span_queue: usize,
    /// How often metrics are pushed to the collector.
    #[arg(long = "metrics-export-interval", env = "MESH_METRICS_EXPORT_INTERVAL", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    metrics_export_interval: Duration,
    /// Log every request (target `access`: services, method, status, duration, bytes, trace id).
    #[arg(long = "access-log", env = "MESH_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    access_log: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    lease: LeaseArgs,
}

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

/// The proxy's typed configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This instance's service.
    pub service: ServiceName,
    /// This instance's id.
    pub instance_id: InstanceId,
    /// The local app; `None` in outbound-only mode (no inbound listener, no registration).
    pub app_addr: Option<SocketAddr>,
    /// Inbound listener.
    pub inbound_addr: SocketAddr,
    /// Outbound listener.
    pub outbound_addr: SocketAddr,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// What peers dial (`None` in outbound-only mode: nothing is registered).
    pub advertise_addr: Option<Address>,
    /// Registration labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Registration weight.
    pub weight: u32,
    /// Runtime worker threads.
    pub workers: usize,
    /// Connect bound.
    pub connect_timeout: Duration,
    /// Wait bound for a ready endpoint.
    pub fail_fast_timeout: Duration,
    /// Wait after deregistering.
    pub deregister_wait: Duration,
    /// Drain bound after GOAWAY.
    pub drain_timeout: Duration,
    /// Idle discovery eviction.
    pub discovery_idle_timeout: Duration,
    /// Peak-EWMA decay.
    pub ewma_decay: Duration,
    /// Peak-EWMA initial RTT.
    pub ewma_default_rtt: Duration,
    /// Outbound listener limits.
    pub outbound_limits: H2Limits,
    /// Inbound listener limits.
    pub inbound_limits: H2Limits,
    /// etcd connection.
    pub etcd: EtcdConfig,
    /// Key layout.
    pub layout: Layout,
    /// Lease timing.
    pub lease: RegistrationConfig,
    /// Identity and mutual TLS, if on.
    pub identity: Option<crate::identity::IdentityConfig>,
    /// Telemetry export.
    pub telemetry: TelemetryConfig,
}

/// `--app-addr`: the local app's address, or `none` for outbound-only mode.
#[derive(Clone, Copy, Debug)]
struct AppAddr(Option<SocketAddr>);

fn app_addr(value: &str) -> Result<AppAddr, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(AppAddr(None));
    }
    value.parse().map(|a| AppAddr(Some(a))).map_err(|e| format!("{e}: expected ip:port or `none`"))
}

impl Args {
    /// Checks relations between settings and builds the typed config.
    pub fn into_config(self) -> Result<Config, String> {
        if self.workers == 0 || self.workers > 64 {
            return Err(format!("--workers (MESH_WORKERS) must be 1-64, got {}", self.workers));
        }
        if self.weight > mesh_registry::record::MAX_WEIGHT {
            return Err(format!("--weight (MESH_WEIGHT) must be 0-{}", mesh_registry::record::MAX_WEIGHT));
        }
        let lease = self.lease.config().map_err(|e| format!("--lease-ttl/--lease-keepalive-interval: {e}"))?;
        let identity = self.identity_config()?;
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            return Err(format!("--trace-sampling (MESH_TRACE_SAMPLING) must be 0-1, got {}", self.trace_sampling));
        }
        if self.span_queue == 0 || self.span_queue > 1_000_000 {
            return Err("--span-queue (MESH_SPAN_QUEUE) must be 1-1000000".into());
        }
        if self.metrics_export_interval < Duration::from_millis(100) {
            return Err("--metrics-export-interval (MESH_METRICS_EXPORT_INTERVAL) must be at least 100ms".into());
        }
        if let Some(uri) = &self.collector_endpoint
            && (!matches!(uri.scheme_str(), Some("http")) || uri.authority().is_none())
        {
            return Err(format!("--collector-endpoint (MESH_COLLECTOR_ENDPOINT) must be http://host:port, got {uri}"));
        }
        let telemetry = TelemetryConfig {
            collector: self.collector_endpoint.clone(),
            sampling: self.trace_sampling,
            slow: self.trace_slow,
            span_queue: self.span_queue,
            metrics_interval: self.metrics_export_interval,
            access_log: self.access_log,
        };
        let advertise_addr = match self.advertise_addr {
            _ if self.app_addr.0.is_none() => None,
            Some(a) => Some(a),
            None if self.inbound_addr.ip().is_unspecified() => {
                return Err(format!(
                    "--advertise-addr (MESH_ADVERTISE_ADDR) is required: the inbound address {} is a wildcard peers cannot dial",
                    self.inbound_addr
                ));
            }
            None => Some(self.inbound_addr.to_string().parse().map_err(|e| format!("--inbound-addr: {e}"))?),
        };
        let limits = |max_concurrent_streams| H2Limits {
            max_concurrent_streams,
            max_header_list_size: self.max_header_list_size,
            connection_window: self.connection_window,
            stream_window: self.stream_window,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
        };
        Ok(Config {
            instance_id: self.instance_id.unwrap_or_else(|| {
                let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
                InstanceId::for_this_process(&host)
            }),
            service: self.service,
            app_addr: self.app_addr.0,
            inbound_addr: self.inbound_addr,
            outbound_addr: self.outbound_addr,
            admin_addr: self.admin_addr,
            advertise_addr,
            labels: self.labels,
            weight: self.weight,
            workers: self.workers,
            connect_timeout: self.connect_timeout,
            fail_fast_timeout: self.fail_fast_timeout,
            deregister_wait: self.deregister_wait,
            drain_timeout: self.drain_timeout,
            discovery_idle_timeout: self.discovery_idle_timeout,
            ewma_decay: self.ewma_decay,
            ewma_default_rtt: self.ewma_default_rtt,
            outbound_limits: limits(self.outbound_max_streams),
            inbound_limits: limits(self.inbound_max_streams),
            etcd: self.etcd.config(),
            layout: self.etcd.prefix,
            lease,
            identity,
            telemetry,
        })
    }

    fn identity_config(&self) -> Result<Option<crate::identity::IdentityConfig>, String> {
        let Some(ca_addr) = self.identity_ca_addr.clone() else {
            return Ok(None);
        };
        if ca_addr.scheme_str() != Some("https") || ca_addr.authority().is_none() {
            return Err(format!("--identity-ca-addr (MESH_IDENTITY_CA_ADDR) must be https://host:port, got {ca_addr}"));
        }
        let bundle_path = self
            .identity_trust_bundle
            .as_ref()
            .ok_or("--identity-trust-bundle (MESH_IDENTITY_TRUST_BUNDLE) is required with --identity-ca-addr")?;
        let trust_bundle = std::fs::read_to_string(bundle_path).map_err(|e| {
            format!("--identity-trust-bundle (MESH_IDENTITY_TRUST_BUNDLE) {}: {e}", bundle_path.display())
        })?;
        if !trust_bundle.contains("BEGIN CERTIFICATE") {
            return Err(format!(
                "--identity-trust-bundle (MESH_IDENTITY_TRUST_BUNDLE) {}: no PEM certificate in it",
                bundle_path.display()
            ));
        }
        let token = match (&self.identity_token, &self.identity_token_file) {
            (Some(token), _) => token.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("--identity-token-file (MESH_IDENTITY_TOKEN_FILE) {}: {e}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => {
                return Err("--identity-token or --identity-token-file (MESH_IDENTITY_TOKEN[_FILE]) is required with --identity-ca-addr".into());
            }
        };
        if !(0.1..=0.95).contains(&self.identity_renew_fraction) {
            return Err("--identity-renew-fraction (MESH_IDENTITY_RENEW_FRACTION) must be between 0.1 and 0.95".into());
        }
        Ok(Some(crate::identity::IdentityConfig {
            ca_addr,
            ca_name: self.identity_ca_name.clone(),
            trust_bundle,
            token,
            trust_domain: self.trust_domain.clone(),
            renew_fraction: self.identity_renew_fraction,
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Args;

    #[test]
    fn command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    /// The config from `--service orders` and `extra` flags, or the error a user would see.
    fn parse(extra: &[&str]) -> Result<super::Config, String> {
        let mut argv = vec!["mesh-proxy", "--service", "orders"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map_err(|e| e.to_string())?.into_config()
    }

    #[test]
    fn advertise_address_defaults_to_a_specific_inbound_address() {
        let c = parse(&["--inbound-addr", "127.0.0.2:4143"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.advertise_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.2:4143"));
        let err = parse(&[]).err().unwrap_or_default();
        assert!(err.contains("MESH_ADVERTISE_ADDR"), "a wildcard inbound address is not dialable: {err}");
        let c = parse(&["--advertise-addr", "orders-1:4143"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.advertise_addr.map(|a| a.to_string()).as_deref(), Some("orders-1:4143"));
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--lease-ttl", "2s", "--lease-keepalive-interval", "3s"]).is_err());
    }

    #[test]
    fn app_address_none_is_outbound_only() {
        // No app: nothing to advertise, so a wildcard inbound address is no error.
        let c = parse(&["--app-addr", "none"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.app_addr, c.advertise_addr), (None, None));
        let c = parse(&["--app-addr", "NONE", "--advertise-addr", "orders-1:4143"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.app_addr, c.advertise_addr), (None, None));
        let c = parse(&["--app-addr", "127.0.0.1:9000", "--inbound-addr", "127.0.0.1:4143"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.app_addr, Some("127.0.0.1:9000".parse().unwrap_or_else(|e| panic!("{e}"))));
        let err = parse(&["--app-addr", "nowhere"]).err().unwrap_or_default();
        assert!(err.contains("--app-addr") && err.contains("none"), "{err}");
    }
}
