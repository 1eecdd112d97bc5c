//! Rate limits with real processes: a per-caller limit holds one caller to its rate and leaves
//! another alone; a service-wide limit split over three instances still admits the service's rate
//! after one of them stops. Load is open-loop (paced, independent of answers), as real callers'
//! is.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoInstance, apply_policy, client_sidecar_as, echo_instances, metric_sum, policy_in_force};
use tonic::transport::Channel;

/// The two tests load the machine: one at a time, so each measures its own mesh.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What became of one call: when it was sent, and its status code.
type Outcome = (Instant, tonic::Code);

/// Calls at `rate` per second for `run`, each sent on time whatever the others do.
async fn paced(echo: &EchoClient<Channel>, rate: u32, run: Duration) -> Vec<Outcome> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut calls = Vec::new();
    while started.elapsed() < run {
        tick.tick().await;
        let mut echo = echo.clone();
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut request = tonic::Request::new(EchoRequest::default());
            request.set_timeout(Duration::from_secs(5));
            match echo.unary(request).await {
                Ok(_) => (sent, tonic::Code::Ok),
                Err(status) => {
                    if status.code() == tonic::Code::ResourceExhausted {
                        assert!(status.metadata().get("grpc-retry-pushback-ms").is_some(), "{status:?}");
                    }
                    (sent, status.code())
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    outcomes
}

/// Admitted calls per second among those sent in `[from, until)` after `start`, and the codes
/// other than OK and RESOURCE_EXHAUSTED seen.
fn admitted(outcomes: &[Outcome], start: Instant, from: Duration, until: Duration) -> (f64, Vec<tonic::Code>) {
    let window: Vec<_> = outcomes.iter().filter(|(sent, _)| *sent >= start + from && *sent < start + until).collect();
    let ok = window.iter().filter(|(_, code)| *code == tonic::Code::Ok).count();
    let other =
        window.iter().map(|(_, c)| *c).filter(|c| !matches!(c, tonic::Code::Ok | tonic::Code::ResourceExhausted));
    (ok as f64 / (until - from).as_secs_f64(), other.collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_caller_limit_holds_one_caller_to_its_rate_and_leaves_another_alone() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let orders = echo_instances(&etcd.endpoint(), "orders", 1).await;
    let (_a, alpha) = client_sidecar_as(&etcd.endpoint(), "alpha", &[]).await;
    let (_b, beta) = client_sidecar_as(&etcd.endpoint(), "beta", &[]).await;
    apply_policy(
        &etcd,
        "orders",
        r#"{"version":"v1","rate_limits":[{"name":"per-caller","per":"caller","per_second":100}]}"#,
    );
    policy_in_force(&etcd, "orders", &[&orders[0].sidecar]).await;
    let (a, b) = (alpha.echo_client("orders").await, beta.echo_client("orders").await);

    let start = Instant::now();
    let run = Duration::from_secs(5);
    let (greedy, modest) = tokio::join!(paced(&a, 300, run), paced(&b, 50, run));
    // From 1 s on: the first second also spends the bucket's burst (100 calls).
    let (rate, other) = admitted(&greedy, start, Duration::from_secs(1), run);
    let (modest_rate, modest_other) = admitted(&modest, start, Duration::ZERO, run);
    let refused_b = modest.iter().filter(|(_, c)| *c != tonic::Code::Ok).count();
    println!("alpha at 300/s: {rate:.1}/s admitted; beta at 50/s: {modest_rate:.1}/s admitted, {refused_b} refused");
    assert!(other.is_empty() && modest_other.is_empty(), "{other:?} {modest_other:?}");
    assert!((90.0..=110.0).contains(&rate), "alpha got {rate:.1}/s through, want 100 +- 10 %");
    assert_eq!(refused_b, 0, "beta is not limited by alpha's bucket");
    let metrics = orders[0].sidecar.metrics().await;
    assert!(metric_sum(&metrics, "mesh_rate_limited_total{limit=\"per-caller\"}") > 500, "counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_wide_limit_is_re_split_when_an_instance_leaves() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut orders: Vec<EchoInstance> = echo_instances(&etcd.endpoint(), "orders", 3).await;
    let (_a, alpha) = client_sidecar_as(&etcd.endpoint(), "alpha", &[]).await;
    apply_policy(
        &etcd,
        "orders",
        r#"{"version":"v1","rate_limits":[{"name":"total","per":"service","per_second":300}]}"#,
    );
    let sidecars: Vec<_> = orders.iter().map(|o| &o.sidecar).collect();
    policy_in_force(&etcd, "orders", &sidecars).await;
    let a = alpha.echo_client("orders").await;

    let start = Instant::now();
    let run = Duration::from_secs(9);
    let load = tokio::spawn({
        let a = a.clone();
        async move { paced(&a, 600, run).await }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stopped = Instant::now();
    orders.pop().unwrap().stop();
    let outcomes = load.await.unwrap();
    let (three, other) = admitted(&outcomes, start, Duration::from_secs(2), Duration::from_secs(4));
    let since = stopped - start;
    let (two, other_after) = admitted(&outcomes, start, since + Duration::from_secs(2), run);
    println!("600/s offered: {three:.1}/s admitted by 3 instances, {two:.1}/s by 2 from 2 s after one stopped");
    assert!(other.is_empty() && other_after.is_empty(), "{other:?} {other_after:?}");
    assert!((270.0..=330.0).contains(&three), "{three:.1}/s with 3 instances, want 300 +- 10 %");
    assert!((270.0..=330.0).contains(&two), "{two:.1}/s with 2 instances, want 300 +- 10 %");
}
