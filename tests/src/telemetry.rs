//! The observability side: a real `mesh-collector` process, a real Prometheus (Debian's
//! `prometheus`) scraping it, and an OTLP client to send spans and metrics directly.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;
use tempfile::TempDir;

use crate::ca::as_env;
use crate::mesh::admin_get;
use crate::process::Proc;
use crate::{eventually, free_port};

/// A running `mesh-collector`.
#[derive(Debug)]
pub struct Collector {
    /// The process.
    pub proc: Proc,
    /// OTLP/gRPC listener, `127.0.0.1:<port>`.
    pub otlp: String,
    /// Prometheus exposition listener.
    pub metrics: String,
    /// Zipkin API listener.
    pub query: String,
    args: Vec<String>,
}

impl Collector {
    /// Starts a collector on free ports with extra `args`, and waits until it answers.
    pub async fn start(args: &[&str]) -> Self {
        let (otlp, metrics, query) = (free_port(), free_port(), free_port());
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut all = vec![
            "--otlp-addr".to_string(),
            addr(otlp),
            "--metrics-addr".into(),
            addr(metrics),
            "--query-addr".into(),
            addr(query),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let collector = Self {
            proc: Proc::start("mesh-collector", &all.iter().map(String::as_str).collect::<Vec<_>>(), &[]),
            otlp: addr(otlp),
            metrics: addr(metrics),
            query: addr(query),
            args: all,
        };
        collector.wait_ready().await;
        collector
    }

    async fn wait_ready(&self) {
        eventually("the collector to answer", Duration::from_secs(15), || async {
            let health = admin_get(&self.query, "/health").await?;
            let otlp = tokio::net::TcpStream::connect(&self.otlp).await.ok()?;
            drop(otlp);
            (health.0 == 200).then_some(())
        })
        .await;
    }

    /// `http://<otlp>`, what proxies are given as `MESH_COLLECTOR_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    /// Kills the collector (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        self.proc.sigkill();
    }

    /// Starts it again on the same ports.
    pub async fn restart(&mut self) {
        self.proc = Proc::start("mesh-collector", &self.args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        self.wait_ready().await;
    }

    /// A Zipkin API call: (status, JSON body or `null`).
    pub async fn api(&self, path: &str) -> (u16, Value) {
        let (status, body) = admin_get(&self.query, path).await.unwrap_or((0, String::new()));
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// The collector's `/metrics` text.
    pub async fn scrape(&self) -> String {
        admin_get(&self.metrics, "/metrics").await.map(|(_, b)| b).unwrap_or_default()
    }

    /// An OTLP trace client.
    pub async fn trace_client(&self) -> TraceServiceClient<tonic::transport::Channel> {
        TraceServiceClient::connect(self.endpoint()).await.unwrap().max_encoding_message_size(16 << 20)
    }
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// An export request of `spans` from `service`.
pub fn spans_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", service)], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// A real Prometheus scraping one target every second, with `honor_labels` (the collector's
/// `service` and `instance` labels are the senders').
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, path `/metrics`) and waits until it has
    /// scraped it twice (so `rate()` has two samples).
    pub async fn start(target: &str) -> Self {
        Self::start_with_rules(target, None).await
    }

    /// The same, also evaluating the alerting rules in `rules`.
    pub async fn start_with_rules(target: &str, rules: Option<&std::path::Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rule_files = rules.map(|r| format!("rule_files: ['{}']\n", r.display())).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: mesh-collector\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus: is Debian's prometheus installed?");
        let prometheus = Self { child, addr, _dir: dir };
        eventually("Prometheus to scrape the collector twice", Duration::from_secs(60), || async {
            let v = prometheus.query("count_over_time(up[1m])").await?;
            (v.first()?.1 >= 2.0).then_some(())
        })
        .await;
        prometheus
    }

    /// An instant query: each result's labels and value; `None` if the query failed.
    pub async fn query(&self, expr: &str) -> Option<Vec<(Value, f64)>> {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (status, body) = admin_get(&self.addr, &format!("/api/v1/query?query={q}")).await?;
        let json: Value = serde_json::from_str(&body).ok()?;
        if status != 200 || json["status"] != "success" {
            return None;
        }
        Some(
            json["data"]["result"]
                .as_array()?
                .iter()
                .filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
                .collect(),
        )
    }

    /// The one value of a query that should return one series.
    pub async fn value(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr).await?;
        (v.len() == 1).then(|| v[0].1)
    }

