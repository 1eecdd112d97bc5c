//! Optional self-registration in etcd, for running the demo without a proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_registry::cli::{EtcdArgs, LeaseArgs};
use mesh_registry::{Address, InstanceId, InstanceRecord, Metrics, Registration, ServiceName};

/// Registration flags.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RegisterArgs {
    /// Register this instance in etcd (leave off when a mesh-proxy registers it).
    #[arg(long, env = "DEMO_REGISTER")]
    register: bool,
    /// The service name to register under (default: the role).
    #[arg(long, env = "MESH_SERVICE")]
    service: Option<ServiceName>,
    /// This instance's id (default: host name and pid).
    #[arg(long = "instance-id", env = "MESH_INSTANCE_ID")]
    instance_id: Option<InstanceId>,
    /// What peers dial (default: the listen address, unless it is a wildcard).
    #[arg(long = "advertise-addr", env = "MESH_ADVERTISE_ADDR")]
    advertise_addr: Option<Address>,
    /// Labels, `key=value,key=value` (e.g. `version=v1,zone=a`).
    #[arg(long, env = "MESH_LABELS", default_value = "", value_parser = mesh_registry::record::parse_labels)]
    labels: std::collections::BTreeMap<String, String>,
    /// On shutdown, how long to wait for in-flight calls and connections to finish.
    #[arg(long = "drain-timeout", env = "DEMO_DRAIN_TIMEOUT", default_value = "5s", value_parser = mesh_common::cli::duration, value_name = "DURATION")]
    drain_timeout: std::time::Duration,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    lease: LeaseArgs,
}

impl RegisterArgs {
    /// This instance's id, chosen once.
    pub(crate) fn instance_id(&self) -> InstanceId {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
            InstanceId::for_this_process(&host)
        })
    }

    /// The shutdown drain deadline.
    pub(crate) fn drain_timeout(&self) -> std::time::Duration {
        self.drain_timeout
    }

    /// Registers `listen` if `--register` is set; `None` otherwise.
    pub(crate) async fn start(
        &self,
        role: &str,
        instance_id: InstanceId,
        listen: SocketAddr,
    ) -> Result<Option<Registration>, String> {
        if !self.register {
            return Ok(None);
        }
        let service = match &self.service {
            Some(s) => s.clone(),
            None => role.parse().map_err(|e| format!("{e}"))?,
        };
        let address = match &self.advertise_addr {
            Some(a) => a.clone(),
            None => listen.to_string().parse().map_err(|e| {
                format!("--advertise-addr (MESH_ADVERTISE_ADDR) is needed when listening on {listen}: {e}")
            })?,
        };
        let config = self.lease.config().map_err(|e| e.to_string())?;
        let client = self.etcd.config().connect().await.map_err(|e| e.to_string())?;
        let mut record = InstanceRecord::new(service, instance_id, address);
        record.labels = self.labels.clone();
        Ok(Some(Registration::start(client, &self.etcd.prefix, record, config, Arc::new(Metrics::new()))))
    }
}
