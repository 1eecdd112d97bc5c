//! The ingress gateway as a real process: a development CA, serving certificates signed by it
//! (written as PEM files the gateway's document names), the document, and `mesh-proxy --gateway`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::free_port;
use crate::mesh::Sidecar;

/// A development CA that signs serving certificates into a directory.
#[derive(Debug)]
pub struct DevCa {
    /// Where the PEM files go.
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what clients trust).
    pub ca_pem: String,
}

impl DevCa {
    /// A new CA in a new directory (its certificate at `ca.crt`).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "mesh test gateway CA");
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
        Self { dir, issuer: Issuer::new(params, key), ca_pem }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Signs a serving certificate for `names` into `<file>.crt` and `<file>.key` (replacing
    /// them atomically, as an operator's tooling would), and returns its PEM.
    pub fn sign(&self, file: &str, names: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let dir = self.dir.path();
        for (ext, text) in [("key", key.serialize_pem()), ("crt", cert.pem())] {
            let tmp = dir.join(format!(".{file}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(format!("{file}.{ext}"))).unwrap();
        }
        cert.pem()
    }

    /// The `certificates:` entry of a document for `<file>.crt` and `<file>.key`.
    pub fn entry(&self, file: &str) -> String {
        let dir = self.dir.path().display();
        format!("  - {{ cert: {dir}/{file}.crt, key: {dir}/{file}.key }}\n")
    }
}

impl Default for DevCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The proxy, as a sidecar with no app (its admin and outbound addresses).
    pub proxy: Sidecar,
    /// The TLS listener.
    pub tls: String,
    /// The plaintext listener.
    pub plain: String,
    /// Its document.
    pub document: PathBuf,
}

impl Gateway {
    /// Starts `mesh-proxy --gateway` as service `api-gateway` with `document` (written to
    /// `dir/gateway.yaml`), a TLS and a plaintext listener, and waits until it is ready.
    pub async fn start(etcd: &str, dir: &Path, document: &str, extra: &[(&str, &str)]) -> Self {
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, document).unwrap();
        let tls = format!("127.0.0.1:{}", free_port());
        let plain = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            ("MESH_GATEWAY", path.to_str().unwrap()),
            ("MESH_GATEWAY_TLS_ADDR", tls.as_str()),
            ("MESH_GATEWAY_PLAIN_ADDR", plain.as_str()),
            ("MESH_GATEWAY_RELOAD_INTERVAL", "100ms"),
        ];
        env.extend_from_slice(extra);
        let proxy = Sidecar::start(etcd, "api-gateway", "gw-1", "none", &env);
        proxy.ready().await;
        Self { proxy, tls, plain, document: path }
    }
}

/// etcd, one echo instance (`echo-1` of service `echo`, with its sidecar) and a gateway with
/// `document` (and `extra` environment) in front of it, all ready.
pub async fn echo_behind_gateway(
    document: &str,
    extra: &[(&str, &str)],
) -> (crate::etcd::Etcd, crate::mesh::EchoInstance, DevCa, Gateway) {
    let etcd = crate::etcd::Etcd::start().await;
    let echo = crate::mesh::EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    echo.sidecar.ready().await;
    let ca = DevCa::new();
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), document, extra).await;
    (etcd, echo, ca, gateway)
}

/// A TLS client connection to `addr` asking for `server_name` (none: no SNI) and trusting
/// `ca_pem`, offering `alpn`.
pub async fn connect(
    addr: &str,
    server_name: Option<&str>,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = server_name.is_some();
    // Without SNI the certificate is still checked against a name: the default certificate's.
    let name = ServerName::try_from(server_name.unwrap_or("localhost").to_string()).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))
}

/// The DNS names in the leaf certificate a TLS connection was served.
pub fn served_names(tls: &TlsStream<TcpStream>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// One HTTP/1.1 request on an open connection; the response head and body (read to its
/// Content-Length).
pub async fn http1<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    request: &str,
) -> (String, String) {
    tokio::io::AsyncWriteExt::write_all(io, request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::io::AsyncReadExt::read(io, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return (head.to_string(), body.to_string());
            }
        }
    }
}
