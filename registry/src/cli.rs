//! Command-line conventions shared by every mesh binary: the `--etcd-*` and registration flags
//! (each also a `MESH_<NAME>` environment variable), the rule that a bad setting fails at start
//! with one line naming it and exit code 64, logging, the runtime, listeners and shutdown.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::etcd::{EtcdConfig, EtcdTls};
use crate::layout::Layout;
use crate::register::RegistrationConfig;

/// Exit code for a bad setting (`EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Parses the command line; on a bad setting prints one line naming it and exits 64.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("error: bad command line");
            eprintln!("{line}");
            std::process::exit(EXIT_USAGE)
        }
    }
}

/// Starts logging to stderr: `MESH_LOG` is the filter (default `default_filter`),
/// `MESH_LOG_FORMAT` is `text` (default) or `json`. Colours only on a terminal.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("MESH_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            eprintln!("error: invalid value {other:?} for MESH_LOG_FORMAT: use text or json");
            std::process::exit(EXIT_USAGE)
        }
    }
}

/// A multi-threaded tokio runtime with `workers` threads named `name`; if it cannot start, says so
/// and exits 1.
pub fn runtime_or_exit(workers: usize, name: &str) -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).thread_name(name).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Which listener.
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Binds the `what` listener on `addr`, naming both if it cannot.
pub async fn bind(addr: std::net::SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| BindError { addr, what, source })
}

/// Resolves on SIGTERM or Ctrl-C: when a mesh binary should begin its orderly shutdown.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Parses a duration such as `500ms`, `3s` or `5m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 3s, 5m)"))
}

/// How to reach etcd.
#[derive(clap::Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd members, comma-separated (`host:port` or URLs).
    #[arg(
        long = "etcd-endpoints",
        env = "MESH_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix under which the mesh keeps everything.
    #[arg(id = "etcd_prefix", long = "etcd-prefix", env = "MESH_ETCD_PREFIX", default_value = crate::layout::DEFAULT_PREFIX)]
    pub prefix: Layout,
    /// Bound on connecting to an etcd member.
    #[arg(id = "etcd_connect_timeout", long = "etcd-connect-timeout", env = "MESH_ETCD_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Bound on each etcd request.
    #[arg(id = "etcd_request_timeout", long = "etcd-request-timeout", env = "MESH_ETCD_REQUEST_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION")]
    pub request_timeout: Duration,
    /// HTTP/2 keepalive interval to etcd.
    #[arg(id = "etcd_keepalive_interval", long = "etcd-keepalive-interval", env = "MESH_ETCD_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive timeout to etcd.
    #[arg(id = "etcd_keepalive_timeout", long = "etcd-keepalive-timeout", env = "MESH_ETCD_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION")]
    pub keepalive_timeout: Duration,
    /// CA bundle for etcd's TLS client port (turns TLS on).
    #[arg(id = "etcd_ca_file", long = "etcd-ca-file", env = "MESH_ETCD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key-file).
    #[arg(id = "etcd_cert_file", long = "etcd-cert-file", env = "MESH_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub cert_file: Option<PathBuf>,
    /// Client key for etcd (with --etcd-cert-file).
    #[arg(id = "etcd_key_file", long = "etcd-key-file", env = "MESH_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub key_file: Option<PathBuf>,
    /// etcd user, if etcd has auth enabled (with MESH_ETCD_PASSWORD).
    #[arg(id = "etcd_username", long = "etcd-username", env = "MESH_ETCD_USERNAME", requires = "etcd_password")]
    pub username: Option<String>,
    /// etcd password.
    #[arg(
        id = "etcd_password",
        long = "etcd-password",
        env = "MESH_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_username"
    )]
    pub password: Option<String>,
}

impl EtcdArgs {
    /// The connection settings these flags describe.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints.clone(),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            tls: self
                .ca_file
                .clone()
                .map(|ca_file| EtcdTls { ca_file, client: self.cert_file.clone().zip(self.key_file.clone()) }),
            auth: self.username.clone().zip(self.password.clone()),
        }
    }
}

/// Lease settings for a registering process.
#[derive(clap::Args, Clone, Debug)]
pub struct LeaseArgs {
    /// Lease TTL: how long a dead instance stays registered.
    #[arg(id = "lease_ttl", long = "lease-ttl", env = "MESH_LEASE_TTL", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub ttl: Duration,
    /// How often the lease is kept alive.
    #[arg(id = "lease_keepalive_interval", long = "lease-keepalive-interval", env = "MESH_LEASE_KEEPALIVE_INTERVAL", default_value = "3s", value_parser = duration, value_name = "DURATION")]
    pub keepalive_interval: Duration,
}

impl LeaseArgs {
    /// The registration timing, checked.
    pub fn config(&self) -> Result<RegistrationConfig, crate::register::ConfigError> {
        let config = RegistrationConfig { ttl: self.ttl, keepalive_interval: self.keepalive_interval };
        config.validate()?;
        Ok(config)
    }
}
