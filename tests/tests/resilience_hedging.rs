//! Hedging, with real processes: every replica of three takes 500 ms more on 3 % of its calls, at
//! random (a GC pause, a cold cache): a tail the balancer cannot steer around, since no replica
//! is slower than the others for long. (One replica slow on 10 % of its calls, the other case, the
//! balancer handles alone: peak-EWMA keeps it out of the way after each slow answer, and the p99
//! stayed at 10 ms without hedging when measured.) Without hedging the caller's p99 is the tail;
//! with `hedge: {}` in the method's policy (a second attempt to another replica once the first is
//! later than the service's p95) it drops at least three times, the extra load stays within the
//! retry budget, and each losing attempt is cancelled at its server (RST_STREAM reaches the app,
//! which counts the cancellation).

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoInstance, Sidecar, app_counts, apply_policy, client_sidecar, metric_sum};
use tonic::transport::Channel;

const POLICY_PLAIN: &str = r#"{"version":"v1","methods":[{"match":"/mesh.demo.v1.Echo/Unary","idempotent":true}]}"#;
const POLICY_HEDGED: &str =
    r#"{"version":"v1","methods":[{"match":"/mesh.demo.v1.Echo/Unary","idempotent":true,"hedge":{}}]}"#;

/// Calls made in `run` by 4 closed-loop callers, and their latencies.
async fn load(echo: &EchoClient<Channel>, run: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut echo = echo.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < run {
                    let began = Instant::now();
                    let mut request = tonic::Request::new(EchoRequest::default());
                    request.set_timeout(Duration::from_secs(5));
                    echo.unary(request).await.unwrap();
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await.unwrap());
    }
    all
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// Calls the apps saw cancelled before they answered.
async fn cancelled(instances: &[EchoInstance]) -> u64 {
    app_counts(instances).await.1
}

async fn counter(client: &Sidecar, series: &str) -> u64 {
    metric_sum(&client.metrics().await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_a_slow_replicas_tail_within_the_budget() {
    let etcd = Etcd::start().await;
    let tail = ["--slow-percent", "3", "--slow-ms", "500"];
    let instances: Vec<EchoInstance> = (1..=3)
        .map(|i| EchoInstance::start_app_with(&etcd.endpoint(), "tail", &format!("tail-{i}"), &tail, &[]))
        .collect();
    for instance in &instances {
        instance.sidecar.ready().await;
    }
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let echo = client.echo_client("tail").await;

    apply_policy(&etcd, "tail", POLICY_PLAIN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plain = load(&echo, Duration::from_secs(6)).await;
    let plain_p99 = p99(plain.clone());

    apply_policy(&etcd, "tail", POLICY_HEDGED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hedges_before = counter(&client, "mesh_hedges_total{").await;
    let cancelled_before = cancelled(&instances).await;
    let started = Instant::now();
    let hedged = load(&echo, Duration::from_secs(6)).await;
    let seconds = started.elapsed().as_secs_f64();
    let hedged_p99 = p99(hedged.clone());
    let hedges = counter(&client, "mesh_hedges_total{").await - hedges_before;
    let won = counter(&client, "mesh_hedges_won_total{").await;
    // The cancellations reach the app as the RST_STREAM does; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = cancelled(&instances).await - cancelled_before;
    eprintln!(
        "without hedging: {} calls, p99 {plain_p99:?}; with: {} calls, p99 {hedged_p99:?}, {hedges} hedges, {won} won, {cancelled} cancelled at the apps",
        plain.len(),
        hedged.len()
    );

    assert!(plain_p99 >= Duration::from_millis(400), "the slow tail shows without hedging: {plain_p99:?}");
    assert!(hedged_p99 * 3 <= plain_p99, "hedging cuts the p99 at least 3x: {plain_p99:?} -> {hedged_p99:?}");
    // Within the budget: 20 % of the calls plus 10/s (and one second's reserve).
    let allowed = 0.2 * hedged.len() as f64 + 10.0 * (seconds + 1.0);
    assert!(hedges > 0 && (hedges as f64) <= allowed, "{hedges} hedges, {allowed:.0} allowed");
    assert!(won > 0, "some hedges answered first");
    assert!(cancelled > 0, "the losing attempts are cancelled at their server");
}
