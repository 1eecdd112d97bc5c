//! The proxy's flags: every setting a flag and a `MESH_<NAME>` variable. Ranges are checked by the
//! value parsers (clap's message names the flag and `parse_or_exit` adds its variable); relations
//! between settings, and files to read, by [`Args::into_config`], into the typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_common::cli::{duration, duration_at_least, within};
use mesh_registry::cli::{EtcdArgs, LeaseArgs};
use mesh_registry::{Address, InstanceId, ServiceName};

use super::{
    AdminConfig, Config, ConfigError, GatewayConfig, InboundConfig, LimitMode, OutboundConfig, RegistrationSettings,
    TelemetryConfig,
};
use crate::balance::BalancerSettings;
use crate::endpoint::client::ClientSettings;
use crate::endpoint::listen::H2Limits;
use crate::identity::IdentityConfig;

/// Command-line flags and environment.
#[derive(clap::Parser, Debug)]
#[command(group = clap::ArgGroup::new("identity_token_source").multiple(false))]
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
    #[arg(long, env = "MESH_WEIGHT", default_value_t = mesh_registry::record::DEFAULT_WEIGHT, value_parser = within(0..=mesh_registry::record::MAX_WEIGHT))]
    weight: u32,
    /// Runtime worker threads.
    #[arg(long, env = "MESH_WORKERS", default_value_t = 2, value_parser = within(1usize..=64))]
    workers: usize,
    /// Bound on connecting to a peer or to the app.
    #[arg(long = "connect-timeout", env = "MESH_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration, value_name = "DURATION")]
    connect_timeout: Duration,
    /// How long a call waits for a ready endpoint before failing with UNAVAILABLE.
    #[arg(long = "fail-fast-timeout", env = "MESH_FAIL_FAST_TIMEOUT", default_value = "3s", value_parser = duration, value_name = "DURATION")]
    fail_fast_timeout: Duration,
    /// How often the app of a registered instance is probed; after two failed probes in a row
    /// the instance is deregistered (and registered again once the app answers).
    #[arg(long = "app-probe-interval", env = "MESH_APP_PROBE_INTERVAL", default_value = "500ms", value_parser = duration_at_least(Duration::from_millis(50)), value_name = "DURATION")]
    app_probe_interval: Duration,
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
    /// Calls the local app may have in flight: `adaptive` (learnt from the app's latency; refuses
    /// calls only while the app queues), a fixed number, or `off`.
    #[arg(
        long = "inbound-concurrency-limit",
        env = "MESH_INBOUND_CONCURRENCY_LIMIT",
        default_value = "adaptive",
        value_name = "adaptive|N|off"
    )]
    inbound_concurrency_limit: LimitMode,
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
    #[arg(long = "identity-ca-addr", env = "MESH_IDENTITY_CA_ADDR", value_parser = uri_with_scheme("https"), requires_all = ["identity_trust_bundle", "identity_token_source"])]
    identity_ca_addr: Option<tonic::transport::Uri>,
    /// The name in the CA's TLS certificate.
    #[arg(long = "identity-ca-name", env = "MESH_IDENTITY_CA_NAME", default_value = "mesh-registry")]
    identity_ca_name: String,
    /// PEM file with the mesh's trust bundle (verifies the CA, and peers until the CA sends its own).
    #[arg(long = "identity-trust-bundle", env = "MESH_IDENTITY_TRUST_BUNDLE")]
    identity_trust_bundle: Option<std::path::PathBuf>,
    /// The join token for this service.
    #[arg(
        long = "identity-token",
        env = "MESH_IDENTITY_TOKEN",
        hide_env_values = true,
        group = "identity_token_source"
    )]
    identity_token: Option<String>,
    /// A file holding the join token (instead of --identity-token).
    #[arg(long = "identity-token-file", env = "MESH_IDENTITY_TOKEN_FILE", group = "identity_token_source")]
    identity_token_file: Option<std::path::PathBuf>,
    /// The trust domain.
    #[arg(long = "trust-domain", env = "MESH_TRUST_DOMAIN", default_value = mesh_registry::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: mesh_registry::identity::TrustDomain,
    /// Renew the certificate once this fraction of its remaining lifetime has passed.
    #[arg(long = "identity-renew-fraction", env = "MESH_IDENTITY_RENEW_FRACTION", default_value_t = 0.7, value_parser = within(0.1..=0.95))]
    identity_renew_fraction: f64,
    /// The collector's OTLP/gRPC endpoint (`http://host:4317`). Without it nothing is exported
    /// (`/metrics` still serves the proxy's metrics).
    #[arg(long = "collector-endpoint", env = "MESH_COLLECTOR_ENDPOINT", value_parser = uri_with_scheme("http"))]
    collector_endpoint: Option<tonic::transport::Uri>,
    /// Share of new traces sampled, 0-1 (a caller's `traceparent` decision is always followed;
    /// failed and slow requests are exported regardless).
    #[arg(long = "trace-sampling", env = "MESH_TRACE_SAMPLING", default_value_t = 0.1, value_parser = within(0.0..=1.0))]
    trace_sampling: f64,
    /// Requests at least this slow always export their span.
    #[arg(long = "trace-slow", env = "MESH_TRACE_SLOW", default_value = "500ms", value_parser = duration, value_name = "DURATION")]
    trace_slow: Duration,
    /// Finished spans waiting for export; beyond it spans are dropped and counted.
    #[arg(long = "span-queue", env = "MESH_SPAN_QUEUE", default_value_t = 2048, value_parser = within(1usize..=1_000_000))]
    span_queue: usize,
    /// How often metrics are pushed to the collector.
    #[arg(long = "metrics-export-interval", env = "MESH_METRICS_EXPORT_INTERVAL", default_value = "10s", value_parser = duration_at_least(Duration::from_millis(100)), value_name = "DURATION")]
    metrics_export_interval: Duration,
    /// Log every request (target `access`: services, method, status, duration, bytes, trace id).
    #[arg(long = "access-log", env = "MESH_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    access_log: bool,
    /// Run as the mesh's ingress gateway with this document (routes and certificates, YAML):
    /// edge listeners instead of an app, no inbound listener, never registered.
    #[arg(long, env = "MESH_GATEWAY", value_name = "FILE")]
    gateway: Option<PathBuf>,
    /// The gateway's TLS listener (HTTP/2 and HTTP/1.1 by ALPN), bound when the document names a
    /// certificate.
    #[arg(long = "gateway-tls-addr", env = "MESH_GATEWAY_TLS_ADDR", default_value = "0.0.0.0:8443")]
    gateway_tls_addr: SocketAddr,
    /// The gateway's plaintext listener (h2c and HTTP/1.1), for development; off unless given.
    #[arg(long = "gateway-plain-addr", env = "MESH_GATEWAY_PLAIN_ADDR")]
    gateway_plain_addr: Option<SocketAddr>,
    /// An HTTP/1.1 request's headers, and a new connection's first bytes, must arrive within this, or
    /// the connection is closed.
    #[arg(long = "gateway-header-read-timeout", env = "MESH_GATEWAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration_at_least(Duration::from_millis(100)), value_name = "DURATION")]
    gateway_header_read_timeout: Duration,
    /// How often the gateway's document and certificate files are checked for changes.
    #[arg(long = "gateway-reload-interval", env = "MESH_GATEWAY_RELOAD_INTERVAL", default_value = "2s", value_parser = duration_at_least(Duration::from_millis(50)), value_name = "DURATION")]
    gateway_reload_interval: Duration,
    /// HTTP/2 max concurrent streams per connection from outside (the gateway's listeners).
    #[arg(long = "gateway-max-streams", env = "MESH_GATEWAY_MAX_STREAMS", default_value_t = 100)]
    gateway_max_streams: u32,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    lease: LeaseArgs,
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

