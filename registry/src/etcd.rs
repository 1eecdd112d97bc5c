//! Connecting to etcd with the settings that matter in production: several members, connect and
//! request timeouts, HTTP/2 keepalive (so a silent partition is noticed), TLS and user/password.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Member endpoints, `host:port` or a URL (`http://`, `https://`).
    pub endpoints: Vec<String>,
    /// Bound on establishing a connection to a member.
    pub connect_timeout: Duration,
    /// Bound on each unary request (get, put, lease grant ...). Watches are streams and unbounded.
    pub request_timeout: Duration,
    /// HTTP/2 PING interval; a member that does not answer within `keepalive_timeout` is dropped.
    pub keepalive_interval: Duration,
    /// How long to wait for a PING answer.
    pub keepalive_timeout: Duration,
    /// TLS to etcd itself, if its client port is TLS.
    pub tls: Option<EtcdTls>,
    /// User and password, if etcd has auth enabled.
    pub auth: Option<(String, String)>,
}

/// TLS material for the connection to etcd.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA bundle that signed etcd's server certificates.
    pub ca_file: PathBuf,
    /// Client certificate and key, if etcd requires client authentication.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".to_string()],
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            tls: None,
            auth: None,
        }
    }
}

/// Why a connection to etcd could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadTls {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// etcd refused or could not be reached (only when auth forces a first round trip).
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Etcd {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The cause.
        source: etcd_client::Error,
    },
}

impl EtcdConfig {
    /// A config for `endpoints` with every other setting at its default.
    pub fn with_endpoints(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { endpoints: endpoints.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// The endpoints as URLs with the scheme TLS calls for.
    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints.iter().map(|e| if e.contains("://") { e.clone() } else { format!("{scheme}://{e}") }).collect()
    }

    /// Creates a client. Without auth this does not wait for etcd: the channel connects lazily
    /// and reconnects by itself, so a process can start while etcd is still down.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.keepalive_interval, self.keepalive_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| ConnectError::ReadTls { path: path.clone(), source })
            };
            let mut opts = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file)?));
            if let Some((cert, key)) = &tls.client {
                opts = opts.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(opts);
        }
        if let Some((user, password)) = &self.auth {
            options = options.with_user(user, password);
        }
        Client::connect(self.urls(), Some(options))
            .await
            .map_err(|source| ConnectError::Etcd { endpoints: self.endpoints.join(","), source })
    }

    /// The endpoints, for messages.
    pub fn endpoints_display(&self) -> String {
        self.endpoints.join(",")
    }
}
