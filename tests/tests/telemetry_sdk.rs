//! Any OpenTelemetry SDK, not only our proxies: the Python SDK (from PyPI) exports spans and
//! metrics with its own OTLP/gRPC exporters; the spans appear in the Zipkin API and the metrics,
//! named the Prometheus way, in a real Prometheus.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use mesh_tests::eventually;
use mesh_tests::telemetry::{Collector, Prometheus};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_exports_spans_and_metrics_to_the_collector() {
    let collector = Collector::start(&[]).await;
    let prometheus = Prometheus::start(&collector.metrics).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/otel_sdk_export.py");
    let otlp = collector.otlp.clone();
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args([script, &otlp]).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the Python SDK failed (is opentelemetry-exporter-otlp-proto-grpc installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    let trace_id = sent["trace_id"].as_str().unwrap();

    let (status, spans) = collector.api(&format!("/api/v2/trace/{trace_id}")).await;
    assert_eq!(status, 200);
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = spans.iter().find(|s| s["id"] == sent["spans"]["server"]).unwrap();
    let client = spans.iter().find(|s| s["id"] == sent["spans"]["client"]).unwrap();
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(server["name"], "GET /checkout");
    assert_eq!(server["localEndpoint"]["serviceName"], "py-shop");
    assert_eq!(server["tags"]["http.route"], "/checkout");
    assert_eq!(client["parentId"], server["id"]);
    assert_eq!(client["remoteEndpoint"]["serviceName"], "payments");
    assert_eq!(client["tags"]["error"], "card declined");
    let (_, found) = collector.api("/api/v2/traces?serviceName=py-shop&annotationQuery=error").await;
    assert_eq!(found.as_array().unwrap().len(), 1);

    let orders = r#"py_orders_total{service="py-shop",instance="py-1",route="/checkout"}"#;
    eventually("the SDK's counter in Prometheus", Duration::from_secs(30), || async {
        (prometheus.value(orders).await? == 7.0).then_some(())
    })
    .await;
    let count = prometheus.value(r#"py_latency_milliseconds_count{service="py-shop"}"#).await.unwrap();
    assert_eq!(count, 3.0);
    let sum = prometheus.value(r#"py_latency_milliseconds_sum{service="py-shop"}"#).await.unwrap();
    assert_eq!(sum, 333.0);
    let median = prometheus
        .value(r#"histogram_quantile(0.5, sum by (le) (py_latency_milliseconds_bucket{service="py-shop"}))"#)
        .await
        .unwrap();
    assert!((10.0..=50.0).contains(&median), "median {median} ms: the middle value was 30");
    // The graph edge the SDK's client span names.
    let edge = prometheus
        .value(r#"mesh_service_graph_request_failed_total{client="py-shop",server="payments"}"#)
        .await
        .unwrap();
    assert_eq!(edge, 1.0);
}
