//! gRPC fidelity through two proxies (client sidecar -> server sidecar -> app): every call
//! shape, large messages, trailers-only errors, metadata both ways, cancellation and deadlines.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_proto::demo::v1::{EchoRequest, StatsRequest};
use mesh_tests::eventually;
use mesh_tests::mesh::EchoMesh;
use mesh_tests::raw;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Mesh {
    mesh: EchoMesh,
    echo: EchoClient<Channel>,
}

async fn mesh() -> Mesh {
    let mesh = EchoMesh::start().await;
    let echo = mesh.client.echo_client("echo").await;
    Mesh { mesh, echo }
}

fn req(payload: &[u8]) -> EchoRequest {
    EchoRequest { payload: payload.to_vec(), ..Default::default() }
}

#[tokio::test]
async fn every_call_shape_crosses_the_mesh() {
    let mut m = mesh().await;

    let reply = m.echo.unary(req(b"ping")).await.unwrap().into_inner();
    assert_eq!((reply.payload.as_slice(), reply.instance.as_str()), (&b"ping"[..], "echo-1"));

    let stream = m.echo.server_stream(EchoRequest { count: 1000, ..req(b"s") }).await.unwrap().into_inner();
    let replies: Vec<_> = stream.collect::<Result<Vec<_>, _>>().await.unwrap();
    assert_eq!(replies.len(), 1000);
    assert!(replies.iter().enumerate().all(|(i, r)| r.seq == i as u64), "server-stream keeps order");

    let outgoing = tokio_stream::iter((0..100).map(|_| req(&[7; 1000])));
    let reply = m.echo.client_stream(outgoing).await.unwrap().into_inner();
    assert_eq!((reply.messages, reply.bytes), (100, 100_000));

    let outgoing = tokio_stream::iter((0..50u8).map(|i| req(&[i])));
    let replies: Vec<_> =
        m.echo.bidi(outgoing).await.unwrap().into_inner().collect::<Result<Vec<_>, _>>().await.unwrap();
    assert_eq!(replies.len(), 50);
    assert!(replies.iter().enumerate().all(|(i, r)| r.payload == [i as u8]), "bidi echoes each message in order");
}

#[tokio::test]
async fn large_messages_stream_through() {
    let mut m = mesh().await;
    let big = vec![0xAB; 8 << 20];
    let reply = m.echo.unary(req(&big)).await.unwrap().into_inner();
    assert_eq!(reply.payload.len(), big.len());
    assert!(reply.payload == big);
    let reply = m.echo.unary(EchoRequest { reply_size: 8 << 20, ..req(b"") }).await.unwrap().into_inner();
    assert_eq!(reply.payload.len(), 8 << 20);
}

#[tokio::test]
async fn errors_and_metadata_are_carried_both_ways() {
    let mut m = mesh().await;

    // A trailers-only error with a custom status and message.
    let failing =
        EchoRequest { fail_code: Code::FailedPrecondition as i32, fail_message: "custom: ü ok".into(), ..req(b"") };
    let status = m.echo.unary(failing.clone()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "custom: ü ok"));
    let status = m.echo.server_stream(failing).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Custom metadata reaches the server, and the server's comes back as headers and trailers.
    let mut request = Request::new(req(b"md"));
    request.metadata_mut().insert("x-echo-color", "blue".parse().unwrap());
    request.metadata_mut().insert("x-plain", "kept".parse().unwrap());
    request.set_timeout(Duration::from_secs(5));
    let response = m.echo.unary(request).await.unwrap();
    assert_eq!(response.metadata().get("x-echo-color").unwrap(), "blue");
    let seen = &response.get_ref().metadata;
    assert_eq!(seen.get("x-plain").map(String::as_str), Some("kept"));
    assert!(seen.get("grpc-timeout").is_some_and(|t| !t.is_empty()), "grpc-timeout reaches the server: {seen:?}");

    // A stream that fails after two messages: its status and metadata arrive in the trailers.
    let failing = EchoRequest { fail_code: Code::Aborted as i32, fail_message: "third one fails".into(), ..req(b"") };
    let mut request = Request::new(tokio_stream::iter([req(b"1"), req(b"2"), failing]));
    request.metadata_mut().insert("x-echo-trace", "t1".parse().unwrap());
    let mut stream = m.echo.bidi(request).await.unwrap().into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().payload, b"1");
    assert_eq!(stream.next().await.unwrap().unwrap().payload, b"2");
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Aborted, "third one fails"));
    assert_eq!(status.metadata().get("x-echo-trace").unwrap(), "t1", "trailer metadata crosses the mesh");
}

#[tokio::test]
async fn a_cancelled_call_is_cancelled_at_the_server() {
    let mut m = mesh().await;
    let before = m.echo.stats(StatsRequest {}).await.unwrap().into_inner().cancelled;

    // A slow server stream, dropped by the client after the first message.
    let mut stream =
        m.echo.server_stream(EchoRequest { count: 100, delay_ms: 50, ..req(b"") }).await.unwrap().into_inner();
    assert!(stream.next().await.is_some());
    drop(stream);
    // A slow unary call abandoned by the client.
    let mut echo = m.echo.clone();
    let call = tokio::spawn(async move { echo.unary(EchoRequest { delay_ms: 5000, ..req(b"") }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();

    eventually("both cancellations to reach the server", Duration::from_secs(5), || {
        let mut echo = m.echo.clone();
        async move {
            let cancelled = echo.stats(StatsRequest {}).await.ok()?.into_inner().cancelled;
            (cancelled >= before + 2).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn the_proxy_enforces_the_callers_deadline() {
    let m = mesh().await;
    let mut echo = m.echo.clone();
    let before = echo.stats(StatsRequest {}).await.unwrap().into_inner().cancelled;

    // A raw HTTP/2 caller that does not enforce its own deadline: only the proxy can end this.
    let slow = EchoRequest { delay_ms: 3000, ..req(b"") };
    let started = std::time::Instant::now();
    let reply =
        raw::grpc_call(&m.mesh.client.outbound, "echo", "/mesh.demo.v1.Echo/Unary", &slow, &[("grpc-timeout", "200m")])
            .await;
    assert_eq!(reply.grpc_status(), Some(Code::DeadlineExceeded as i32), "{reply:?}");
    assert!(reply.grpc_message().starts_with("mesh: deadline exceeded"), "{reply:?}");
    assert_eq!(reply.header("mesh-error"), Some("deadline_exceeded"));
    assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
    eventually("the server to see the expired call cancelled", Duration::from_secs(5), || {
        let mut echo = echo.clone();
        async move { (echo.stats(StatsRequest {}).await.ok()?.into_inner().cancelled > before).then_some(()) }
    })
    .await;
}
