//! The ingress gateway's edge: outside clients over TLS (chosen by SNI, reloaded from files) and
//! plaintext, HTTP/2 and HTTP/1.1, routed by host and path to a meshed service.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::process::Command;
use std::time::Duration;

use mesh_tests::eventually;
use mesh_tests::gateway::{DevCa, Gateway, connect, http1, served_names};
use mesh_tests::mesh::{EchoInstance, metric_sum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn document(ca: &DevCa, routes: &str) -> String {
    format!("certificates:\n{}{}routes:\n{routes}", ca.entry("api"), ca.entry("other"))
}

const ECHO_ROUTE: &str = "  - { name: echo, grpc_service: mesh.demo.v1.Echo, service: echo }\n";

#[tokio::test]
async fn grpcio_over_tls_calls_a_meshed_service_through_the_gateway() {
    let etcd = mesh_tests::etcd::Etcd::start().await;
    let echo = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    echo.sidecar.ready().await;
    let ca = DevCa::new();
    ca.sign("api", &["api.mesh.test", "localhost"]);
    ca.sign("other", &["other.test"]);
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document(&ca, ECHO_ROUTE), &[]).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/gateway_grpcio.py");
    let (target, ca_file) = (gateway.tls.clone(), ca.ca_file());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").args([script, &target, ca_file.to_str().unwrap(), "api.mesh.test"]).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grpcio client failed:\n{stderr}\n{}", gateway.proxy.proc.log());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(r["unary"]["payload"], "from-outside");
    assert_eq!(r["unary"]["instance"], "echo-1");
    assert_eq!(r["unary"]["echoed_header"], "python", "metadata crosses both ways");
    assert_eq!(r["unary"]["server_saw_timeout"], true, "the deadline reaches the app");
    assert_eq!(r["unary"]["caller"], "api-gateway", "the app sees the gateway as its caller");
    assert_eq!(r["server_stream"], serde_json::json!({ "count": 50, "ordered": true }));
    assert_eq!(r["error"], serde_json::json!({ "code": "NOT_FOUND", "details": "no such thing", "trailer": "t-1" }));
    assert_eq!(r["deadline"]["code"], "DEADLINE_EXCEEDED");
    assert!(r["deadline"]["seconds"].as_f64().unwrap() < 1.5, "{}", r["deadline"]);
    assert_eq!(r["large"], serde_json::json!({ "bytes": 8 << 20, "same": true }));
    assert_eq!(r["unrouted"]["code"], "UNIMPLEMENTED");
    let details = r["unrouted"]["details"].as_str().unwrap();
    assert!(details.contains("no route") && details.contains("/nope.v1.Missing/Call"), "{details}");

    let metrics = gateway.proxy.metrics().await;
    let ok = r#"mesh_requests_total{direction="outbound",dst_service="echo",grpc_method="/mesh.demo.v1.Echo/Unary",grpc_status="OK",src_service="api-gateway"}"#;
    assert_eq!(metric_sum(&metrics, ok), 2, "the gateway's calls are recorded as any caller's:\n{metrics}");
    assert!(metric_sum(&metrics, r#"mesh_tls_handshakes_total{direction="gateway",outcome="ok""#) >= 1);
    assert_eq!(metric_sum(&metrics, r#"mesh_proxy_errors_total{direction="outbound",reason="no_route"}"#), 1);
}

#[tokio::test]
async fn sni_picks_the_certificate_and_a_replaced_one_reaches_new_connections_only() {
    let etcd = mesh_tests::etcd::Etcd::start().await;
    let echo = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    echo.sidecar.ready().await;
    let ca = DevCa::new();
    ca.sign("api", &["api.mesh.test", "localhost"]);
    ca.sign("other", &["other.test", "*.wild.test"]);
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document(&ca, ECHO_ROUTE), &[]).await;
    let h1: &[&[u8]] = &[b"http/1.1"];

    let api = connect(&gateway.tls, Some("api.mesh.test"), &ca.ca_pem, h1).await.unwrap();
    assert_eq!(served_names(&api), ["api.mesh.test", "localhost"]);
    let other = connect(&gateway.tls, Some("other.test"), &ca.ca_pem, h1).await.unwrap();
    assert_eq!(served_names(&other), ["other.test", "*.wild.test"]);
    let wild = connect(&gateway.tls, Some("x.wild.test"), &ca.ca_pem, h1).await.unwrap();
    assert_eq!(served_names(&wild)[0], "other.test");
    let no_sni = connect(&gateway.tls, None, &ca.ca_pem, h1).await.unwrap();
    assert_eq!(served_names(&no_sni)[0], "api.mesh.test", "no server name: the first certificate");
    let unknown = connect(&gateway.tls, Some("unknown.test"), &ca.ca_pem, h1).await;
    assert!(unknown.is_err(), "a name no certificate has is refused");

    // A connection open before the replacement keeps working; a new one gets the new certificate.
    let mut old = connect(&gateway.tls, Some("api.mesh.test"), &ca.ca_pem, h1).await.unwrap();
    let (head, _) = http1(&mut old, "GET /before HTTP/1.1\r\nHost: api.mesh.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    ca.sign("api", &["api.mesh.test", "renewed.mesh.test"]);
    eventually("the replaced certificate to be served", Duration::from_secs(10), || async {
        let fresh = connect(&gateway.tls, Some("api.mesh.test"), &ca.ca_pem, h1).await.ok()?;
        served_names(&fresh).contains(&"renewed.mesh.test".to_string()).then_some(())
    })
    .await;
    let (head, body) = http1(&mut old, "GET /after HTTP/1.1\r\nHost: api.mesh.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 404"), "the old connection still carries requests: {head}");
    assert!(body.contains("no route") && body.contains("/after"), "{body}");

    // A document that cannot be used is reported and the one in force stays.
    std::fs::write(&gateway.document, "routes:\n  - { name: broken }\n").unwrap();
    eventually("the bad document to be reported", Duration::from_secs(10), || async {
        let metrics = gateway.proxy.metrics().await;
        (metric_sum(&metrics, r#"mesh_gateway_reloads_total{outcome="error"}"#) >= 1).then_some(())
    })
    .await;
    let mut again = connect(&gateway.tls, Some("renewed.mesh.test"), &ca.ca_pem, h1).await.unwrap();
    let (head, _) = http1(&mut again, "GET /still HTTP/1.1\r\nHost: renewed.mesh.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let metrics = gateway.proxy.metrics().await;
    let failed = |reason: &str| {
        let series = format!(r#"mesh_tls_handshakes_total{{direction="gateway",outcome="failure",reason="{reason}"}}"#);
        metric_sum(&metrics, &series)
    };
    assert_eq!(failed("unknown_server_name"), 1, "{metrics}");
    assert!(metrics.contains("mesh_gateway_certificate_expiry_timestamp_seconds{name=\"api.mesh.test\"}"));
}

#[tokio::test]
async fn plaintext_on_the_tls_port_and_old_tls_versions_are_refused_and_counted() {
    let etcd = mesh_tests::etcd::Etcd::start().await;
    let ca = DevCa::new();
    ca.sign("api", &["api.mesh.test"]);
    ca.sign("other", &["other.test"]);
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document(&ca, ECHO_ROUTE), &[]).await;

    let mut tcp = tokio::net::TcpStream::connect(&gateway.tls).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: api.mesh.test\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await.unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1"), "plaintext got an HTTP answer on the TLS port");

    // TLS 1.1 from Python's ssl module (OpenSSL), allowed to offer it.
    let (addr, ca_file) = (gateway.tls.clone(), ca.ca_file());
    let script = format!(
        r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations("{}")
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = ssl.TLSVersion.TLSv1_1
host, port = "{}".rsplit(":", 1)
try:
    with socket.create_connection((host, int(port)), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="api.mesh.test") as t:
            print("connected", t.version())
except ssl.SSLError as e:
    print("refused", e.reason)
"#,
        ca_file.display(),
        addr
    );
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", &script]).output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.starts_with("refused"), "TLS 1.1: {said} {}", String::from_utf8_lossy(&out.stderr));

    let metrics = gateway.proxy.metrics().await;
    let failed = |reason: &str| {
        let series = format!(r#"mesh_tls_handshakes_total{{direction="gateway",outcome="failure",reason="{reason}"}}"#);
        metric_sum(&metrics, &series)
    };
    assert_eq!(failed("not_tls"), 1, "{metrics}");
    assert_eq!(failed("incompatible"), 1, "{metrics}");
}

#[tokio::test]
async fn http1_and_h2c_on_the_plaintext_listener_are_routed_by_host_and_path() {
    let etcd = mesh_tests::etcd::Etcd::start().await;
    let echo = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    echo.sidecar.ready().await;
    let ca = DevCa::new();
    ca.sign("api", &["api.mesh.test"]);
    ca.sign("other", &["other.test"]);
    let routes = concat!(
        "  - { name: echo-api, hosts: [api.mesh.test], grpc_service: mesh.demo.v1.Echo, service: echo }\n",
        "  - { name: nowhere, hosts: [\"*.void.test\"], path_prefix: /, service: nosuch }\n",
    );
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document(&ca, routes), &[]).await;

    // gRPC over h2c, with the route's host as the authority.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.plain))
        .unwrap()
        .origin("http://api.mesh.test".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = mesh_proto::demo::v1::echo_client::EchoClient::new(channel);
    let reply = client.unary(mesh_proto::demo::v1::EchoRequest::default()).await.unwrap().into_inner();
    assert_eq!(reply.instance, "echo-1");

    // The same path for another host matches nothing, and says what it looked for.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.plain))
        .unwrap()
        .origin("http://elsewhere.test".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = mesh_proto::demo::v1::echo_client::EchoClient::new(channel);
    let status = client.unary(mesh_proto::demo::v1::EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("\"elsewhere.test\""), "{}", status.message());

    // HTTP/1.1: an unknown path is a 404 whose body names it; a route to a service with no
    // instance is a 503 whose body says so.
    let mut tcp = tokio::net::TcpStream::connect(&gateway.plain).await.unwrap();
    let (head, body) = http1(&mut tcp, "GET /missing?q=1 HTTP/1.1\r\nHost: api.mesh.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(head.to_ascii_lowercase().contains("mesh-error: no_route"), "{head}");
    assert!(body.contains("\"/missing\""), "{body}");
    let (head, body) = http1(&mut tcp, "GET /x HTTP/1.1\r\nHost: a.void.test:8080\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.contains("nosuch"), "{body}");
}
