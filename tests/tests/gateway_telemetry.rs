//! The gateway's own telemetry, seen from outside: it starts each request's trace (an outside
//! `traceparent` is replaced unless the document trusts it), exports its SERVER span as the root
//! with its CLIENT span below, counts requests by route, host pattern, protocol and outcome, and
//! writes one JSON access log line per request with the trace id the service saw.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_proto::demo::v1::{EchoReply, EchoRequest};
use mesh_tests::ca::as_env;
use mesh_tests::eventually;
use mesh_tests::gateway::{Gateway, echo_behind_gateway};
use mesh_tests::raw::{RawReply, grpc_call};
use mesh_tests::telemetry::{Collector, exporting};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OUTSIDE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UNIMPLEMENTED: i32 = 12;

fn document(trust: bool) -> String {
    format!(
        "access_log: true\ntrust_traceparent: {trust}\nroutes:\n\
         \x20 - {{ name: echo, hosts: [\"*.example.test\"], grpc_service: mesh.demo.v1.Echo, service: echo }}\n"
    )
}

/// A unary call from outside carrying a `traceparent`, and the trace id the app received.
async fn call_with_trace(gateway: &Gateway) -> (RawReply, String) {
    let request = EchoRequest { payload: b"hello".to_vec(), ..Default::default() };
    let traceparent = format!("00-{OUTSIDE_TRACE}-00f067aa0ba902b7-01");
    let extra = [("traceparent", traceparent.as_str()), ("user-agent", "outside-client/1.0")];
    let reply = grpc_call(&gateway.plain, "api.example.test", "/mesh.demo.v1.Echo/Unary", &request, &extra).await;
    assert_eq!(reply.grpc_status(), Some(0), "{reply:?}");
    let echoed = EchoReply::decode(&reply.messages[0][..]).unwrap();
    let seen = echoed.metadata.get("traceparent").cloned().unwrap_or_default();
    (reply, seen.split('-').nth(1).unwrap_or_default().to_string())
}

/// The value of the one series of `name` whose labels include all of `labels`.
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The gateway's access log lines so far.
fn access_log(gateway: &Gateway) -> Vec<Value> {
    let out = gateway.proxy.proc.stdout();
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_starts_the_trace_counts_by_route_and_logs_each_request() {
    let collector = Collector::start(&[]).await;
    let export = exporting(&collector.endpoint(), "1");
    let (_etcd, _echo, _ca, gateway) = echo_behind_gateway(&document(false), &as_env(&export)).await;

    // 1. Untrusted: the outside trace id goes; the app's is the gateway's new trace.
    let (_, trace) = call_with_trace(&gateway).await;
    assert_eq!(trace.len(), 32, "the app saw a traceparent");
    assert_ne!(trace, OUTSIDE_TRACE, "an outside traceparent is not trusted by default");
    let spans = eventually("the gateway's two spans", Duration::from_secs(20), || async {
        let (status, spans) = collector.api(&format!("/api/v2/trace/{trace}")).await;
        let spans = spans.as_array()?.clone();
        let ours = spans.iter().filter(|s| s["localEndpoint"]["serviceName"] == "api-gateway").count();
        (status == 200 && ours == 2).then_some(spans)
    })
    .await;
    let server = spans.iter().find(|s| s["kind"] == "SERVER").unwrap();
    assert!(server["parentId"].is_null(), "the gateway's span is the root: {server}");
    assert_eq!(server["name"], "mesh.demo.v1.Echo/Unary");
    let client = spans.iter().find(|s| s["kind"] == "CLIENT").unwrap();
    assert_eq!(client["parentId"], server["id"], "its call into the mesh is its child");
    assert_eq!(client["remoteEndpoint"]["serviceName"], "echo");

    // 2. Unrouted, and gRPC-Web over HTTP/1.1.
    let unrouted = grpc_call(&gateway.plain, "api.example.test", "/nope.Svc/Call", &EchoRequest::default(), &[]).await;
    assert_eq!(unrouted.grpc_status(), Some(UNIMPLEMENTED));
    let message = EchoRequest { payload: b"web".to_vec(), ..Default::default() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let mut tcp = tokio::net::TcpStream::connect(&gateway.plain).await.unwrap();
    let head = format!(
        "POST /mesh.demo.v1.Echo/Unary HTTP/1.1\r\nHost: web.example.test\r\nContent-Type: application/grpc-web\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        frame.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&frame).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));

    // 3. Counted by route, the route's host pattern (not the name the client sent), protocol
    // and outcome, once each response has ended.
    let metrics = eventually("the gateway's request series", Duration::from_secs(5), || async {
        let metrics = gateway.proxy.metrics().await;
        (series(&metrics, "mesh_gateway_requests_total", &[]) == 3).then_some(metrics)
    })
    .await;
    let ok = [("code", "200"), ("grpc_status", "OK"), ("outcome", "success")];
    let echo = [("route", "echo"), ("host", "*.example.test")];
    let grpc = [&echo[..], &ok, &[("protocol", "grpc")]].concat();
    assert_eq!(series(&metrics, "mesh_gateway_requests_total", &grpc), 1, "{metrics}");
    let web = [&echo[..], &ok, &[("protocol", "grpc_web")]].concat();
    assert_eq!(series(&metrics, "mesh_gateway_requests_total", &web), 1, "gRPC-Web's status from its trailer frame");
    let none =
        [("route", "unrouted"), ("host", "other"), ("grpc_status", "UNIMPLEMENTED"), ("outcome", "client_error")];
    assert_eq!(series(&metrics, "mesh_gateway_requests_total", &none), 1, "{metrics}");
    assert_eq!(series(&metrics, "mesh_gateway_request_duration_seconds_count", &[("route", "echo")]), 2);
    assert!(!metrics.contains("api.example.test"), "client-sent host names are never labels");

    // 4. One JSON line per request, with the trace id the app saw.
    let lines = eventually("three access log lines", Duration::from_secs(5), || async {
        let lines = access_log(&gateway);
        (lines.len() == 3).then_some(lines)
    })
    .await;
    let first = &lines[0];
    assert_eq!(first["trace_id"], trace.as_str(), "{first}");
    assert_eq!((first["route"].as_str(), first["service"].as_str()), (Some("echo"), Some("echo")));
    assert_eq!(
        (first["host"].as_str(), first["path"].as_str()),
        (Some("api.example.test"), Some("/mesh.demo.v1.Echo/Unary"))
    );
    assert_eq!((first["status"].as_u64(), first["grpc_status"].as_str()), (Some(200), Some("OK")));
    assert_eq!(first["user_agent"], "outside-client/1.0");
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{first}");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!((lines[1]["route"].as_str(), lines[1]["mesh_error"].as_str()), (Some("unrouted"), Some("no_route")));
    assert_eq!(lines[2]["protocol"], "grpc_web");

    // 5. Trusted (the document changed while running): the outside trace goes on.
    std::fs::write(&gateway.document, document(true)).unwrap();
    eventually("the outside trace to be continued", Duration::from_secs(10), || async {
        (call_with_trace(&gateway).await.1 == OUTSIDE_TRACE).then_some(())
    })
    .await;
}
