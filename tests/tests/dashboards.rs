//! The dashboards and alert rules, checked without Grafana (which cannot be installed here):
//! every dashboard validates against Grafana 13's dashboard schema, is what its generator makes,
//! uses only provisioned data sources and unique panel ids; the Prometheus config and rules pass
//! `promtool`; and on a real mesh (mTLS, three services, traffic, an ingress gateway called over
//! TLS) scraped by a real Prometheus,
//! every panel query returns data and every alert rule evaluates without error.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::ca::{ControlPlane, as_env};
use mesh_tests::etcd::Etcd;
use mesh_tests::gateway::{DevCa, Gateway};
use mesh_tests::load::{Load, assert_no_failures};
use mesh_tests::mesh::{apply_policy, client_sidecar_with};
use mesh_tests::telemetry::{Collector, Prometheus, chained_echo, exporting};
use serde_json::Value;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(repo().join("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel (rows included) of a dashboard.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).current_dir(repo()).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn dashboards_and_rules_are_valid_and_consistent() {
    let (ok, out) = run("python3", &["scripts/dashboards.py", "--check"]);
    assert!(ok, "{out}");
    let validate = "import json,sys,jsonschema; s=json.load(open(sys.argv[1])); \
        [jsonschema.Draft7Validator(s).validate(json.load(open(f))) for f in sys.argv[2:]]";
    let files: Vec<String> = dashboards().iter().map(|(n, _)| format!("grafana/dashboards/{n}")).collect();
    assert_eq!(files.len(), 8, "overview, service, graph, security, proxies, registry, collector, gateway");
    let mut args = vec!["-c", validate, "grafana/schema/dashboard.schema.json"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = run("python3", &args);
    assert!(ok, "a dashboard does not match Grafana's schema:\n{out}");

    let provisioned = std::fs::read_to_string(repo().join("grafana/provisioning/datasources/mesh.yaml")).unwrap();
    let uids: HashSet<&str> = provisioned.lines().filter_map(|l| l.trim().strip_prefix("uid: ")).collect();
    assert_eq!(uids, HashSet::from(["prometheus", "traces"]));
    let mut dashboard_uids = HashSet::new();
    for (name, d) in dashboards() {
        assert!(dashboard_uids.insert(d["uid"].as_str().unwrap().to_string()), "{name}: duplicate dashboard uid");
        let mut ids = HashSet::new();
        for p in panels(&d) {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{name}: duplicate panel id {}", p["id"]);
            for ds in std::iter::once(&p["datasource"])
                .chain(p["targets"].as_array().into_iter().flatten().map(|t| &t["datasource"]))
            {
                if let Some(uid) = ds["uid"].as_str() {
                    assert!(uids.contains(uid), "{name}: panel {} uses data source {uid}, not provisioned", p["title"]);
                }
            }
        }
    }

    // What compose mounts is what provisioning and Grafana's home dashboard point at.
    let compose = std::fs::read_to_string(repo().join("compose.yaml")).unwrap();
    let provider = std::fs::read_to_string(repo().join("grafana/provisioning/dashboards/mesh.yaml")).unwrap();
    let dashboards_path = provider.lines().find_map(|l| l.trim().strip_prefix("path: ")).unwrap();
    for mount in [
        "./grafana/provisioning:/etc/grafana/provisioning:ro".to_string(),
        format!("./grafana/dashboards:{dashboards_path}:ro"),
        "./prometheus:/etc/prometheus:ro".to_string(),
    ] {
        assert!(compose.contains(&mount), "compose.yaml does not mount {mount}");
    }
    let home =
        compose.lines().find_map(|l| l.trim().strip_prefix("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH: ")).unwrap();
    let home_file = home.strip_prefix(&format!("{dashboards_path}/")).unwrap();
    assert!(repo().join("grafana/dashboards").join(home_file).exists(), "home dashboard {home} is not mounted");

    let (ok, out) = run("promtool", &["check", "config", "prometheus/prometheus.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = run("promtool", &["check", "rules", "prometheus/alerts.yml"]);
    assert!(ok && out.contains("SUCCESS: 13 rules found"), "{out}");
    let queries: usize =
        dashboards().iter().flat_map(|(_, d)| panels(d)).map(|p| p["targets"].as_array().map_or(0, Vec::len)).sum();
    assert!(queries > 60, "{queries} panel queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_and_alert_rule_works_on_a_real_mesh() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint()).await;
    let collector = Collector::start(&[]).await;
    let prometheus =
        Prometheus::start_with_rules(&collector.metrics, Some(&repo().join("prometheus/alerts.yml"))).await;
    // Default head sampling, as compose runs it.
    let env_for = |service: &str| {
        let mut env = cp.sidecar_env(service);
        env.extend(exporting(&collector.endpoint(), "0.1"));
        env
    };
    // client -> a -> b -> c, all over mTLS, everything exported.
    let mut mesh = Vec::new();
    for (service, next) in [("a", Some("b")), ("b", Some("c")), ("c", None)] {
        mesh.push(chained_echo(&etcd.endpoint(), service, next, &as_env(&env_for(service))));
    }
    for (_, sidecar) in &mesh {
        sidecar.ready().await;
    }
    // A route on b, so its Traffic policy panels have something to show.
    apply_policy(&etcd, "b", r#"{"version":"v1","routes":[{"name":"all"}]}"#);
    let (_client_app, client) = client_sidecar_with(&etcd.endpoint(), &as_env(&env_for("client"))).await;
    let load = Load::start(client.echo_client("a").await, 2, Duration::from_millis(20));
    // The ingress gateway in front of a, called over TLS: the Gateway dashboard's data.
    let ca = DevCa::new();
    ca.sign("edge", &["localhost"]);
    let document = format!(
        "certificates:\n{}routes:\n  - {{ name: echo, grpc_service: mesh.demo.v1.Echo, service: a }}\n",
        ca.entry("edge")
    );
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document, &as_env(&env_for("api-gateway"))).await;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.ca_pem)).domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", gateway.tls)).unwrap().tls_config(tls).unwrap();
    let edge = Load::start(EchoClient::new(channel.connect().await.unwrap()), 1, Duration::from_millis(50));

    // The same check compose gets (scripts/compose_queries.py): every panel query returns data,
    // every rule in alerts.yml is loaded and healthy, a trace crosses the services.
    let script = [
        "scripts/compose_queries.py".to_string(),
        "--prometheus".into(),
        format!("http://{}", prometheus.addr),
        "--traces".into(),
        format!("http://{}", collector.query),
        "--timeout".into(),
        "90".into(),
        "--service".into(),
        "b".into(),
        "--trace-through".into(),
        "c".into(),
        "--rate-interval".into(),
        "15s".into(),
    ];
    let (ok, out) =
        tokio::task::spawn_blocking(move || run("python3", &script.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
    assert!(ok, "{out}");
    eprintln!("{out}");
    assert_no_failures(&load.stop().await);
    assert_no_failures(&edge.stop().await);
}
