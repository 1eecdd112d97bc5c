//! Untrusted bytes and limits: malformed HTTP/2 closes that connection with the right error and
//! touches nothing else; the connection cap refuses and counts; large streams do not grow memory.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoMesh, Sidecar, metric_sum};
use mesh_tests::process::Proc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends `bytes` on a new connection and reads until the proxy closes it (or 5 s pass).
async fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the proxy kept a malformed connection open");
    got
}

/// The GOAWAY error code in `frames`, if the proxy sent a GOAWAY.
fn goaway_code(frames: &[u8]) -> Option<u32> {
    let mut rest = frames;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let kind = rest[3];
        let payload = rest.get(9..9 + len)?;
        if kind == 0x7 && payload.len() >= 8 {
            return Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
        }
        rest = &rest[9 + len..];
    }
    None
}

#[tokio::test]
async fn malformed_http2_closes_only_that_connection() {
    let EchoMesh { server, client, .. } = &EchoMesh::start().await;
    let mut echo = client.echo_client("echo").await;
    echo.unary(EchoRequest::default()).await.unwrap();

    // Not HTTP/2 at all: an HTTP/1.1 request where the preface belongs.
    send_raw(&client.outbound, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Garbage after a valid preface: a frame header announcing an unknown, oversized frame.
    let mut garbage = PREFACE.to_vec();
    garbage.extend_from_slice(&[0xff; 64]);
    let got = send_raw(&client.outbound, &garbage).await;
    assert!(
        matches!(goaway_code(&got), Some(0x1 | 0x6)),
        "expected GOAWAY PROTOCOL_ERROR or FRAME_SIZE_ERROR: {got:?}"
    );
    // Random bytes on the inbound listener too.
    send_raw(&server.sidecar.inbound, &[0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x42].repeat(100)).await;

    // Oversized headers: 64 KiB of metadata against a 16 KiB limit.
    let mut request = tonic::Request::new(EchoRequest::default());
    request.metadata_mut().insert("x-huge", "a".repeat(64 * 1024).parse().unwrap());
    let mut fresh = client.echo_client("echo").await;
    let status = fresh.unary(request).await.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);

    // The established connection and the proxies are unaffected.
    for _ in 0..10 {
        echo.unary(EchoRequest { payload: b"still fine".to_vec(), ..Default::default() }).await.unwrap();
    }
    let metrics = client.metrics().await;
    let errors = metric_sum(&metrics, r#"mesh_connection_errors_total{direction="outbound""#);
    assert!(errors >= 2, "malformed connections are counted:\n{metrics}");
}

#[tokio::test]
async fn the_connection_cap_refuses_and_counts() {
    let etcd = Etcd::start().await;
    let app_addr = format!("127.0.0.1:{}", mesh_tests::free_port());
    let _app = Proc::start("mesh-demo", &["echo", "--listen", &app_addr, "--instance-id", "capped"], &[]);
    let proxy = Sidecar::start(&etcd.endpoint(), "capped", "capped-1", &app_addr, &[("MESH_MAX_CONNECTIONS", "2")]);
    proxy.ready().await;

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(&proxy.outbound).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(&proxy.outbound).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap is closed at once");
    let metrics = proxy.metrics().await;
    assert!(metrics.contains(r#"mesh_limit_hits_total{limit="max_connections"} 1"#), "{metrics}");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_64_mib_stream_does_not_grow_proxy_memory_by_64_mib() {
    let EchoMesh { server, client, .. } = &EchoMesh::start().await;
    let mut echo = client.echo_client("echo").await;
    echo.unary(EchoRequest::default()).await.unwrap();
    let before = [peak_rss_kib(client.proc.pid()), peak_rss_kib(server.sidecar.proc.pid())];

    // 64 messages of 1 MiB, generated as they are sent, streamed client -> server.
    let outgoing = tokio_stream::iter((0..64).map(|_| EchoRequest { payload: vec![9; 1 << 20], ..Default::default() }));
    let reply = echo.client_stream(outgoing).await.unwrap().into_inner();
    assert_eq!(reply.bytes, 64 << 20);
    // And 64 MiB back, server -> client.
    use tokio_stream::StreamExt;
    let mut stream = echo
        .server_stream(EchoRequest { count: 64, reply_size: 1 << 20, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(reply) = stream.next().await {
        received += reply.unwrap().payload.len();
    }
    assert_eq!(received, 64 << 20);

    let after = [peak_rss_kib(client.proc.pid()), peak_rss_kib(server.sidecar.proc.pid())];
    for (b, a) in before.iter().zip(&after) {
        let grew_mib = (a.saturating_sub(*b)) / 1024;
        assert!(
            grew_mib < 16,
            "a proxy's peak RSS grew by {grew_mib} MiB moving 128 MiB (before {b} KiB, after {a} KiB)"
        );
    }
    eprintln!("peak RSS before {before:?} KiB, after {after:?} KiB");
}
