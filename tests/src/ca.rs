//! A real control plane (`mesh-registry serve`) with a fresh root CA, and helpers to get tokens
//! and certificates from it the way a workload would.

use std::time::Duration;

use mesh_proto::identity::v1::identity_client::IdentityClient;
use mesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::process::{Proc, run};
use crate::{eventually, free_port};

/// A running CA.
#[derive(Debug)]
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:<port>`, TLS.
    pub addr: String,
    /// The CA directory.
    pub dir: tempfile::TempDir,
    etcd: String,
    leaf_lifetime: String,
}

impl ControlPlane {
    /// `mesh-registry init` into a temp dir, then `serve` against the etcd at `etcd`.
    pub async fn start(etcd: &str) -> Self {
        Self::start_with_lifetime(etcd, "24h").await
    }

    /// The same, issuing leaves that live `leaf_lifetime`.
    pub async fn start_with_lifetime(etcd: &str, leaf_lifetime: &str) -> Self {
        Self::start_with_files(etcd, leaf_lifetime, |ca_dir| {
            let (code, _, err) = run("mesh-registry", &["init", "--ca-dir", ca_dir.to_str().unwrap()]);
            assert_eq!(code, 0, "init failed: {err}");
        })
        .await
    }

    /// The same, with the CA directory filled by `prepare` instead of `mesh-registry init`.
    pub async fn start_with_files(etcd: &str, leaf_lifetime: &str, prepare: impl FnOnce(&std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        prepare(&ca_dir);
        let addr = format!("127.0.0.1:{}", free_port());
        let proc = Self::spawn(&ca_dir, &addr, etcd, leaf_lifetime);
        let cp = Self { proc, addr, dir, etcd: etcd.to_string(), leaf_lifetime: leaf_lifetime.to_string() };
        eventually("the CA to serve", Duration::from_secs(10), || async { cp.try_client().await }).await;
        cp
    }

    fn spawn(ca_dir: &std::path::Path, addr: &str, etcd: &str, leaf_lifetime: &str) -> Proc {
        Proc::start(
            "mesh-registry",
            &["serve", "--ca-dir", ca_dir.to_str().unwrap(), "--listen", addr],
            &[("MESH_ETCD_ENDPOINTS", etcd), ("MESH_LEAF_LIFETIME", leaf_lifetime)],
        )
    }

    /// Stops the CA (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.sigkill();
    }

    /// Starts the CA again on the same address with the same files.
    pub async fn restart(&mut self) {
        self.proc = Self::spawn(&self.ca_dir(), &self.addr, &self.etcd, &self.leaf_lifetime);
        eventually("the CA to serve again", Duration::from_secs(10), || async { self.try_client().await }).await;
    }

    /// The CA directory (`root.pem`, `root.key.pem`, `bundle.pem`).
    pub fn ca_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("ca")
    }

    /// The trust bundle, PEM.
    pub fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.ca_dir().join("bundle.pem")).unwrap()
    }

    /// `meshctl token create <service> --ttl <ttl>`: the token string.
    pub fn token(&self, service: &str, ttl: &str) -> String {
        let (code, out, err) =
            run("meshctl", &["--etcd-endpoints", &self.etcd, "token", "create", service, "--ttl", ttl]);
        assert_eq!(code, 0, "token create failed: {err}");
        out.trim().to_string()
    }

    /// Sidecar environment that turns on identity and mTLS for `service` (with a fresh token).
    pub fn sidecar_env(&self, service: &str) -> Vec<(String, String)> {
        vec![
            ("MESH_IDENTITY_CA_ADDR".into(), format!("https://{}", self.addr)),
            ("MESH_IDENTITY_CA_NAME".into(), "localhost".into()),
            ("MESH_IDENTITY_TRUST_BUNDLE".into(), self.ca_dir().join("bundle.pem").display().to_string()),
            ("MESH_IDENTITY_TOKEN".into(), self.token(service, "1h")),
        ]
    }

    /// Signs a client/server certificate for `uri` with this CA's root, valid from `not_before`
    /// to `not_after`: for tests that need certificates the CA would never issue.
    pub fn forge(
        &self,
        uri: &str,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> (String, String) {
        let root_key =
            KeyPair::from_pem(&std::fs::read_to_string(self.ca_dir().join("root.key.pem")).unwrap()).unwrap();
        let root_pem = std::fs::read_to_string(self.ca_dir().join("root.pem")).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
        forge_with(&issuer, uri, not_before, not_after)
    }

    async fn try_client(&self) -> Option<IdentityClient<Channel>> {
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.bundle_pem())).domain_name("localhost");
        let channel =
            Endpoint::from_shared(format!("https://{}", self.addr)).ok()?.tls_config(tls).ok()?.connect().await.ok()?;
        Some(IdentityClient::new(channel))
    }

    /// A TLS client of the Certify API, trusting the CA's bundle.
    pub async fn client(&self) -> IdentityClient<Channel> {
        self.try_client().await.unwrap()
    }

    /// Asks for a certificate with `token`, for a fresh key whose CSR claims `claimed_uri`.
    pub async fn certify(&self, token: &str, claimed_uri: &str) -> Result<(KeyPair, CertifyResponse), tonic::Status> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(claimed_uri.try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap();
        let reply = self
            .client()
            .await
            .certify(CertifyRequest { token: token.to_string(), csr_der: csr.der().to_vec() })
            .await?;
        Ok((key, reply.into_inner()))
    }
}

/// Signs a leaf for `uri` with `issuer`: (certificate PEM, key PEM).
pub fn forge_with(
    issuer: &rcgen::Issuer<'_, KeyPair>,
    uri: &str,
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> (String, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A root CA that is not the mesh's.
pub fn foreign_issuer() -> rcgen::Issuer<'static, KeyPair> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::Issuer::new(params, key)
}

/// etcd, the control plane, a meshed echo instance (`echo-1` of `echo`) and a client sidecar
/// (service `client`), all proxies with identities and mTLS.
#[derive(Debug)]
pub struct SecuredMesh {
    /// The registry.
    pub etcd: crate::etcd::Etcd,
    /// The control plane.
    pub cp: ControlPlane,
    /// The echo instance.
    pub server: crate::mesh::EchoInstance,
    /// The `client` sidecar.
    pub client: crate::mesh::Sidecar,
    _client_app: Proc,
}

impl SecuredMesh {
    /// Starts everything and waits until every proxy is ready.
    pub async fn start() -> Self {
        Self::start_with_lifetime("24h").await
    }

    /// The same, with leaf certificates living `leaf_lifetime` (to watch renewals).
    pub async fn start_with_lifetime(leaf_lifetime: &str) -> Self {
        let etcd = crate::etcd::Etcd::start().await;
        let cp = ControlPlane::start_with_lifetime(&etcd.endpoint(), leaf_lifetime).await;
        let server =
            crate::mesh::EchoInstance::start_with(&etcd.endpoint(), "echo", "echo-1", &as_env(&cp.sidecar_env("echo")));
        server.sidecar.ready().await;
        let (client_app, client) =
            crate::mesh::client_sidecar_with(&etcd.endpoint(), &as_env(&cp.sidecar_env("client"))).await;
        Self { etcd, cp, server, client, _client_app: client_app }
    }

    /// Another caller with identity `service`: its app and its sidecar.
    pub async fn caller(&self, service: &str) -> (Proc, crate::mesh::Sidecar) {
        let app_addr = format!("127.0.0.1:{}", free_port());
        let app =
            Proc::start("mesh-demo", &["echo", "--listen", &app_addr, "--instance-id", &format!("{service}-app")], &[]);
        let sidecar = crate::mesh::Sidecar::start(
            &self.etcd.endpoint(),
            service,
            &format!("{service}-1"),
            &app_addr,
            &as_env(&self.cp.sidecar_env(service)),
        );
        sidecar.ready().await;
        (app, sidecar)
    }
}

/// Borrowed view of owned environment pairs.
pub fn as_env(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}
