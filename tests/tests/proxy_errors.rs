//! Errors the proxy makes itself: real gRPC statuses with a stable reason a caller can act on.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::client_sidecar;
use mesh_tests::raw;
use tonic::Code;

#[tokio::test]
async fn unknown_service_is_unavailable_naming_it_within_the_fail_fast_timeout() {
    let etcd = Etcd::start().await;
    let (_app, client) = client_sidecar(&etcd.endpoint()).await;
    let mut echo = client.echo_client("nosuch").await;

    let started = Instant::now();
    let status = echo.unary(EchoRequest::default()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("\"nosuch\"") && status.message().contains("no endpoints"), "{status:?}");
    assert_eq!(status.metadata().get("mesh-error").unwrap(), "no_endpoints");
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_millis(4000),
        "failed after {took:?}, fail-fast is 3 s"
    );

    let metrics = client.metrics().await;
    assert!(metrics.contains(r#"mesh_proxy_errors_total{direction="outbound",reason="no_endpoints"} 1"#), "{metrics}");
}

#[tokio::test]
async fn an_authority_that_names_no_service_is_refused_at_once() {
    let etcd = Etcd::start().await;
    let (_app, client) = client_sidecar(&etcd.endpoint()).await;
    let started = Instant::now();
    let reply =
        raw::grpc_call(&client.outbound, "Not_A_Service:80", "/mesh.demo.v1.Echo/Unary", &EchoRequest::default(), &[])
            .await;
    assert_eq!(reply.grpc_status(), Some(Code::InvalidArgument as i32), "{reply:?}");
    assert!(reply.grpc_message().contains("does not name a service"), "{reply:?}");
    assert_eq!(reply.header("mesh-error"), Some("bad_authority"));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_short_grpc_timeout_bounds_the_wait_for_endpoints() {
    let etcd = Etcd::start().await;
    let (_app, client) = client_sidecar(&etcd.endpoint()).await;
    let started = Instant::now();
    let reply = raw::grpc_call(
        &client.outbound,
        "nosuch",
        "/mesh.demo.v1.Echo/Unary",
        &EchoRequest::default(),
        &[("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(Code::DeadlineExceeded as i32), "{reply:?}");
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
}
