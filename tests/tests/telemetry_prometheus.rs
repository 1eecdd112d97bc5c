//! Golden signals end to end: traffic through two meshed services, exported by both proxies over
//! OTLP to the collector, scraped by a real Prometheus, and asked for with the queries a
//! dashboard uses: the exact request count, the success rate, latency quantiles.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::eventually;
use mesh_tests::mesh::metric_sum;
use mesh_tests::telemetry::ExportingMesh;

const OK_CALLS: usize = 100;
const FAILED_CALLS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_exact_traffic_its_success_rate_and_latency() {
    let mesh = ExportingMesh::start(true).await;
    let prometheus = mesh.prometheus();
    let (_client_app, client) = mesh.client().await;

    let mut echo = client.echo_client("echo").await;
    for _ in 0..OK_CALLS {
        echo.unary(EchoRequest { payload: vec![1; 64], delay_ms: 60, ..Default::default() }).await.unwrap();
    }
    for _ in 0..FAILED_CALLS {
        let failed = echo.unary(EchoRequest { fail_code: 5, ..Default::default() }).await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::NotFound);
    }

    // The exact count, once the last export has been scraped.
    let outbound =
        r#"mesh_requests_total{direction="outbound",service="client",instance="client-1",dst_service="echo"}"#;
    eventually("Prometheus to count every call", Duration::from_secs(30), || async {
        let n = prometheus.value(&format!("sum({outbound})")).await?;
        (n == (OK_CALLS + FAILED_CALLS) as f64).then_some(())
    })
    .await;
    let inbound = r#"mesh_requests_total{direction="inbound",service="echo",instance="echo-1",src_service="client"}"#;
    eventually("the callee's proxy to agree", Duration::from_secs(30), || async {
        let n = prometheus.value(&format!("sum({inbound})")).await?;
        (n == (OK_CALLS + FAILED_CALLS) as f64).then_some(())
    })
    .await;
    let by_status = prometheus.query(&format!("sum by (grpc_status, grpc_method) ({outbound})")).await.unwrap();
    assert_eq!(by_status.len(), 2, "{by_status:?}");
    for (labels, value) in &by_status {
        assert_eq!(labels["grpc_method"], "/mesh.demo.v1.Echo/Unary");
        match labels["grpc_status"].as_str().unwrap() {
            "OK" => assert_eq!(*value, OK_CALLS as f64),
            "NOT_FOUND" => assert_eq!(*value, FAILED_CALLS as f64),
            other => panic!("unexpected status {other}"),
        }
    }

    let ok = r#"mesh_requests_total{direction="outbound",service="client",dst_service="echo",grpc_status="OK"}"#;
    let success = prometheus.value(&format!("sum({ok}) / sum({outbound})")).await.unwrap();
    assert_eq!(success, OK_CALLS as f64 / (OK_CALLS + FAILED_CALLS) as f64);

    // Latency: each OK call waited 60 ms in the app, so its median sits in the 50-100 ms bucket
    // (the app's wait is the floor; two debug-built proxies add a few ms, far from the ceiling),
    // through the rate of the last minute as a dashboard asks.
    let buckets = r#"mesh_request_duration_seconds_bucket{direction="outbound",service="client",dst_service="echo",grpc_status="OK"}"#;
    let p50 = prometheus.value(&format!("histogram_quantile(0.5, sum by (le) (rate({buckets}[1m])))")).await.unwrap();
    let p99 = prometheus.value(&format!("histogram_quantile(0.99, sum by (le) (rate({buckets}[1m])))")).await.unwrap();
    assert!((0.05..=0.1).contains(&p50), "p50 {p50}");
    assert!((p50..=0.25).contains(&p99), "p99 {p99}");

    // The proxies' own health and the collector's arrive too.
    assert!(prometheus.value(r#"sum(process_resident_memory_bytes{service="echo"})"#).await.unwrap() > 0.0);
    assert!(prometheus.value(r#"sum(mesh_runtime_workers{service="echo"})"#).await.is_some());
    assert_eq!(prometheus.value(r#"mesh_endpoints{service="client",dst_service="echo"}"#).await, Some(1.0));
    assert!(
        prometheus
            .value(r#"sum(mesh_balancer_picks_total{service="client",dst_service="echo",endpoint="echo-1"})"#)
            .await
            .unwrap()
            >= (OK_CALLS + FAILED_CALLS) as f64
    );
    assert!(prometheus.value(r#"mesh_collector_received_total{signal="metric_points"}"#).await.unwrap() > 0.0);
    assert!(
        prometheus.value(r#"sum(mesh_request_bytes_total{service="client",dst_service="echo"})"#).await.unwrap() > 0.0
    );

    // And the proxy's own /metrics still serves the same names.
    let local = client.metrics().await;
    assert_eq!(
        metric_sum(&local, r#"mesh_requests_total{direction="outbound",dst_service="echo""#) as usize,
        OK_CALLS + FAILED_CALLS
    );
}
