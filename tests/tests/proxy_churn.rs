//! Instances come and go under load: added ones get traffic quickly, dead ones are dropped, a
//! rolling restart loses no call, and an etcd outage loses none either.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_tests::etcd::Etcd;
use mesh_tests::load::{Load, assert_no_failures, failures};
use mesh_tests::mesh::{EchoInstance, Sidecar, client_sidecar};
use mesh_tests::process::Proc;

/// etcd, `ids` meshed echo instances, and a load of 4 callers through a client sidecar that has
/// been running for a second.
struct UnderLoad {
    etcd: Etcd,
    instances: Vec<EchoInstance>,
    _client: (Proc, Sidecar),
    load: Load,
}

async fn under_load(ids: &[&str], pause: Duration) -> UnderLoad {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let instances: Vec<EchoInstance> = ids.iter().map(|id| EchoInstance::start(&ep, "echo", id)).collect();
    for i in &instances {
        i.sidecar.ready().await;
    }
    let client = client_sidecar(&ep).await;
    let load = Load::start(client.1.echo_client("echo").await, 4, pause);
    tokio::time::sleep(Duration::from_secs(1)).await;
    UnderLoad { etcd, instances, _client: client, load }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_added_under_load_gets_traffic_within_2s() {
    let UnderLoad { etcd, instances: _instances, load, _client } =
        under_load(&["echo-1", "echo-2"], Duration::from_millis(2)).await;
    let ep = etcd.endpoint();

    let added = EchoInstance::start(&ep, "echo", "echo-3");
    added.sidecar.ready().await;
    let registered = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;

    assert_no_failures(&outcomes);
    let first = outcomes.iter().find(|o| o.result.as_deref() == Ok("echo-3")).expect("the new instance got no traffic");
    let after = first.at.saturating_duration_since(registered);
    assert!(after <= Duration::from_secs(2), "first call to the new instance {after:?} after it registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_instance_is_dropped_and_calls_after_its_removal_succeed() {
    let UnderLoad { etcd: _etcd, mut instances, load, _client } =
        under_load(&["echo-1", "echo-2", "echo-3"], Duration::from_millis(2)).await;

    // The whole instance dies at once: app and proxy, no deregistration.
    instances[0].app.sigkill();
    instances[0].sidecar.proc.sigkill();
    let killed = Instant::now();
    // Lease TTL 3 s: removed by ~4 s. Keep calling well past that.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let outcomes = load.stop().await;

    let removed_by = killed + Duration::from_secs(4);
    let late_failures: Vec<_> = failures(&outcomes).into_iter().filter(|o| o.at > removed_by).collect();
    assert!(
        late_failures.is_empty(),
        "{} calls failed after the dead instance's removal; first: {:?}",
        late_failures.len(),
        late_failures.first()
    );
    let late: Vec<_> = outcomes.iter().filter(|o| o.at > removed_by).collect();
    assert!(late.len() > 100, "the load kept running: {} calls", late.len());
    assert!(late.iter().all(|o| o.result.as_deref() != Ok("echo-1")));
    eprintln!("calls failed around the kill (in flight or racing it): {}", failures(&outcomes).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_call() {
    let UnderLoad { etcd, mut instances, load, _client } =
        under_load(&["echo-1", "echo-2", "echo-3"], Duration::from_millis(2)).await;
    let ep = etcd.endpoint();

    for instance in &mut instances {
        instance.stop();
        let restarted = EchoInstance::start(&ep, "echo", &instance.id);
        restarted.sidecar.ready().await;
        *instance = restarted;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outcomes = load.stop().await;
    assert_no_failures(&outcomes);
    assert!(outcomes.len() > 500, "the load kept running: {} calls", outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_20s_under_load_fails_no_call() {
    let UnderLoad { mut etcd, instances: _instances, load, _client } =
        under_load(&["echo-1", "echo-2"], Duration::from_millis(5)).await;

    etcd.kill();
    tokio::time::sleep(Duration::from_secs(20)).await;
    etcd.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.stop().await;

    assert_no_failures(&outcomes);
    let served: std::collections::HashSet<_> = outcomes.iter().filter_map(|o| o.result.as_ref().ok()).collect();
    assert_eq!(served.len(), 2, "both instances kept serving: {served:?}");
}
