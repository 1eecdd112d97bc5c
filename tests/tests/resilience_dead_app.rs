//! A dead app must not become a black hole: when one of three apps is killed under load (its proxy
//! left running), no call sent after the kill fails, whatever the method, and the instance is out
//! of the registry and of every caller's balancer within 2 s. (A call in flight inside the app at
//! the kill may have been processed: it can fail, at most one per caller; retrying those is for
//! methods declared idempotent.) Three independent means make it so: the proxy keeps
//! probing its app and deregisters it; a call its app never received is answered
//! `mesh-not-processed`, which the caller's proxy sends to another instance; and such failures
//! raise the instance's cost in the balancer instead of lowering it.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;
use mesh_tests::load::{Load, failures};
use mesh_tests::mesh::{admin_get, client_sidecar, echo_instances, metric_sum};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_app_costs_no_call_and_leaves_every_balancer_within_2s() {
    let etcd = Etcd::start().await;
    let mut instances = echo_instances(&etcd.endpoint(), "echo", 3).await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let endpoints = || async { metric_sum(&client.metrics().await, r#"mesh_endpoints{dst_service="echo"}"#) };
    // Discovery of a service starts with its first call.
    let mut echo = client.echo_client("echo").await;
    echo.unary(mesh_proto::demo::v1::EchoRequest::default()).await.unwrap();
    eventually("the client to see 3 endpoints", Duration::from_secs(5), || async {
        (endpoints().await == 3).then_some(())
    })
    .await;

    let load = Load::start(client.echo_client("echo").await, 4, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill the app, not its proxy.
    instances[0].app.sigkill();
    let killed = Instant::now();
    let key = "/mesh/v1/services/echo/instances/echo-1";
    eventually("the dead app's instance to leave the registry", Duration::from_secs(5), || async {
        etcd.keys_with_leases(key).await.is_empty().then_some(())
    })
    .await;
    let deregistered = killed.elapsed();
    eventually("the client's balancer to drop it", Duration::from_secs(5), || async {
        (endpoints().await == 2).then_some(())
    })
    .await;
    let dropped = killed.elapsed();
    assert_eq!(
        admin_get(&instances[0].sidecar.admin, "/ready").await.map(|r| r.0),
        Some(503),
        "its proxy is not ready"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back: it registers again and takes calls.
    instances[0].restart_app();
    eventually("the instance to register again", Duration::from_secs(10), || async {
        (etcd.keys_with_leases(key).await.len() == 1).then_some(())
    })
    .await;
    eventually("the client's balancer to take it back", Duration::from_secs(5), || async {
        (endpoints().await == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.stop().await;
    let failed = failures(&outcomes);
    let late: Vec<_> = failed.iter().filter(|o| o.at.duration_since(killed) > Duration::from_millis(200)).collect();
    assert!(late.is_empty(), "calls sent after the kill failed: {late:?}");
    assert!(failed.len() <= 4, "more failures than calls in flight at the kill: {failed:?}");
    let after_return = outcomes.iter().rev().take(200).filter(|o| o.result.as_deref() == Ok("echo-1")).count();
    assert!(after_return > 0, "the instance serves again once its app is back");

    let server = instances[0].sidecar.metrics().await;
    let client_metrics = client.metrics().await;
    eprintln!(
        "{} calls, {} failed (in flight at the kill); deregistered {deregistered:?} and out of the client's balancer {dropped:?} after the kill; \
         calls retried elsewhere: {}; deregistrations for an unreachable app: {}",
        outcomes.len(),
        failed.len(),
        metric_sum(&client_metrics, "mesh_retries_total"),
        metric_sum(&server, "mesh_app_unreachable_total"),
    );
    assert!(dropped <= Duration::from_secs(2), "out of the client's balancer {dropped:?} after the kill");
    assert_eq!(metric_sum(&server, "mesh_app_unreachable_total"), 1);
    for instance in &mut instances {
        instance.stop();
    }
}
