//! The proxy's lifecycle: it registers only once the app answers, reports readiness on its admin
//! port, and on SIGTERM deregisters first, drains in-flight calls, and exits 0. A proxy for a
//! workload that serves nothing (`--app-addr none`) is ready at once and never registers.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoInstance, EchoMesh, Sidecar, admin_get};
use mesh_tests::process::Proc;
use mesh_tests::{eventually, free_port};

const KEY: &str = "/mesh/v1/services/late/instances/late-1";

#[tokio::test]
async fn registers_only_once_the_app_answers() {
    let etcd = Etcd::start().await;
    let app_addr = format!("127.0.0.1:{}", free_port());
    let proxy = Sidecar::start(&etcd.endpoint(), "late", "late-1", &app_addr, &[]);

    eventually("the admin server to answer", Duration::from_secs(10), || async {
        admin_get(&proxy.admin, "/live").await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(admin_get(&proxy.admin, "/ready").await.unwrap().0, 503, "not ready without an app");
    assert_eq!(
        admin_get(&proxy.admin, "/serving").await.unwrap().0,
        200,
        "serving (an app may call out) before it is ready"
    );
    assert!(etcd.keys_with_leases(KEY).await.is_empty(), "not registered without an app");

    let _app = Proc::start("mesh-demo", &["echo", "--listen", &app_addr, "--instance-id", "late-app"], &[]);
    proxy.ready().await;
    assert_eq!(etcd.keys_with_leases(KEY).await.len(), 1);
    let (code, body) = admin_get(&proxy.admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for name in ["mesh_open_connections", "mesh_registry_registrations_total", "mesh_connections_total"] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_first_then_drains_in_flight_calls_and_exits_0() {
    let EchoMesh { etcd, server, client, .. } = &mut EchoMesh::start().await;
    let mut echo = client.echo_client("echo").await;

    // A call that is still running when the server's proxy is told to stop.
    let slow = tokio::spawn(async move {
        echo.unary(EchoRequest { delay_ms: 1500, payload: b"slow".to_vec(), ..Default::default() }).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.sidecar.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let stopping = Instant::now();

    let key = "/mesh/v1/services/echo/instances/echo-1";
    eventually("deregistration", Duration::from_secs(2), || async {
        etcd.keys_with_leases(key).await.is_empty().then_some(())
    })
    .await;
    assert!(stopping.elapsed() < Duration::from_millis(800), "deregistered {:?} after SIGTERM", stopping.elapsed());
    assert_eq!(admin_get(&server.sidecar.admin, "/ready").await.map(|r| r.0), Some(503));

    let reply = slow.await.unwrap().expect("the in-flight call completes during the drain");
    assert_eq!(reply.into_inner().payload, b"slow");
    let status = server.sidecar.proc.wait_timeout(Duration::from_secs(15)).expect("the proxy exits after draining");
    assert!(status.success(), "exit status {status}");
}

// Multi-threaded: `terminate` blocks this thread, and the client's connection must still answer
// the draining proxy's GOAWAY ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_only_proxy_is_ready_without_an_app_never_registers_and_its_calls_succeed() {
    let etcd = Etcd::start().await;
    let server = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    server.sidecar.ready().await;

    let mut proxy = Sidecar::start(&etcd.endpoint(), "batch", "batch-1", "none", &[]);
    proxy.ready().await;
    assert_eq!(admin_get(&proxy.admin, "/serving").await.unwrap().0, 200);
    let mut echo = proxy.echo_client("echo").await;
    for i in 0..20u8 {
        let reply = echo.unary(EchoRequest { payload: vec![i; 100], ..Default::default() }).await;
        assert_eq!(reply.expect("a call through an outbound-only proxy").into_inner().payload, vec![i; 100]);
    }
    assert!(
        tokio::net::TcpStream::connect(&proxy.inbound).await.is_err(),
        "no inbound listener without an app to forward to"
    );
    assert!(etcd.keys_with_leases("/mesh/v1/services/batch/").await.is_empty(), "never registered");
    let log = proxy.proc.log();
    assert!(!log.contains("waiting for the local app"), "it waits for no app:\n{log}");
    assert!(log.contains("outbound only"), "the log says which mode it runs in:\n{log}");

    // Nothing to deregister, so nothing to wait for on shutdown.
    let stopping = Instant::now();
    let status = proxy.proc.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopped after {:?}:\n{}",
        stopping.elapsed(),
        proxy.proc.log()
    );
}
