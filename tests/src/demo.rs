//! Starting the demo application's roles as registered processes.

use std::time::Duration;

use crate::process::Proc;

/// Lease TTL the tests register with, short so expiry can be observed.
pub const TEST_TTL: Duration = Duration::from_secs(3);

/// A registered demo backend.
#[derive(Debug)]
pub struct Backend {
    /// The process.
    pub proc: Proc,
    /// Where it serves h2c.
    pub listen: String,
    /// Its instance id.
    pub id: String,
}

impl Backend {
    /// Starts `mesh-demo backend` registered as instance `id` in the etcd at `etcd_endpoint`,
    /// with a 3 s lease kept alive every second.
    pub fn start(etcd_endpoint: &str, id: &str) -> Self {
        let listen = format!("127.0.0.1:{}", crate::free_port());
        let proc = Proc::start(
            "mesh-demo",
            &["backend", "--listen", &listen, "--register", "--instance-id", id, "--labels", "version=v1,zone=a"],
            &[
                ("MESH_ETCD_ENDPOINTS", etcd_endpoint),
                ("MESH_LEASE_TTL", "3s"),
                ("MESH_LEASE_KEEPALIVE_INTERVAL", "1s"),
                ("MESH_ETCD_REQUEST_TIMEOUT", "1s"),
                ("MESH_ETCD_CONNECT_TIMEOUT", "500ms"),
            ],
        );
        Self { proc, listen, id: id.to_string() }
    }

    /// The etcd key of its record under the default prefix.
    pub fn key(&self) -> String {
        format!("/mesh/v1/services/backend/instances/{}", self.id)
    }
}
