//! Meshed processes: `mesh-proxy` sidecars beside demo apps, as real processes on loopback.

use std::time::Duration;

use mesh_proto::demo::v1::echo_client::EchoClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

use crate::process::Proc;
use crate::{eventually, free_port};

/// A running `mesh-proxy`.
#[derive(Debug)]
pub struct Sidecar {
    /// The process.
    pub proc: Proc,
    /// Outbound listener (`127.0.0.1:<port>`).
    pub outbound: String,
    /// Inbound listener.
    pub inbound: String,
    /// Admin listener.
    pub admin: String,
}

impl Sidecar {
    /// Starts a proxy for instance `id` of `service`, in front of the app at `app`, with a 3 s
    /// lease, 1 s deregistration wait and short etcd timeouts. `extra` adds or overrides
    /// environment.
    pub fn start(etcd: &str, service: &str, id: &str, app: &str, extra: &[(&str, &str)]) -> Self {
        let outbound = format!("127.0.0.1:{}", free_port());
        let inbound = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            ("MESH_SERVICE", service),
            ("MESH_INSTANCE_ID", id),
            ("MESH_APP_ADDR", app),
            ("MESH_OUTBOUND_ADDR", outbound.as_str()),
            ("MESH_INBOUND_ADDR", inbound.as_str()),
            ("MESH_ADMIN_ADDR", admin.as_str()),
            ("MESH_ETCD_ENDPOINTS", etcd),
            ("MESH_LEASE_TTL", "3s"),
            ("MESH_LEASE_KEEPALIVE_INTERVAL", "1s"),
            ("MESH_ETCD_REQUEST_TIMEOUT", "1s"),
            ("MESH_ETCD_CONNECT_TIMEOUT", "500ms"),
            ("MESH_DEREGISTER_WAIT", "1s"),
            ("MESH_WORKERS", "1"),
        ];
        env.extend_from_slice(extra);
        let proc = Proc::start("mesh-proxy", &[], &env);
        Self { proc, outbound, inbound, admin }
    }

    /// Waits until `/ready` answers 200 (the app answered and the instance is registered).
    pub async fn ready(&self) {
        eventually(&format!("proxy at {} to be ready", self.admin), Duration::from_secs(15), || async {
            (admin_get(&self.admin, "/ready").await?.0 == 200).then_some(())
        })
        .await;
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> String {
        admin_get(&self.admin, "/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }

    /// An Echo client calling `service` through this proxy's outbound listener, over one
    /// HTTP/2 connection.
    pub async fn echo_client(&self, service: &str) -> EchoClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.outbound))
            .unwrap()
            .origin(format!("http://{service}").parse().unwrap())
            .connect()
            .await
            .unwrap();
        EchoClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
    }
}

/// The sum of every sample in `/metrics` text whose line starts with `prefix` (a metric name, or a
/// name with the start of its labels): one series' value, or a total across label values.
pub fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// A plain HTTP/1.1 GET to an admin listener: (status, body).
pub async fn admin_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    Some((status, if chunked { dechunk(body) } else { body.to_string() }))
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A meshed `mesh-demo echo` instance: the app and its sidecar.
#[derive(Debug)]
pub struct EchoInstance {
    /// The echo app.
    pub app: Proc,
    /// Its proxy.
    pub sidecar: Sidecar,
    /// The instance id (also what the app reports in replies).
    pub id: String,
    /// Where the app listens.
    pub app_addr: String,
    /// Extra flags of the app, kept for restarts.
    app_args: Vec<String>,
}

impl EchoInstance {
    /// Starts an echo app and its sidecar as instance `id` of `service`.
    pub fn start(etcd: &str, service: &str, id: &str) -> Self {
        Self::start_with(etcd, service, id, &[])
    }

    /// The same, with extra sidecar environment (e.g. identity settings).
    pub fn start_with(etcd: &str, service: &str, id: &str, sidecar_env: &[(&str, &str)]) -> Self {
        Self::start_app_with(etcd, service, id, &[], sidecar_env)
    }

    /// The same, with extra flags for the app (e.g. `--slow-percent 10`).
    pub fn start_app_with(
        etcd: &str,
        service: &str,
        id: &str,
        app_args: &[&str],
        sidecar_env: &[(&str, &str)],
    ) -> Self {
        let app_addr = format!("127.0.0.1:{}", free_port());
        let app_args: Vec<String> = app_args.iter().map(|a| (*a).to_string()).collect();
        let app = Self::app(&app_addr, id, &app_args);
        let sidecar = Sidecar::start(etcd, service, id, &app_addr, sidecar_env);
        Self { app, sidecar, id: id.to_string(), app_addr, app_args }
    }

    fn app(addr: &str, id: &str, extra: &[String]) -> Proc {
        let mut args = vec!["echo", "--listen", addr, "--instance-id", id];
        args.extend(extra.iter().map(String::as_str));
        Proc::start("mesh-demo", &args, &[])
    }

    /// Starts the app again (after it was killed), on the same address.
    pub fn restart_app(&mut self) {
        self.app = Self::app(&self.app_addr, &self.id, &self.app_args);
    }

    /// Stops the instance the way an orchestrator should: the proxy first (it deregisters,
    /// waits, drains), then the app.
    pub fn stop(&mut self) {
        let status = self.sidecar.proc.terminate();
        assert!(status.success(), "proxy exited with {status}:\n{}", self.sidecar.proc.log());
        self.app.terminate();
    }
}

