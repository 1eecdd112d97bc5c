//! Root rotation with dual trust: add the new root to the bundle, wait for every proxy to renew,
//! promote it to issuer, wait, retire the old root, wait: no call fails, and instances that come
//! and go at each stage (so new handshakes happen) keep working. Done in the wrong order
//! (the old root removed before proxies learned the new one), calls fail: the test can fail.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant, SystemTime};

use mesh_tests::ca::{SecuredMesh, as_env, forge_with};
use mesh_tests::load::{Load, assert_no_failures, failures};
use mesh_tests::mesh::{EchoInstance, Sidecar, metric_sum};
use mesh_tests::process::run;

fn renewals(metrics: &str) -> u64 {
    metric_sum(metrics, r#"mesh_identity_renewals_total{outcome="ok"}"#)
}

/// Waits until each proxy has renewed at least once more.
async fn every_proxy_renews(proxies: &[&Sidecar]) {
    let mut before = Vec::new();
    for p in proxies {
        before.push(renewals(&p.metrics().await));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    for (p, b) in proxies.iter().zip(before) {
        while renewals(&p.metrics().await) <= b {
            assert!(Instant::now() < deadline, "a proxy did not renew in time");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn root(step: &str, ca_dir: &str) {
    let (code, out, err) = run("mesh-registry", &["root", step, "--ca-dir", ca_dir]);
    assert_eq!(code, 0, "root {step}: {out}{err}");
}

/// Replaces the mesh's echo instance with a new one, `id` (so the client makes new handshakes).
async fn replace_instance(s: &mut SecuredMesh, id: &str) {
    let env = s.cp.sidecar_env("echo");
    let fresh = EchoInstance::start_with(&s.etcd.endpoint(), "echo", id, &as_env(&env));
    fresh.sidecar.ready().await;
    std::mem::replace(&mut s.server, fresh).stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_root_with_dual_trust_fails_no_call() {
    let mut s = SecuredMesh::start_with_lifetime("20s").await;
    let ca_dir = s.cp.ca_dir().display().to_string();
    let old_root = (
        std::fs::read_to_string(s.cp.ca_dir().join("root.pem")).unwrap(),
        std::fs::read_to_string(s.cp.ca_dir().join("root.key.pem")).unwrap(),
    );
    let load = Load::start(s.client.echo_client("echo").await, 2, Duration::from_millis(20));

    root("add", &ca_dir);
    every_proxy_renews(&[&s.server.sidecar, &s.client]).await;

    root("promote", &ca_dir);
    s.cp.kill();
    s.cp.restart().await; // its own TLS certificate now comes from the new root
    every_proxy_renews(&[&s.server.sidecar, &s.client]).await;
    replace_instance(&mut s, "echo-2").await;

    root("retire", &ca_dir);
    every_proxy_renews(&[&s.server.sidecar, &s.client]).await;
    replace_instance(&mut s, "echo-3").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let outcomes = load.stop().await;
    assert_no_failures(&outcomes);
    assert!(outcomes.iter().any(|o| o.result.as_deref() == Ok("echo-3")), "the last instance served calls");

    // The retired root is no longer trusted: a certificate from it is refused.
    let key = rcgen::KeyPair::from_pem(&old_root.1).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&old_root.0, key).unwrap();
    let hour = Duration::from_secs(3600);
    let stale =
        forge_with(&issuer, "spiffe://mesh.local/svc/client", SystemTime::now() - hour, SystemTime::now() + hour);
    assert!(mesh_tests::tls::probe(&s.server.sidecar.inbound, Some(stale)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_old_root_before_proxies_trust_the_new_one_breaks_calls() {
    // Day-long certificates: nobody renews during the test, as if the operator did not wait.
    let mut s = SecuredMesh::start_with_lifetime("24h").await;
    let ca_dir = s.cp.ca_dir().display().to_string();
    root("add", &ca_dir);
    root("promote", &ca_dir);
    root("retire", &ca_dir);
    s.cp.kill();
    s.cp.restart().await;
    let load = Load::start(s.client.echo_client("echo").await, 2, Duration::from_millis(20));
    replace_instance(&mut s, "echo-2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;
    assert!(!failures(&outcomes).is_empty(), "calls must fail when the old root is dropped first");
}