/// A URI with the given scheme and an authority (`https://host:port`).
fn uri_with_scheme(scheme: &'static str) -> impl Fn(&str) -> Result<tonic::transport::Uri, String> + Clone {
    move |s: &str| {
        let uri: tonic::transport::Uri = s.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() == Some(scheme) && uri.authority().is_some() {
            Ok(uri)
        } else {
            Err(format!("must be {scheme}://host:port"))
        }
    }
}

impl Args {
    /// Checks the relations between settings, reads the files they name, and builds the typed
    /// config.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let lease = self.lease.config().map_err(ConfigError::Lease)?;
        let identity = self.identity_config()?;
        let limits = |max_concurrent_streams| H2Limits {
            max_concurrent_streams,
            max_header_list_size: self.max_header_list_size,
            connection_window: self.connection_window,
            stream_window: self.stream_window,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
        };
        let client = ClientSettings {
            connection_window: self.connection_window,
            stream_window: self.stream_window,
            max_header_list_size: self.max_header_list_size,
            keepalive: self.idle_timeout,
        };
        let gateway = match &self.gateway {
            None => None,
            Some(path) => {
                let document = crate::gateway::reload::load(path).map_err(ConfigError::Gateway)?.document;
                let tls_addr = (!document.certificates.is_empty()).then_some(self.gateway_tls_addr);
                if tls_addr.is_none() && self.gateway_plain_addr.is_none() {
                    return Err(ConfigError::GatewayListener(path.clone()));
                }
                Some(GatewayConfig {
                    document: path.clone(),
                    tls_addr,
                    plain_addr: self.gateway_plain_addr,
                    limits: limits(self.gateway_max_streams),
                    header_read_timeout: self.gateway_header_read_timeout,
                    reload_interval: self.gateway_reload_interval,
                })
            }
        };
        // Outbound only (no app, or the gateway): no inbound listener and nothing to register or
        // advertise.
        let app = if gateway.is_some() { None } else { self.app_addr.0 };
        let (inbound, registration) = match app {
            None => (None, None),
            Some(app) => {
                let advertise = match self.advertise_addr {
                    Some(a) => a,
                    None if self.inbound_addr.ip().is_unspecified() => {
                        return Err(ConfigError::AdvertiseRequired(self.inbound_addr));
                    }
                    None => self.inbound_addr.to_string().parse().map_err(ConfigError::Address)?,
                };
                let inbound = InboundConfig {
                    addr: self.inbound_addr,
                    app,
                    limits: limits(self.inbound_max_streams),
                    connect_timeout: self.connect_timeout,
                    probe_interval: self.app_probe_interval,
                    limit: self.inbound_concurrency_limit,
                };
                let registration = RegistrationSettings {
                    advertise,
                    labels: self.labels,
                    weight: self.weight,
                    lease,
                    deregister_wait: self.deregister_wait,
                };
                (Some(inbound), Some(registration))
            }
        };
        Ok(Config {
            instance_id: self.instance_id.unwrap_or_else(|| {
                let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
                InstanceId::for_this_process(&host)
            }),
            service: self.service,
            workers: self.workers,
            outbound: OutboundConfig {
                addr: self.outbound_addr,
                limits: limits(self.outbound_max_streams),
                client,
                connect_timeout: self.connect_timeout,
                fail_fast_timeout: self.fail_fast_timeout,
                discovery_idle_timeout: self.discovery_idle_timeout,
                balancer: BalancerSettings { decay: self.ewma_decay, default_rtt: self.ewma_default_rtt },
            },
            inbound,
            registration,
            gateway,
            admin: AdminConfig { addr: self.admin_addr },
            identity,
            telemetry: TelemetryConfig {
                collector: self.collector_endpoint,
                sampling: self.trace_sampling,
                slow: self.trace_slow,
                span_queue: self.span_queue,
                metrics_interval: self.metrics_export_interval,
                access_log: self.access_log,
            },
            drain_timeout: self.drain_timeout,
            etcd: self.etcd.config(),
            layout: self.etcd.prefix,
        })
    }

    fn identity_config(&self) -> Result<Option<IdentityConfig>, ConfigError> {
        let Some(ca_addr) = self.identity_ca_addr.clone() else {
            return Ok(None);
        };
        // Present: clap requires them with --identity-ca-addr.
        let Some(bundle_path) = self.identity_trust_bundle.as_ref() else {
            return Err(ConfigError::Missing("--identity-trust-bundle (MESH_IDENTITY_TRUST_BUNDLE)"));
        };
        let trust_bundle = std::fs::read_to_string(bundle_path).map_err(|source| ConfigError::Unreadable {
            setting: "--identity-trust-bundle (MESH_IDENTITY_TRUST_BUNDLE)",
            path: bundle_path.clone(),
            source,
        })?;
        if !trust_bundle.contains("BEGIN CERTIFICATE") {
            return Err(ConfigError::NoCertificate(bundle_path.clone()));
        }
        let token = match (&self.identity_token, &self.identity_token_file) {
            (Some(token), _) => token.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Unreadable {
                    setting: "--identity-token-file (MESH_IDENTITY_TOKEN_FILE)",
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
            (None, None) => {
                return Err(ConfigError::Missing(
                    "--identity-token or --identity-token-file (MESH_IDENTITY_TOKEN[_FILE])",
                ));
            }
        };
        Ok(Some(IdentityConfig {
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
        let args = Args::try_parse_from(argv).map_err(|e| mesh_common::cli::one_line(&e, &Args::command()))?;
        args.into_config().map_err(|e| e.to_string())
    }

    fn advertised(c: &super::Config) -> Option<String> {
        c.registration.as_ref().map(|r| r.advertise.to_string())
    }

    #[test]
    fn advertise_address_defaults_to_a_specific_inbound_address() {
        let c = parse(&["--inbound-addr", "127.0.0.2:4143"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(advertised(&c).as_deref(), Some("127.0.0.2:4143"));
        let err = parse(&[]).err().unwrap_or_default();
        assert!(err.contains("MESH_ADVERTISE_ADDR"), "a wildcard inbound address is not dialable: {err}");
        let c = parse(&["--advertise-addr", "orders-1:4143"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(advertised(&c).as_deref(), Some("orders-1:4143"));
        assert!(parse(&["--lease-ttl", "2s", "--lease-keepalive-interval", "3s"]).is_err());
    }

    #[test]
    fn bad_values_name_the_flag_and_the_variable() {
        for (flags, names) in [
            (&["--workers", "0"][..], "--workers <WORKERS>' (MESH_WORKERS)"),
            (&["--weight", "10001"], "(MESH_WEIGHT)"),
            (&["--trace-sampling", "2"], "(MESH_TRACE_SAMPLING)"),
            (&["--span-queue", "0"], "(MESH_SPAN_QUEUE)"),
            (&["--metrics-export-interval", "1ms"], "(MESH_METRICS_EXPORT_INTERVAL)"),
            (&["--collector-endpoint", "grpc://c:4317"], "(MESH_COLLECTOR_ENDPOINT)"),
            (&["--identity-renew-fraction", "0.99"], "(MESH_IDENTITY_RENEW_FRACTION)"),
        ] {
            let mut argv = vec!["--advertise-addr", "orders-1:4143"];
            argv.extend_from_slice(flags);
            let err = parse(&argv).err().unwrap_or_default();
            assert!(err.contains(names), "{flags:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let err =
            parse(&["--identity-ca-addr", "https://ca:4150", "--advertise-addr", "o:1"]).err().unwrap_or_default();
        assert!(err.contains("--identity-trust-bundle"), "an identity needs its trust bundle: {err}");
    }

    #[test]
    fn app_address_none_is_outbound_only() {
        // No app: nothing to advertise, so a wildcard inbound address is no error.
        let c = parse(&["--app-addr", "none"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.inbound.is_none() && c.registration.is_none());
        let c = parse(&["--app-addr", "NONE", "--advertise-addr", "orders-1:4143"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.inbound.is_none() && c.registration.is_none());
        let c = parse(&["--app-addr", "127.0.0.1:9000", "--inbound-addr", "127.0.0.1:4143"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.inbound.map(|i| i.app.to_string()).as_deref(), Some("127.0.0.1:9000"));
        let err = parse(&["--app-addr", "nowhere"]).err().unwrap_or_default();
        assert!(err.contains("--app-addr") && err.contains("none"), "{err}");
    }
}
