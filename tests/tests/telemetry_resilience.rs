//! Telemetry never costs traffic: with the collector dead for 30 s under load, no call fails,
//! the proxy's memory stays flat, drops are counted, and export resumes when the collector
//! returns. And a proxy restart never makes a counter in Prometheus go backwards.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::eventually;
use mesh_tests::load::{Load, assert_no_failures};
use mesh_tests::mesh::metric_sum;
use mesh_tests::telemetry::{ExportingMesh, rss_kib};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_no_calls_and_export_resumes() {
    let mut mesh = ExportingMesh::start(false).await;
    let (_client_app, client) = mesh.client().await;
    let collector = &mut mesh.collector;

    let load = Load::start(client.echo_client("echo").await, 4, Duration::from_millis(2));
    eventually("spans to reach the collector", Duration::from_secs(15), || async {
        let (_, services) = collector.api("/api/v2/services").await;
        services.as_array()?.iter().any(|s| s == "echo").then_some(())
    })
    .await;

    collector.kill();
    let pid = client.proc.pid();
    let at_kill = rss_kib(pid);
    let mut peak = at_kill;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss_kib(pid));
    }
    let during = client.metrics().await;
    collector.restart().await;

    eventually("spans to resume after the outage", Duration::from_secs(20), || async {
        let (_, services) = collector.api("/api/v2/services").await;
        services.as_array()?.iter().any(|s| s == "client").then_some(())
    })
    .await;
    eventually("metrics to resume after the outage", Duration::from_secs(20), || async {
        let text = collector.scrape().await;
        (metric_sum(&text, r#"mesh_requests_total{direction="outbound""#) > 0).then_some(())
    })
    .await;
    let outcomes = load.stop().await;
    assert!(outcomes.len() > 1000, "only {} calls in 30+ s", outcomes.len());
    assert_no_failures(&outcomes);

    let dropped = metric_sum(&during, r#"mesh_telemetry_dropped_total{reason="export_failed",signal="spans"}"#)
        + metric_sum(&during, r#"mesh_telemetry_dropped_total{reason="queue_full",signal="spans"}"#);
    assert!(dropped > 0, "spans dropped while the collector was down are counted:\n{during}");
    assert!(metric_sum(&during, r#"mesh_telemetry_dropped_total{reason="export_failed",signal="metrics"}"#) > 0);
    eprintln!(
        "proxy RSS at the collector's death {at_kill} KiB, peak during the outage {peak} KiB; {dropped} spans dropped"
    );
    assert!(peak < at_kill + 16 * 1024, "proxy memory grew from {at_kill} to {peak} KiB while the collector was down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restart_never_makes_a_counter_go_backwards() {
    let mesh = ExportingMesh::start(true).await;
    let prometheus = mesh.prometheus();
    let ok = r#"mesh_requests_total{direction="outbound",service="client",instance="client-1",dst_service="echo",grpc_status="OK"}"#;

    let (client_app, mut client) = mesh.client().await;
    let mut echo = client.echo_client("echo").await;
    for _ in 0..100 {
        echo.unary(EchoRequest::default()).await.unwrap();
    }
    eventually("100 calls in Prometheus", Duration::from_secs(30), || async {
        (prometheus.value(ok).await? == 100.0).then_some(())
    })
    .await;

    // The same instance (same id) restarts: its own counters start again from zero.
    drop(echo);
    assert!(client.proc.terminate().success());
    drop(client_app);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_client_app, client) = mesh.client().await;
    let mut echo = client.echo_client("echo").await;
    for _ in 0..50 {
        echo.unary(EchoRequest::default()).await.unwrap();
    }
    assert_eq!(
        metric_sum(
            &client.metrics().await,
            r#"mesh_requests_total{direction="outbound",dst_service="echo",grpc_method="/mesh.demo.v1.Echo/Unary",grpc_status="OK""#
        ),
        50,
        "the new process counts from zero"
    );
    eventually("150 calls in Prometheus", Duration::from_secs(30), || async {
        (prometheus.value(ok).await? == 150.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let series = prometheus.range(ok, 120).await;
    assert_eq!(series.len(), 1, "one series across the restart: {series:?}");
    let values: Vec<f64> = series[0].1.iter().map(|(_, v)| *v).collect();
    assert!(values.windows(2).all(|w| w[1] >= w[0]), "the counter went backwards: {values:?}");
    assert_eq!(prometheus.value(&format!("resets({ok}[5m])")).await, Some(0.0));
    let increase = prometheus.value(&format!("increase({ok}[5m])")).await.unwrap();
    assert!(increase <= 150.0 * 1.5, "rate() stays sane across the restart: increase {increase}");
}
