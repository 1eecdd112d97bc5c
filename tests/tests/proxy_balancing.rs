//! Per-request balancing through the mesh: every call over one client HTTP/2 connection is
//! balanced on its own across the target's instances.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::collections::HashMap;

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoInstance, client_sidecar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_one_connection_spread_across_three_instances() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let instances: Vec<EchoInstance> =
        ["echo-1", "echo-2", "echo-3"].iter().map(|id| EchoInstance::start(&ep, "echo", id)).collect();
    for i in &instances {
        i.sidecar.ready().await;
    }
    let (_app, client) = client_sidecar(&ep).await;
    let echo = client.echo_client("echo").await;

    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut echo = echo.clone();
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            for _ in 0..500 {
                let reply = echo.unary(EchoRequest { payload: vec![1; 100], ..Default::default() }).await.unwrap();
                served.push(reply.into_inner().instance);
            }
            served
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for instance in task.await.unwrap() {
            *counts.entry(instance).or_default() += 1;
        }
    }
    assert_eq!(counts.values().sum::<usize>(), 3000);
    eprintln!("calls per instance: {counts:?}");
    for i in &instances {
        let share = counts.get(&i.id).copied().unwrap_or(0) as f64 / 3000.0;
        assert!((0.25..=0.42).contains(&share), "{} served {:.1}% of calls: {counts:?}", i.id, share * 100.0);
    }
    let metrics = client.metrics().await;
    assert!(
        metrics.contains(r#"mesh_requests_total{direction="outbound",dst_service="echo",grpc_method="/mesh.demo.v1.Echo/Unary",grpc_status="OK",src_service="client"} 3000"#),
        "{metrics}"
    );
}
