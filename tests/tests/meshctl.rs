//! `meshctl` against running and stopped etcd: clear output, clear failures, right exit codes.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_tests::demo::Backend;
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;
use mesh_tests::process::run;

#[tokio::test]
async fn check_against_a_stopped_etcd_exits_non_zero_and_says_what_to_do() {
    let mut etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    etcd.kill();

    let started = Instant::now();
    let (code, out, err) = run("meshctl", &["--etcd-endpoints", &ep, "check"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(started.elapsed() < Duration::from_secs(10), "check took {:?}", started.elapsed());
    assert!(err.contains(&format!("cannot reach etcd at {ep}")), "{err}");
    assert!(err.contains("MESH_ETCD_ENDPOINTS"), "the message says how to fix it: {err}");

    let (code, _, err) = run("meshctl", &["--etcd-endpoints", &ep, "services"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach etcd"), "{err}");
}

#[tokio::test]
async fn check_services_and_endpoints_against_a_running_etcd() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let backends = [Backend::start(&ep, "be-1"), Backend::start(&ep, "be-2")];
    eventually("both registered", Duration::from_secs(10), || async {
        (etcd.keys_with_leases("/mesh/v1/services/").await.len() == 2).then_some(())
    })
    .await;

    let (code, out, err) = run("meshctl", &["--etcd-endpoints", &ep, "check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok   etcd-reachable") && out.contains("ok   records-valid"), "{out}");

    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "-o", "json", "services"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["services"], serde_json::json!([{ "name": "backend", "instances": 2 }]));

    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "endpoints", "backend"]);
    assert_eq!(code, 0);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["INSTANCE", "ADDRESS", "LABELS", "WEIGHT", "LEASE-TTL", "STARTED"]);
    for b in &backends {
        let row = out.lines().find(|l| l.starts_with(&b.id)).unwrap_or_else(|| panic!("{} missing: {out}", b.id));
        assert!(row.contains(&b.listen) && row.contains("version=v1,zone=a"), "{row}");
    }

    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "-o", "json", "endpoints", "backend"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    for e in json["endpoints"].as_array().unwrap() {
        let ttl = e["lease_ttl_seconds"].as_i64().unwrap();
        assert!((1..=3).contains(&ttl), "lease TTL remaining {ttl}");
    }
}

#[test]
fn a_bad_setting_fails_with_one_line_naming_it() {
    let (code, _, err) = run("meshctl", &["--etcd-request-timeout", "soon", "check"]);
    assert_eq!(code, 64);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--etcd-request-timeout"), "{err}");

    let (code, _, err) = run("meshctl", &["--etcd-prefix", "mesh/", "check"]);
    assert_eq!(code, 64);
    assert!(err.contains("--etcd-prefix"), "{err}");

    let (code, _, err) = run("meshctl", &["endpoints", "Not_A_Service"]);
    assert_eq!(code, 64);
    assert!(err.contains("invalid service name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_checks_http_and_tcp_health_for_container_healthchecks() {
    let collector = mesh_tests::telemetry::Collector::start(&[]).await;
    let probe = |target: String| async move {
        tokio::task::spawn_blocking(move || run("meshctl", &["probe", &target, "--timeout", "2s"])).await.unwrap()
    };
    let (code, _, err) = probe(format!("http://{}/health", collector.query)).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = probe(format!("http://{}/nowhere", collector.query)).await;
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 404"), "{err}");
    let (code, _, err) = probe(format!("tcp://{}", collector.otlp)).await;
    assert_eq!(code, 0, "{err}");
    let closed = format!("tcp://127.0.0.1:{}", mesh_tests::free_port());
    let (code, _, err) = probe(closed).await;
    assert_eq!(code, 1);
    assert!(err.contains("connect"), "{err}");
    let (code, _, err) = probe("ftp://x".to_string()).await;
    assert_eq!(code, 1);
    assert!(err.contains("http://host:port/path or tcp://host:port"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_service_policy_is_refused_with_its_line_and_never_stored() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": \"v1\",\n \"methods\": [\n  {\"match\": \"*\", \"max_atempts\": 2}\n ]\n}\n")
        .unwrap();
    let bad = bad.to_str().unwrap();
    let (code, _, err) = run("meshctl", &["validate", "-f", bad]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `max_atempts`") && err.contains("line 3"), "{err}");
    let (code, _, err) = run("meshctl", &["--etcd-endpoints", &ep, "apply", "echo", "-f", bad]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run("meshctl", &["--etcd-endpoints", &ep, "show", "echo"]);
    assert_eq!(code, 1, "nothing was stored: {err}");
    assert!(err.contains("built-in defaults"), "{err}");

    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"version":"v1","defaults":{"timeout_ms":500}}"#).unwrap();
    let (code, out, err) = run("meshctl", &["--etcd-endpoints", &ep, "apply", "echo", "-f", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "-o", "json", "show", "echo"]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["defaults"]["timeout_ms"], 500);
    let (code, _, _) = run("meshctl", &["--etcd-endpoints", &ep, "remove", "echo"]);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_policies_validate_with_their_line_and_diff_shows_what_apply_would_change() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let yaml = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    let canary = |v2: u32| {
        format!(
            "version: v1\nsubsets:\n  v1: {{version: v1}}\n  v2: {{version: v2}}\nroutes:\n  - name: canary\n    split:\n      - {{subset: v1, weight: {}}}\n      - {{subset: v2, weight: {v2}}}\n",
            100 - v2
        )
    };
    let ten = yaml("ten.yaml", &canary(10));
    let (code, out, err) = run("meshctl", &["validate", "-f", &ten]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 subsets, 1 routes"), "{out}");

    // A regex that does not compile, on line 5 of a YAML file.
    let bad = yaml(
        "bad.yaml",
        "version: v1\nroutes:\n  - name: r\n    match:\n      headers: [{name: x-user, regex: \"(unclosed\"}]\n",
    );
    let (code, _, err) = run("meshctl", &["validate", "-f", &bad]);
    assert_eq!(code, 1);
    assert!(err.contains("does not compile") && err.contains("line 5"), "{err}");

    let (code, out, err) = run("meshctl", &["--etcd-endpoints", &ep, "diff", "web", "-f", &ten]);
    assert_eq!(code, 1, "no live policy yet: everything differs\n{out}{err}");
    // No instance of web is registered: a split to its subsets is refused unless asked for.
    let (code, _, err) = run("meshctl", &["--etcd-endpoints", &ep, "apply", "web", "-f", &ten]);
    assert_eq!(code, 1);
    assert!(err.contains("web has no instance in subset \"v1\" (route \"canary\")"), "{err}");
    assert!(err.contains("--allow-empty-subsets"), "the message says how to go on: {err}");
    let (code, _, _) = run("meshctl", &["--etcd-endpoints", &ep, "history", "web"]);
    assert_eq!(code, 1, "nothing was stored");
    let (code, out, err) =
        run("meshctl", &["--etcd-endpoints", &ep, "apply", "web", "-f", &ten, "--allow-empty-subsets"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied version 1"), "{out}");
    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "diff", "web", "-f", &ten]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no changes"), "{out}");
    let fifty = yaml("fifty.yaml", &canary(50));
    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "diff", "web", "-f", &fifty]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("-          \"weight\": 90") && out.contains("+          \"weight\": 50"), "{out}");
}
