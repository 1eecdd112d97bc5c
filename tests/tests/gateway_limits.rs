//! The gateway routes' limits, from outside: token buckets per client address and per route
//! (clients are told apart by their loopback source address), the request size cap, the route's
//! timeout, and slowloris connections cut at the header-read timeout while calls go on.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::gateway::{DevCa, Gateway, echo_behind_gateway, http1};
use mesh_tests::mesh::{EchoInstance, metric_sum};
use mesh_tests::raw::{RawReply, grpc_call_from};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UNARY: &str = "/mesh.demo.v1.Echo/Unary";
const RESOURCE_EXHAUSTED: i32 = 8;
const DEADLINE_EXCEEDED: i32 = 4;

const DOCUMENT: &str = "\
limits: { per_client: { per_second: 1, burst: 4 } }
routes:
  - { name: shared, hosts: [shared.test], grpc_service: mesh.demo.v1.Echo, service: echo,
      limits: { per_client: { per_second: 1000 }, per_route: { per_second: 1, burst: 3 } } }
  - { name: small, hosts: [small.test], grpc_service: mesh.demo.v1.Echo, service: echo,
      limits: { per_client: { per_second: 1000 }, max_request_bytes: 65536, timeout_ms: 400 } }
  - { name: echo, grpc_service: mesh.demo.v1.Echo, service: echo }
";

async fn gateway(extra: &[(&str, &str)]) -> (mesh_tests::etcd::Etcd, EchoInstance, DevCa, Gateway) {
    echo_behind_gateway(DOCUMENT, extra).await
}

fn client(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, last]))
}

async fn call(gateway: &Gateway, from: Option<IpAddr>, host: &str, request: EchoRequest) -> RawReply {
    grpc_call_from(from, &gateway.plain, host, UNARY, &request, &[]).await
}

fn hello() -> EchoRequest {
    EchoRequest { payload: b"hello".to_vec(), ..Default::default() }
}

/// One HTTP/1.1 request from `from`; the response's head and body.
async fn http1_from(gateway: &Gateway, from: Option<IpAddr>, request: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from.unwrap(), 0)).unwrap();
    let mut tcp = socket.connect(gateway.plain.parse().unwrap()).await.unwrap();
    let (head, body) = http1(&mut tcp, request).await;
    format!("{head}\r\n\r\n{body}")
}