    /// A range query's samples for each series: `(labels, [(time, value)])`.
    pub async fn range(&self, expr: &str, seconds: u64) -> Vec<(Value, Vec<(f64, f64)>)> {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let path = format!("/api/v1/query_range?query={q}&start={}&end={now}&step=1", now - seconds);
        let (_, body) = admin_get(&self.addr, &path).await.unwrap_or_default();
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        json["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .map(|r| {
                        let samples = r["values"]
                            .as_array()
                            .map(|vs| {
                                vs.iter().filter_map(|v| Some((v[0].as_f64()?, v[1].as_str()?.parse().ok()?))).collect()
                            })
                            .unwrap_or_default();
                        (r["metric"].clone(), samples)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory, KiB (from `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Telemetry settings for a sidecar exporting to `collector`, metrics every second, new traces
/// sampled at `sampling` (pass them to a sidecar with [`crate::ca::as_env`]).
pub fn exporting(collector: &str, sampling: &str) -> Vec<(String, String)> {
    [("MESH_COLLECTOR_ENDPOINT", collector), ("MESH_METRICS_EXPORT_INTERVAL", "1s"), ("MESH_TRACE_SAMPLING", sampling)]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
}

/// etcd, a collector (and, if asked, Prometheus scraping it), and one meshed echo instance
/// (`echo-1` of `echo`) whose sidecar exports everything; [`ExportingMesh::client`] adds the
/// calling side.
#[derive(Debug)]
pub struct ExportingMesh {
    /// The registry.
    pub etcd: crate::etcd::Etcd,
    /// The collector.
    pub collector: Collector,
    /// Prometheus, if started.
    pub prometheus: Option<Prometheus>,
    /// The called service.
    pub server: crate::mesh::EchoInstance,
    env: Vec<(String, String)>,
}

impl ExportingMesh {
    /// Starts everything and waits until the server's proxy is ready.
    pub async fn start(with_prometheus: bool) -> Self {
        let etcd = crate::etcd::Etcd::start().await;
        let collector = Collector::start(&[]).await;
        let prometheus = if with_prometheus { Some(Prometheus::start(&collector.metrics).await) } else { None };
        let env = exporting(&collector.endpoint(), "1");
        let server = crate::mesh::EchoInstance::start_with(&etcd.endpoint(), "echo", "echo-1", &as_env(&env));
        server.sidecar.ready().await;
        Self { etcd, collector, prometheus, server, env }
    }

    /// A client sidecar (`client-1` of `client`) exporting to the same collector.
    pub async fn client(&self) -> (Proc, crate::mesh::Sidecar) {
        crate::mesh::client_sidecar_with(&self.etcd.endpoint(), &as_env(&self.env)).await
    }

    /// Prometheus (started with `with_prometheus`).
    pub fn prometheus(&self) -> &Prometheus {
        self.prometheus.as_ref().unwrap()
    }
}

/// One meshed echo instance (`<service>-1`) whose unary calls first go on to service `next`
/// through its own sidecar, trace context included: links of a chain of services.
pub fn chained_echo(
    etcd: &str,
    service: &str,
    next: Option<&str>,
    env: &[(&str, &str)],
) -> (Proc, crate::mesh::Sidecar) {
    let app_addr = format!("127.0.0.1:{}", free_port());
    let sidecar = crate::mesh::Sidecar::start(etcd, service, &format!("{service}-1"), &app_addr, env);
    let outbound = format!("http://{}", sidecar.outbound);
    let mut args = vec!["echo", "--listen", &app_addr, "--instance-id", service];
    if let Some(next) = next {
        args.extend_from_slice(&["--next-addr", &outbound, "--next-authority", next]);
    }
    (Proc::start("mesh-demo", &args, &[]), sidecar)
}
