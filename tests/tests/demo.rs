//! The demo application end to end: a frontend that calls a backend, both registered through the
//! registry library, both serving `grpc.health.v1`.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_proto::demo::v1::HelloRequest;
use mesh_proto::demo::v1::frontend_client::FrontendClient;
use mesh_tests::demo::Backend;
use mesh_tests::etcd::Etcd;
use mesh_tests::process::{Proc, run};
use mesh_tests::{eventually, free_port};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn frontend_calls_backend_and_both_register_and_report_health() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let backend = Backend::start(&ep, "be-1");
    let listen = format!("127.0.0.1:{}", free_port());
    let backend_url = format!("http://{}", backend.listen);
    let mut frontend = Proc::start(
        "mesh-demo",
        &["frontend", "--listen", &listen, "--backend-addr", &backend_url, "--register", "--instance-id", "fe-1"],
        &[("MESH_ETCD_ENDPOINTS", ep.as_str())],
    );

    let url = format!("http://{listen}");
    let mut client = eventually("the frontend to serve", Duration::from_secs(10), || async {
        FrontendClient::connect(url.clone()).await.ok()
    })
    .await;
    let reply = client.hello(HelloRequest { name: "mesh".into() }).await.unwrap().into_inner();
    assert_eq!(reply.message, "hello, mesh");
    assert_eq!((reply.frontend_instance.as_str(), reply.backend_instance.as_str()), ("fe-1", "be-1"));

    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let status =
        health.check(HealthCheckRequest { service: "mesh.demo.v1.Frontend".into() }).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    eventually("both services registered", Duration::from_secs(10), || async {
        let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "-o", "json", "services"]);
        let json: serde_json::Value = serde_json::from_str(&out).ok()?;
        (code == 0
            && json["services"]
                == serde_json::json!([{ "name": "backend", "instances": 1 }, { "name": "frontend", "instances": 1 }]))
        .then_some(())
    })
    .await;

    // Idle clients still hold connections: shutdown must still be prompt and clean.
    let stopping = std::time::Instant::now();
    assert!(frontend.terminate().success());
    assert!(stopping.elapsed() < Duration::from_secs(8), "shutdown took {:?}", stopping.elapsed());
    drop((client, health));
    assert!(
        !etcd
            .keys_with_leases("/mesh/v1/services/frontend/")
            .await
            .contains_key("/mesh/v1/services/frontend/instances/fe-1")
    );
}
