//! Gateway routes from etcd: `meshctl gateway apply` stores a routes document for a gateway
//! service, and its gateway puts the routes after its file's within a second; a document the
//! gateway cannot use is refused by meshctl with its line, and one written around meshctl (a name
//! the file already has) is reported by the gateway while the last good routes stay; removing the
//! stored routes leaves the file's.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::eventually;
use mesh_tests::gateway::{Gateway, echo_behind_gateway};
use mesh_tests::mesh::{meshctl, metric_sum};
use mesh_tests::raw::grpc_call;

const UNIMPLEMENTED: i32 = 12;

async fn status(gateway: &Gateway, host: &str) -> Option<i32> {
    grpc_call(&gateway.plain, host, "/mesh.demo.v1.Echo/Unary", &EchoRequest::default(), &[]).await.grpc_status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_applied_in_etcd_reach_the_gateway_and_bad_ones_change_nothing() {
    let document = "routes:\n  - { name: echo, hosts: [file.test], grpc_service: mesh.demo.v1.Echo, service: echo }\n";
    let (etcd, _echo, ca, gateway) = echo_behind_gateway(document, &[]).await;
    assert_eq!(status(&gateway, "etcd.test").await, Some(UNIMPLEMENTED), "no route for etcd.test yet");

    // Applied with meshctl: in force within a second, after the file's routes.
    let file = ca.dir.path().join("routes.yaml");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        "# edge routes kept in etcd\nroutes:\n  - { name: from-etcd, hosts: [etcd.test], grpc_service: mesh.demo.v1.Echo, service: echo }\n",
    )
    .unwrap();
    let (code, out, err) = meshctl(&etcd, &["gateway", "validate", "-f", path]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = meshctl(&etcd, &["gateway", "apply", "api-gateway", "-f", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied 1 route(s) for gateway service api-gateway: from-etcd"), "{out}");
    eventually("the route from etcd in force", Duration::from_secs(5), || async {
        (status(&gateway, "etcd.test").await == Some(0)).then_some(())
    })
    .await;
    assert_eq!(status(&gateway, "file.test").await, Some(0), "the file's routes stay");
    let (code, shown, _) = meshctl(&etcd, &["gateway", "show", "api-gateway"]);
    assert!(code == 0 && shown.contains("# edge routes kept in etcd"), "stored as written: {shown}");

    // A bad file never reaches etcd: meshctl says the line.
    let bad = ca.dir.path().join("bad.yaml");
    std::fs::write(&bad, "routes:\n  - { name: x, hosts: [bad.test],\n      bogus: 1 }\n").unwrap();
    let (code, _, err) = meshctl(&etcd, &["gateway", "apply", "api-gateway", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml") && err.contains("line 3"), "{err}");
    let (code, _, err) =
        meshctl(&etcd, &["gateway", "apply", "api-gateway", "-f", path.replace("routes", "nope").as_str()]);
    assert!(code == 1 && err.contains("nope.yaml"), "{err}");

    // Written around meshctl, a document that clashes with the file's routes: the gateway says so
    // and keeps the last good routes from etcd.
    let errors_before = metric_sum(&gateway.proxy.metrics().await, r#"mesh_gateway_reloads_total{outcome="error"}"#);
    let mut client = etcd.client().await;
    let clash = "routes:\n  - { name: echo, hosts: [clash.test], grpc_service: mesh.demo.v1.Echo, service: echo }\n";
    client.put("/mesh/v1/gateways/api-gateway", clash, None).await.unwrap();
    eventually("the clash reported", Duration::from_secs(5), || async {
        let errors = metric_sum(&gateway.proxy.metrics().await, r#"mesh_gateway_reloads_total{outcome="error"}"#);
        (errors > errors_before).then_some(())
    })
    .await;
    assert!(gateway.proxy.proc.log().contains("another route has this name"), "{}", gateway.proxy.proc.log());
    assert_eq!(status(&gateway, "etcd.test").await, Some(0), "the last good routes from etcd stay");
    assert_eq!(status(&gateway, "clash.test").await, Some(UNIMPLEMENTED));

    // Removed: the file's routes only.
    client.put("/mesh/v1/gateways/api-gateway", std::fs::read(&file).unwrap(), None).await.unwrap();
    let (code, out, err) = meshctl(&etcd, &["gateway", "remove", "api-gateway"]);
    assert_eq!(code, 0, "{out}{err}");
    eventually("the route from etcd gone", Duration::from_secs(5), || async {
        (status(&gateway, "etcd.test").await == Some(UNIMPLEMENTED)).then_some(())
    })
    .await;
    assert_eq!(status(&gateway, "file.test").await, Some(0));
    let (code, _, err) = meshctl(&etcd, &["gateway", "show", "api-gateway"]);
    assert!(code == 1 && err.contains("no routes stored"), "{err}");
}
