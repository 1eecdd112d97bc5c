//! A real etcd (Debian's `etcd-server`) on free loopback ports with its own data directory,
//! which a test can kill, restart, or restart with its data wiped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tempfile::TempDir;

/// One etcd member, killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it answers.
    pub async fn start() -> Self {
        let mut etcd = Self {
            dir: tempfile::tempdir().unwrap(),
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            child: None,
        };
        etcd.spawn().await;
        etcd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--unsafe-no-fsync", "--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd: is Debian's etcd-server installed?");
        self.child = Some(child);
        let endpoint = self.endpoint();
        crate::eventually(&format!("etcd at {endpoint} to answer"), Duration::from_secs(20), || async {
            let mut c = Client::connect([endpoint.as_str()], None).await.ok()?;
            c.status().await.ok()
        })
        .await;
    }

    /// `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A client for direct reads and writes.
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None).await.unwrap()
    }

    /// Kills etcd with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts etcd on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Restarts etcd on the same ports with an empty data directory (a new cluster).
    pub async fn restart_fresh(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).unwrap();
        self.spawn().await;
    }

    /// Every key and value under `prefix`, read the way an operator would: with `etcdctl`.
    pub fn etcdctl_get_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "get", "--prefix", prefix])
            .output()
            .expect("cannot run etcdctl: is Debian's etcd-client installed?");
        assert!(out.status.success(), "etcdctl failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        lines.chunks(2).map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string())).collect()
    }

    /// The keys under `prefix`, with the lease each is attached to.
    pub async fn keys_with_leases(&self, prefix: &str) -> BTreeMap<String, i64> {
        let resp = self.client().await.get(prefix, Some(GetOptions::new().with_prefix())).await.unwrap();
        resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease())).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Etcd {
    /// Connection settings for the registry library with short timeouts, so that tests see
    /// outages quickly.
    pub fn config(&self) -> mesh_registry::EtcdConfig {
        mesh_registry::EtcdConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            ..mesh_registry::EtcdConfig::with_endpoints([self.endpoint()])
        }
    }

    /// A registry-library client with [`Etcd::config`].
    pub async fn registry_client(&self) -> Client {
        self.config().connect().await.unwrap()
    }

    /// The valid instance records under `prefix`, decoded from what `etcdctl` prints: the truth
    /// a view must converge to.
    pub fn truth(&self, prefix: &str) -> BTreeMap<String, mesh_registry::InstanceRecord> {
        let layout = mesh_registry::Layout::default();
        self.etcdctl_get_prefix(prefix)
            .into_iter()
            .filter_map(|(k, v)| mesh_registry::InstanceRecord::decode(&layout, &k, v.as_bytes()).ok().map(|r| (k, r)))
            .collect()
    }
}

impl Etcd {
    /// A live view of the `backend` service through [`Etcd::registry_client`], optionally
    /// starting from a snapshot the caller holds instead of a first list.
    pub async fn backend_view(
        &self,
        config: mesh_registry::ViewConfig,
        metrics: std::sync::Arc<mesh_registry::Metrics>,
        from: Option<mesh_registry::Snapshot>,
    ) -> mesh_registry::View {
        let client = self.registry_client().await;
        let layout = mesh_registry::Layout::default();
        let service: mesh_registry::ServiceName = "backend".parse().unwrap();
        match from {
            Some(snapshot) => mesh_registry::View::service_from(client, &layout, &service, snapshot, config, metrics),
            None => mesh_registry::View::service(client, &layout, &service, config, metrics),
        }
    }
}