/// `n` instances of service `service` (`<service>-1` ...), each ready.
pub async fn echo_instances(etcd: &str, service: &str, n: usize) -> Vec<EchoInstance> {
    let instances: Vec<EchoInstance> =
        (1..=n).map(|i| EchoInstance::start(etcd, service, &format!("{service}-{i}"))).collect();
    for instance in &instances {
        instance.sidecar.ready().await;
    }
    instances
}

/// One ready instance of `service` per version, `<service>-<version>`, labelled `version=<version>`.
pub async fn versioned_instances(etcd: &str, service: &str, versions: &[&str]) -> Vec<EchoInstance> {
    let instances: Vec<EchoInstance> = versions
        .iter()
        .map(|v| {
            let labels = format!("version={v}");
            EchoInstance::start_with(etcd, service, &format!("{service}-{v}"), &[("MESH_LABELS", &labels)])
        })
        .collect();
    for instance in &instances {
        instance.sidecar.ready().await;
    }
    instances
}

/// A client-side sidecar: a proxy whose own app is never called (its outbound side is what the
/// test uses). Registers as service `client`.
pub async fn client_sidecar(etcd: &str) -> (Proc, Sidecar) {
    client_sidecar_with(etcd, &[]).await
}

/// The same, with extra sidecar environment.
pub async fn client_sidecar_with(etcd: &str, sidecar_env: &[(&str, &str)]) -> (Proc, Sidecar) {
    client_sidecar_as(etcd, "client", sidecar_env).await
}

/// A client-side sidecar registered as service `service` (instance `<service>-1`).
pub async fn client_sidecar_as(etcd: &str, service: &str, sidecar_env: &[(&str, &str)]) -> (Proc, Sidecar) {
    let app_addr = format!("127.0.0.1:{}", free_port());
    let app = Proc::start("mesh-demo", &["echo", "--listen", &app_addr, "--instance-id", "client-app"], &[]);
    let sidecar = Sidecar::start(etcd, service, &format!("{service}-1"), &app_addr, sidecar_env);
    sidecar.ready().await;
    (app, sidecar)
}

/// The smallest mesh with both hops: etcd, one meshed echo instance (`echo-1` of service
/// `echo`), and a client sidecar whose outbound side the test calls.
#[derive(Debug)]
pub struct EchoMesh {
    /// The registry.
    pub etcd: crate::etcd::Etcd,
    /// The server: echo app and its sidecar.
    pub server: EchoInstance,
    /// The client-side proxy.
    pub client: Sidecar,
    _client_app: Proc,
}

impl EchoMesh {
    /// Starts everything and waits until both proxies are ready.
    pub async fn start() -> Self {
        let etcd = crate::etcd::Etcd::start().await;
        let server = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
        server.sidecar.ready().await;
        let (client_app, client) = client_sidecar(&etcd.endpoint()).await;
        Self { etcd, server, client, _client_app: client_app }
    }
}

/// Applies a service policy with `meshctl validate` and `meshctl apply`, as a user would.
pub fn apply_policy(etcd: &crate::etcd::Etcd, service: &str, policy: &str) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy).unwrap_or_else(|e| panic!("{e}"));
    let file = file.to_string_lossy().into_owned();
    let endpoint = etcd.endpoint();
    for args in [vec!["validate", "-f", &file], vec!["apply", service, "-f", &file]] {
        let mut all = vec!["--etcd-endpoints", &endpoint];
        all.extend(args);
        let (code, out, err) = crate::process::run("meshctl", &all);
        assert_eq!(code, 0, "meshctl {all:?}: {out}{err}");
    }
}

/// Waits until each of `proxies` runs the live revision of `service`'s policy (what its admin
/// endpoint `/policies` reports): a policy applied is then in force there, however busy the machine.
pub async fn policy_in_force(etcd: &crate::etcd::Etcd, service: &str, proxies: &[&Sidecar]) {
    let mut client = etcd.client().await;
    let resp = client.get(format!("/mesh/v1/policies/{service}"), None).await.unwrap_or_else(|e| panic!("{e}"));
    let live = resp.kvs().first().map_or(0, etcd_client::KeyValue::mod_revision);
    for proxy in proxies {
        let what = format!("proxy {} to run revision {live} of {service}'s policy", proxy.admin);
        eventually(&what, Duration::from_secs(10), || async {
            let (_, body) = admin_get(&proxy.admin, "/policies").await?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status["policies"][service]["revision"] == live).then_some(())
        })
        .await;
    }
}

/// Runs `meshctl` against `etcd`: (exit code, stdout, stderr).
pub fn meshctl(etcd: &crate::etcd::Etcd, args: &[&str]) -> (i32, String, String) {
    let endpoint = etcd.endpoint();
    let mut all = vec!["--etcd-endpoints", endpoint.as_str()];
    all.extend_from_slice(args);
    crate::process::run("meshctl", &all)
}

/// What the apps of `instances` counted, asked of them directly: calls served, and calls
/// cancelled before they answered (summed).
pub async fn app_counts(instances: &[EchoInstance]) -> (u64, u64) {
    let (mut calls, mut cancelled) = (0, 0);
    for instance in instances {
        let mut app =
            EchoClient::connect(format!("http://{}", instance.app_addr)).await.unwrap_or_else(|e| panic!("{e}"));
        let stats =
            app.stats(mesh_proto::demo::v1::StatsRequest {}).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
        calls += stats.calls;
        cancelled += stats.cancelled;
    }
    (calls, cancelled)
}