#[tokio::test]
async fn a_client_over_its_rate_is_refused_with_a_hint_and_other_clients_are_not() {
    let (_etcd, _echo, _ca, gateway) = gateway(&[]).await;

    // Client .2 has a burst of 4, then a token a second: of 8 calls at once, 4 pass (5 if a
    // second went by).
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let reply = call(&gateway, client(2), "api.test", hello()).await;
        statuses.push(reply.grpc_status());
        if reply.grpc_status() == Some(RESOURCE_EXHAUSTED) {
            refused = Some(reply);
        }
    }
    let passed = statuses.iter().filter(|s| **s == Some(0)).count();
    assert!((4..=5).contains(&passed), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == Some(RESOURCE_EXHAUSTED)).count(), 8 - passed, "{statuses:?}");
    let refused = refused.unwrap();
    let message = refused.grpc_message();
    assert!(message.contains("route \"echo\" is rate limited for client 127.0.0.2 (1/s, burst 4)"), "{message}");
    assert_eq!(refused.header("mesh-error"), Some("rate_limited"));
    let pushback: u64 = refused.header("grpc-retry-pushback-ms").unwrap().parse().unwrap();
    assert!((1..=1000).contains(&pushback), "a token a second: {pushback} ms");

    // Another address has its own bucket, whole.
    for _ in 0..4 {
        assert_eq!(call(&gateway, client(3), "api.test", hello()).await.grpc_status(), Some(0));
    }

    // An HTTP caller gets 429 with Retry-After and the message as the body.
    let response =
        http1_from(&gateway, client(2), "GET /mesh.demo.v1.Echo/Unary HTTP/1.1\r\nHost: api.test\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{response}");
    assert!(response.contains("rate limited for client 127.0.0.2"), "{response}");

    // The route's own bucket is shared by every client: 3 in all.
    let mut shared = Vec::new();
    for last in [4, 5, 6, 7, 8] {
        shared.push(call(&gateway, client(last), "shared.test", hello()).await.grpc_status());
    }
    assert_eq!(shared.iter().filter(|s| **s == Some(0)).count(), 3, "{shared:?}");
    let reply = call(&gateway, client(9), "shared.test", hello()).await;
    assert!(reply.grpc_message().contains("route \"shared\" is rate limited for the route"), "{reply:?}");

    let metrics = gateway.proxy.metrics().await;
    let per_client = metric_sum(&metrics, r#"mesh_gateway_limited_total{limit="per_client",route="echo"}"#);
    assert_eq!(per_client, 8 - passed as u64 + 1, "{metrics}");
    assert_eq!(metric_sum(&metrics, r#"mesh_gateway_limited_total{limit="per_route",route="shared"}"#), 3);
    let errors = metric_sum(&metrics, r#"mesh_proxy_errors_total{direction="outbound",reason="rate_limited"}"#);
    assert_eq!(errors, per_client + 3);
}

#[tokio::test]
async fn bodies_over_the_cap_and_slow_calls_are_cut_at_the_routes_limits() {
    let (_etcd, echo, _ca, gateway) = gateway(&[]).await;

    // Under the cap, and quick: through.
    let small = EchoRequest { payload: vec![7; 1000], ..Default::default() };
    assert_eq!(call(&gateway, client(2), "small.test", small).await.grpc_status(), Some(0));

    // Over it: a gRPC body has no declared length, so it is cut on the way, and the call says why.
    let big = EchoRequest { payload: vec![7; 1 << 20], ..Default::default() };
    let reply = call(&gateway, client(2), "small.test", big.clone()).await;
    assert_eq!(reply.grpc_status(), Some(RESOURCE_EXHAUSTED), "{reply:?}");
    assert!(reply.grpc_message().contains("over route \"small\"'s limit of 65536 bytes"), "{reply:?}");
    assert_eq!(reply.header("mesh-error"), Some("request_too_large"));
    // The default cap (16 MiB) lets the same call through another route.
    assert_eq!(call(&gateway, client(2), "api.test", big).await.grpc_status(), Some(0));

    // A declared length over the cap is refused before the body is read: 413.
    let response = http1_from(
        &gateway,
        client(2),
        "POST /mesh.demo.v1.Echo/Unary HTTP/1.1\r\nHost: small.test\r\nContent-Length: 100000\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("limit of 65536 bytes"), "{response}");

    // The route's timeout is the call's deadline...
    let slow = EchoRequest { delay_ms: 3000, ..Default::default() };
    let started = Instant::now();
    let reply = call(&gateway, client(2), "small.test", slow.clone()).await;
    let took = started.elapsed();
    assert_eq!(reply.grpc_status(), Some(DEADLINE_EXCEEDED), "{reply:?}");
    assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(2000), "{took:?}");
    // ...unless the caller's is sooner.
    let started = Instant::now();
    let reply =
        grpc_call_from(client(2), &gateway.plain, "small.test", UNARY, &slow, &[("grpc-timeout", "100m")]).await;
    assert_eq!(reply.grpc_status(), Some(DEADLINE_EXCEEDED), "{reply:?}");
    assert!(started.elapsed() < Duration::from_millis(350), "{:?}", started.elapsed());

    let metrics = gateway.proxy.metrics().await;
    let cut = metric_sum(&metrics, r#"mesh_gateway_limited_total{limit="max_request_bytes",route="small"}"#);
    assert_eq!(cut, 2, "{metrics}");
    // The oversized gRPC body never made a call at the app (its stream was reset).
    let app = echo.sidecar.metrics().await;
    let oks = metric_sum(
        &app,
        r#"mesh_requests_total{direction="inbound",dst_service="echo",grpc_method="/mesh.demo.v1.Echo/Unary",grpc_status="OK""#,
    );
    assert_eq!(oks, 2, "the small call and the big one on the default cap: {app}");
}

/// Latency percentile (0-100) of `samples`.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

/// `n` calls one after another from `from`; their latencies.
async fn latencies(gateway: &Gateway, from: Option<IpAddr>, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(call(gateway, from, "api.test", hello()).await.grpc_status(), Some(0));
        out.push(started.elapsed());
    }
    out
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_at_the_header_read_timeout() {
    let (_etcd, _echo, _ca, gateway) = gateway(&[("MESH_GATEWAY_HEADER_READ_TIMEOUT", "1s")]).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..8 {
        let addr = gateway.plain.clone();
        silent.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(&addr).await.unwrap();
            let opened = Instant::now();
            // Not a byte sent: the gateway cannot even tell HTTP/1.1 from HTTP/2.
            match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut [0u8; 64])).await {
                Ok(Ok(0) | Err(_)) => opened.elapsed(),
                Ok(Ok(n)) => panic!("{n} bytes to a client that asked nothing"),
                Err(_) => panic!("a silent connection stayed open for 10 s"),
            }
        }));
    }
    for task in silent {
        let held = task.await.unwrap();
        assert!(held >= Duration::from_millis(900) && held < Duration::from_millis(3000), "held open {held:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The gateway still serves.
    assert_eq!(call(&gateway, client(2), "api.test", hello()).await.grpc_status(), Some(0));
    let metrics = gateway.proxy.metrics().await;
    assert!(
        metric_sum(&metrics, r#"mesh_connection_errors_total{direction="gateway",reason="timeout"}"#) >= 8,
        "{metrics}"
    );
}

#[tokio::test]
async fn slowloris_connections_are_closed_at_the_header_read_timeout_while_calls_keep_their_p99() {
    let (_etcd, _echo, _ca, gateway) = gateway(&[("MESH_GATEWAY_HEADER_READ_TIMEOUT", "1s")]).await;
    // The callers come from addresses of their own, each under its burst (120 calls at 1/s
    // would not be): one address per call.
    let mut before = Vec::new();
    for last in 10..130 {
        before.extend(latencies(&gateway, client(last), 1).await);
    }

    // 64 connections trickle a request's headers, a byte every 100 ms, for up to 10 s.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..64 {
        let addr = gateway.plain.clone();
        slow.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(&addr).await.unwrap();
            let opened = Instant::now();
            let request = b"GET /mesh.demo.v1.Echo/Unary HTTP/1.1\r\nHost: api.test\r\nX-Slow: ";
            let mut buf = [0u8; 256];
            for byte in request.iter().chain(std::iter::repeat(&b'a')).take(100) {
                if tcp.write_all(&[*byte]).await.is_err() {
                    return opened.elapsed();
                }
                // A closed connection reads as its end (or the 408 hyper may send first).
                if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
                    match read {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        Ok(_) => {}
                    }
                }
            }
            panic!("a slowloris connection stayed open for 10 s");
        }));
    }
    let mut during = Vec::new();
    for last in 130..250 {
        during.extend(latencies(&gateway, client(last), 1).await);
    }
    for task in slow {
        let held = task.await.unwrap();
        assert!(held >= Duration::from_millis(900) && held < Duration::from_millis(3000), "held open {held:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let (p99_before, p99_during) = (percentile(&mut before, 99), percentile(&mut during, 99));
    eprintln!("p99 before {p99_before:?}, with 64 slowloris connections {p99_during:?}");
    assert!(p99_during < p99_before * 3 + Duration::from_millis(50), "{p99_before:?} -> {p99_during:?}");
    let metrics = gateway.proxy.metrics().await;
    assert!(
        metric_sum(&metrics, r#"mesh_connection_errors_total{direction="gateway",reason="timeout"}"#) >= 64,
        "{metrics}"
    );
}
