//! The registry's command-line flags: how to reach etcd (`--etcd-*`) and lease timing
//! (`--lease-*`), each also a `MESH_<NAME>` environment variable. The conventions every binary
//! shares (parsing, logging, runtime, shutdown) are in [`mesh_common::cli`].

use std::path::PathBuf;
use std::time::Duration;

use mesh_common::cli::duration;

use crate::etcd::{EtcdConfig, EtcdTls};
use crate::layout::Layout;
use crate::register::RegistrationConfig;

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
