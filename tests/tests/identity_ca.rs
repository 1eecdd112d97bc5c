//! The certificate authority: a join token for service A yields an identity for A and never for
//! B; expired, revoked and forged tokens are refused; the API is TLS only.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::Duration;

use mesh_tests::ca::ControlPlane;
use mesh_tests::etcd::Etcd;
use mesh_tests::process::run;
use tonic::Code;
use x509_parser::prelude::*;

fn uri_sans(pem_chain: &str) -> (Vec<String>, i64, i64) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_chain.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let uris = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (uris, cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp())
}

#[tokio::test]
async fn a_token_for_orders_yields_an_orders_identity_and_never_another() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint()).await;
    let token = cp.token("orders", "1h");

    // The CSR asks for payments; the token says orders: orders it is.
    let (_, reply) = cp.certify(&token, "spiffe://mesh.local/svc/payments").await.unwrap();
    assert_eq!(reply.identity, "spiffe://mesh.local/svc/orders");
    let (uris, not_before, not_after) = uri_sans(&reply.certificate_chain_pem);
    assert_eq!(uris, ["spiffe://mesh.local/svc/orders"]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(not_before <= now - 60, "back-dated for clock skew: {not_before} vs now {now}");
    assert!((not_after - now - 24 * 3600).abs() < 120, "24 h lifetime: {}", not_after - now);
    assert_eq!((reply.not_before, reply.not_after), (not_before, not_after));
    assert!(reply.trust_bundle_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(reply.trust_bundle_pem, cp.bundle_pem());

    // The same token can be used again (a restarted instance), still for orders only.
    let (_, again) = cp.certify(&token, "spiffe://mesh.local/svc/orders").await.unwrap();
    assert_eq!(again.identity, "spiffe://mesh.local/svc/orders");
}

#[tokio::test]
async fn expired_revoked_and_forged_tokens_are_refused() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint()).await;

    let short = cp.token("orders", "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = cp.certify(&short, "spiffe://mesh.local/svc/orders").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{status:?}");

    let token = cp.token("orders", "1h");
    let id = token.split('.').nth(1).unwrap().to_string();
    assert!(cp.certify(&token, "").await.is_ok());
    let (code, out, err) = run("meshctl", &["--etcd-endpoints", &etcd.endpoint(), "token", "revoke", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let status = cp.certify(&token, "").await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unauthenticated, "mesh: unknown or revoked join token"));

    let forged = format!("mesh1.{id}.{}", "0".repeat(64));
    let other = cp.token("payments", "1h");
    let wrong_secret = format!("{}.{}", other.rsplit_once('.').unwrap().0, "f".repeat(64));
    for bad in [forged.as_str(), wrong_secret.as_str(), "not-a-token", "mesh1..", ""] {
        let status = cp.certify(bad, "").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}: {status:?}");
    }

    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &etcd.endpoint(), "-o", "json", "token", "list"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(listed.as_array().unwrap().iter().all(|t| t.get("token").is_none()), "secrets are never listed: {out}");
}

#[tokio::test]
async fn the_certify_api_is_tls_only() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.addr)).unwrap().connect().await;
    let refused = match channel {
        Err(_) => true,
        Ok(channel) => mesh_proto::identity::v1::identity_client::IdentityClient::new(channel)
            .certify(mesh_proto::identity::v1::CertifyRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client must not reach Certify");
}
