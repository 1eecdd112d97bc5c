//! Authorization on inbound: an allowed caller succeeds, another gets PERMISSION_DENIED naming the
//! caller and the rule; policy changes take effect on the next call without restarts; the `deny`
//! default blocks an unlisted caller; malformed policies never displace a valid one.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_proto::demo::v1::{EchoRequest, StatsRequest};
use mesh_tests::ca::SecuredMesh;
use mesh_tests::eventually;
use mesh_tests::process::run;
use tonic::Code;

fn policy_file(dir: &std::path::Path, name: &str, json: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_allow_deny_and_change_without_restarts() {
    let s = SecuredMesh::start().await;
    let (_intruder_app, intruder) = s.caller("intruder").await;
    let ep = s.etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let meshctl = |args: &[&str]| {
        let mut all = vec!["--etcd-endpoints", ep.as_str()];
        all.extend_from_slice(args);
        run("meshctl", &all)
    };

    // Only `client` may call Echo.
    let only_client = policy_file(
        dir.path(),
        "p1.json",
        r#"{"rules":[{"name":"client-echo","from":["client"],"methods":["/mesh.demo.v1.Echo/*"]}]}"#,
    );
    let (code, out, err) = meshctl(&["policy", "set", "echo", "-f", &only_client]);
    assert_eq!(code, 0, "{out}{err}");

    let mut allowed = s.client.echo_client("echo").await;
    let mut denied = intruder.echo_client("echo").await;
    let calls = allowed.stats(StatsRequest {}).await.unwrap().into_inner().calls;
    let status = eventually("the policy to apply", Duration::from_secs(5), || {
        let mut denied = denied.clone();
        async move { denied.unary(EchoRequest::default()).await.err() }
    })
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let message = status.message();
    assert!(
        message.contains("spiffe://mesh.local/svc/intruder") && message.contains("/mesh.demo.v1.Echo/Unary"),
        "{message}"
    );
    assert!(message.contains("no rule allows it") && message.contains("client-echo"), "names the rules: {message}");
    assert_eq!(status.metadata().get("mesh-error").unwrap(), "not_authorized");
    allowed.unary(EchoRequest::default()).await.unwrap();
    assert_eq!(
        allowed.stats(StatsRequest {}).await.unwrap().into_inner().calls,
        calls + 1,
        "the denied call never reached the app"
    );

    // A malformed policy is refused by meshctl, and one written straight to etcd changes nothing.
    let broken =
        policy_file(dir.path(), "bad.json", r#"{"rules":[{"name":"x","from":["Not A Service"],"methods":["*"]}]}"#);
    let (code, _, err) = meshctl(&["policy", "set", "echo", "-f", &broken]);
    assert_ne!(code, 0);
    assert!(err.contains("neither a service name"), "{err}");
    let mut etcd = s.etcd.client().await;
    etcd.put("/mesh/v1/authz/services/echo", "{garbage", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    allowed.unary(EchoRequest::default()).await.unwrap();
    assert_eq!(denied.unary(EchoRequest::default()).await.unwrap_err().code(), Code::PermissionDenied);

    // Allowing the intruder takes effect on its next calls, without restarts.
    let both = policy_file(
        dir.path(),
        "p2.json",
        r#"{"rules":[{"name":"callers","from":["client","intruder"],"methods":["*"]}]}"#,
    );
    assert_eq!(meshctl(&["policy", "set", "echo", "-f", &both]).0, 0);
    eventually("the new policy to allow the intruder", Duration::from_secs(5), || {
        let mut denied = denied.clone();
        async move { denied.unary(EchoRequest::default()).await.ok() }
    })
    .await;

    // No policy, and the mesh default set to deny: unlisted callers are blocked.
    assert_eq!(meshctl(&["policy", "delete", "echo"]).0, 0);
    assert_eq!(meshctl(&["policy", "default", "deny"]).0, 0);
    let status = eventually("the deny default to apply", Duration::from_secs(5), || {
        let mut allowed = allowed.clone();
        async move { allowed.unary(EchoRequest::default()).await.err() }
    })
    .await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("default is deny"), "{status:?}");
    let (code, out, _) = meshctl(&["policy", "default"]);
    assert_eq!((code, out.trim()), (0, "deny"));

    let metrics = s.server.sidecar.metrics().await;
    assert!(metrics.contains(r#"mesh_authz_decisions_total{result="deny"}"#), "{metrics}");
    assert!(metrics.contains(r#"mesh_limit_hits_total{limit="invalid_policy"}"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_in_the_service_policy_take_precedence_and_migrate_in_two_steps() {
    let s = SecuredMesh::start().await;
    let (_intruder_app, intruder) = s.caller("intruder").await;
    let dir = tempfile::tempdir().unwrap();
    let meshctl = |args: &[&str]| mesh_tests::mesh::meshctl(&s.etcd, args);
    let mut allowed = s.client.echo_client("echo").await;
    let mut intruding = intruder.echo_client("echo").await;

    // The old way allows everyone; the service policy's rules allow only `client`, and win.
    let everyone = policy_file(dir.path(), "all.json", r#"{"rules":[{"name":"all","from":["*"],"methods":["*"]}]}"#);
    assert_eq!(meshctl(&["policy", "set", "echo", "-f", &everyone]).0, 0);
    let service_policy = policy_file(
        dir.path(),
        "echo.json",
        r#"{"version":"v1","defaults":{"timeout_ms":5000},
            "authorization":{"rules":[{"name":"client-only","from":["client"],"methods":["/mesh.demo.v1.Echo/*"]}]}}"#,
    );
    let (code, out, err) = meshctl(&["apply", "echo", "-f", &service_policy]);
    assert_eq!(code, 0, "{out}{err}");
    let status = eventually("the service policy's rules to apply", Duration::from_secs(5), || {
        let mut intruding = intruding.clone();
        async move { intruding.unary(EchoRequest::default()).await.err() }
    })
    .await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("client-only"), "{}", status.message());
    allowed.unary(EchoRequest::default()).await.unwrap();

    // The migration's second step: the old rules go, the service policy's stay in force.
    assert_eq!(meshctl(&["policy", "delete", "echo"]).0, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(intruding.unary(EchoRequest::default()).await.unwrap_err().code(), Code::PermissionDenied);
    allowed.unary(EchoRequest::default()).await.unwrap();
}
