//! The CA as an intermediate under a root the operator brings (and whose key the mesh never
//! holds): leaves carry the intermediate, and proxies verify them up to the operator's root.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::ca::{ControlPlane, as_env};
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoInstance, client_sidecar_with};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_ca_under_the_operators_root_secures_the_mesh() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start_with_files(&etcd.endpoint(), "24h", |dir| {
        std::fs::create_dir_all(dir).unwrap();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root = ca_params("operator root").self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(ca_params("operator root"), root_key);
        let mid_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mid = ca_params("mesh intermediate").signed_by(&mid_key, &root_issuer).unwrap();
        std::fs::write(dir.join("root.pem"), mid.pem()).unwrap();
        std::fs::write(dir.join("root.key.pem"), mid_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("chain.pem"), mid.pem()).unwrap();
        std::fs::write(dir.join("bundle.pem"), root.pem()).unwrap();
    })
    .await;
    let server = EchoInstance::start_with(&etcd.endpoint(), "echo", "echo-1", &as_env(&cp.sidecar_env("echo")));
    server.sidecar.ready().await;
    let (_app, client) = client_sidecar_with(&etcd.endpoint(), &as_env(&cp.sidecar_env("client"))).await;
    let mut echo = client.echo_client("echo").await;
    let reply = echo.unary(EchoRequest { payload: b"via intermediate".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(reply.into_inner().payload, b"via intermediate");
    let metrics = server.sidecar.metrics().await;
    assert!(
        metrics.contains(r#"mesh_tls_handshakes_total{direction="inbound",outcome="ok",reason="ok"}"#),
        "{metrics}"
    );
}
