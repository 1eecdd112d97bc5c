//! Mutual TLS between proxies: meshed services talk over mTLS with identities from the CA;
//! plaintext, expired, not-yet-valid, foreign and missing client certificates are refused with a
//! counted reason and no request reaching the app; a server proving the wrong identity is refused
//! by the calling proxy.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, SystemTime};

use mesh_proto::demo::v1::{EchoRequest, StatsRequest};
use mesh_tests::ca::{SecuredMesh, as_env, foreign_issuer, forge_with};
use mesh_tests::mesh::{EchoInstance, metric_sum};
use mesh_tests::tls::probe;

async fn secured() -> SecuredMesh {
    SecuredMesh::start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_services_talk_over_mtls_and_plaintext_is_refused() {
    let s = secured().await;
    let mut echo = s.client.echo_client("echo").await;
    for _ in 0..5 {
        let reply = echo.unary(EchoRequest { payload: b"secret".to_vec(), ..Default::default() }).await.unwrap();
        assert_eq!(reply.into_inner().payload, b"secret");
    }
    let server_metrics = s.server.sidecar.metrics().await;
    assert!(
        metric_sum(&server_metrics, r#"mesh_tls_handshakes_total{direction="inbound",outcome="ok""#) >= 1,
        "{server_metrics}"
    );
    assert!(
        server_metrics.contains(r#"mesh_requests_total{direction="inbound",dst_service="echo",grpc_method="/mesh.demo.v1.Echo/Unary",grpc_status="OK",src_service="client"} 5"#),
        "the caller is known by its verified identity:\n{server_metrics}"
    );
    let client_metrics = s.client.metrics().await;
    assert!(client_metrics.contains("mesh_identity_expiry_timestamp_seconds"), "{client_metrics}");
    let records = s.etcd.etcdctl_get_prefix("/mesh/v1/services/echo/");
    assert!(records.values().any(|v| v.contains(r#""identity":"spiffe://mesh.local/svc/echo""#)), "{records:?}");

    // An h2c client straight to the inbound port gets nowhere.
    let calls_before = echo.stats(StatsRequest {}).await.unwrap().into_inner().calls;
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", s.server.sidecar.inbound))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let result = mesh_proto::demo::v1::echo_client::EchoClient::new(channel).unary(EchoRequest::default()).await;
        assert!(result.is_err(), "plaintext reached the app");
    }
    let server_metrics = s.server.sidecar.metrics().await;
    assert!(
        metric_sum(
            &server_metrics,
            r#"mesh_tls_handshakes_total{direction="inbound",outcome="failure",reason="not_tls"}"#
        ) >= 1,
        "{server_metrics}"
    );
    assert_eq!(
        echo.stats(StatsRequest {}).await.unwrap().into_inner().calls,
        calls_before,
        "no request reached the app"
    );
    drop(s.cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_with_a_counted_reason() {
    let s = secured().await;
    let mut echo = s.client.echo_client("echo").await;
    let calls_before = echo.stats(StatsRequest {}).await.unwrap().into_inner().calls;
    let inbound = &s.server.sidecar.inbound;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let intruder = "spiffe://mesh.local/svc/intruder";

    // A valid certificate works (the probe itself is sound).
    assert_eq!(probe(inbound, Some(s.cp.forge(intruder, now - hour, now + hour))).await, Ok(()));

    let cases = [
        ("expired", Some(s.cp.forge(intruder, now - 3 * hour, now - hour))),
        ("not_yet_valid", Some(s.cp.forge(intruder, now + hour, now + 3 * hour))),
        ("unknown_ca", Some(forge_with(&foreign_issuer(), intruder, now - hour, now + hour))),
        ("wrong_identity", Some(s.cp.forge("spiffe://other.domain/svc/echo", now - hour, now + hour))),
        ("no_client_certificate", None),
    ];
    for (reason, cert) in cases {
        assert!(probe(inbound, cert).await.is_err(), "{reason}: the proxy accepted the connection");
        let metrics = s.server.sidecar.metrics().await;
        let refused = metric_sum(
            &metrics,
            &format!(r#"mesh_tls_handshakes_total{{direction="inbound",outcome="failure",reason="{reason}"}}"#),
        );
        assert_eq!(refused, 1, "{reason} is counted once:\n{metrics}");
    }
    assert_eq!(
        echo.stats(StatsRequest {}).await.unwrap().into_inner().calls,
        calls_before,
        "no request reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_proving_another_identity_is_refused_by_the_caller() {
    let mut s = secured().await;
    // An impostor instance of "echo" whose certificate (genuinely from the mesh CA) says payments.
    let env = s.cp.sidecar_env("payments");
    let mut env = as_env(&env);
    env.push(("MESH_SERVICE", "payments"));
    let impostor = EchoInstance::start_with(&s.etcd.endpoint(), "payments", "impostor", &env);
    impostor.sidecar.ready().await;
    // Its record is copied under the echo service (as a compromised or confused registry would).
    let mut client = s.etcd.client().await;
    let records = s.etcd.etcdctl_get_prefix("/mesh/v1/services/payments/");
    let value = records.values().next().unwrap().replace(r#""service":"payments""#, r#""service":"echo""#);
    client.put("/mesh/v1/services/echo/instances/impostor", value, None).await.unwrap();
    // The real echo instance leaves, so only the impostor is left to pick.
    assert!(s.server.sidecar.proc.terminate().success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut echo = s.client.echo_client("echo").await;
    let status = echo.unary(EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let metrics = s.client.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            r#"mesh_tls_handshakes_total{direction="outbound",outcome="failure",reason="wrong_identity"}"#
        ) >= 1,
        "{metrics}"
    );
    let impostor_metrics = impostor.sidecar.metrics().await;
    assert_eq!(
        metric_sum(&impostor_metrics, r#"mesh_requests_total{direction="inbound""#),
        0,
        "nothing reached the impostor's app"
    );
}

#[tokio::test]
async fn meshctl_shows_identities_and_warns_about_expiring_roots() {
    let s = secured().await;
    let ep = s.etcd.endpoint();
    let (code, out, err) = mesh_tests::process::run("meshctl", &["identity", "--admin", &s.server.sidecar.admin]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("spiffe://mesh.local/svc/echo") && out.contains("expires in"), "{out}");
    let (code, _, err) =
        mesh_tests::process::run("meshctl", &["identity", "--admin", &s.server.sidecar.admin, "--warn-within", "48h"]);
    assert_eq!(code, 1, "a 24 h certificate is within 48 h: {err}");
    assert!(err.contains("WARN certificate expires within"), "{err}");

    let bundle = s.cp.ca_dir().join("bundle.pem").display().to_string();
    let (code, out, err) =
        mesh_tests::process::run("meshctl", &["--etcd-endpoints", &ep, "check", "--ca-bundle", &bundle]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok   trust-bundle") && out.contains("valid until"), "{out}");
    // A threshold beyond the root's ten years: warned, not failed.
    let (code, _, err) = mesh_tests::process::run(
        "meshctl",
        &["--etcd-endpoints", &ep, "check", "--ca-bundle", &bundle, "--warn-within", "4000days"],
    );
    assert_eq!(code, 0);
    assert!(err.contains("WARN trust-bundle") && err.contains("rotate the root"), "{err}");
}
