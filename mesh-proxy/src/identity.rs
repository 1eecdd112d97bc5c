//! This proxy's identity: a key generated here (it never leaves the process), a certificate for
//! `spiffe://<trust-domain>/svc/<service>` from the control plane's Certify API in exchange for a
//! join token, and its renewal at about 70 % of the certificate's remaining lifetime, with backoff
//! while the CA is unreachable. The current certificate keeps serving until it expires; after
//! that this proxy presents nothing, so handshakes fail closed.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_proto::identity::v1::CertifyRequest;
use mesh_proto::identity::v1::identity_client::IdentityClient;
use mesh_registry::ServiceName;
use mesh_registry::identity::{Identity, TrustDomain};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};

use crate::metrics::ProxyMetrics;

/// Where and how to obtain an identity.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The control plane's Certify endpoint, `https://host:port`.
    pub ca_addr: Uri,
    /// The name in the CA's TLS certificate.
    pub ca_name: String,
    /// PEM roots that signed the CA's TLS certificate (the mesh trust bundle).
    pub trust_bundle: String,
    /// The join token.
    pub token: String,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Renew when this fraction of the remaining lifetime has passed.
    pub renew_fraction: f64,
}

/// Why an identity could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The CA could not be reached or refused.
    #[error("certificate authority at {addr}: {cause}")]
    Ca {
        /// The CA address.
        addr: String,
        /// Why.
        cause: String,
    },
    /// What came back is unusable.
    #[error("unusable certificate from the CA: {0}")]
    Bad(String),
    /// The token is for another service than this proxy's.
    #[error("the join token is for {got}, but this proxy serves {want}: create a token for {want}")]
    WrongService {
        /// The identity the CA issued.
        got: String,
        /// This proxy's service.
        want: String,
    },
}

/// A certificate, its key and the roots to verify peers with.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub(crate) key: Arc<CertifiedKey>,
    /// The trust bundle as received (also what the next request to the CA trusts).
    pub(crate) bundle_pem: String,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) identity: Identity,
    pub(crate) not_after: SystemTime,
}

/// The current credentials, swapped on renewal: new handshakes use the new certificate,
/// established connections keep theirs.
#[derive(Debug)]
pub(crate) struct IdentityState {
    current: RwLock<Arc<Credentials>>,
    pub(crate) trust_domain: TrustDomain,
}

impl IdentityState {
    pub(crate) fn current(&self) -> Arc<Credentials> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current credentials, unless the certificate has expired (fail closed).
    pub(crate) fn usable(&self) -> Option<Arc<Credentials>> {
        let current = self.current();
        (SystemTime::now() < current.not_after).then_some(current)
    }

    fn replace(&self, credentials: Credentials) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(credentials);
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Generates a key, asks the CA for a certificate, and checks what came back.
pub(crate) async fn obtain(config: &IdentityConfig, service: &ServiceName) -> Result<Credentials, IdentityError> {
    let ca_err = |cause: String| IdentityError::Ca { addr: config.ca_addr.to_string(), cause };
    let bad = |e: &dyn std::fmt::Display| IdentityError::Bad(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| bad(&e))?;
    let csr = CertificateParams::default().serialize_request(&key).map_err(|e| bad(&e))?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.trust_bundle))
        .domain_name(config.ca_name.clone());
    let channel = Endpoint::from(config.ca_addr.clone())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .map_err(|e| ca_err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| ca_err(format!("cannot connect: {e}")))?;
    let reply = IdentityClient::new(channel)
        .certify(CertifyRequest { token: config.token.clone(), csr_der: csr.der().to_vec() })
        .await
        .map_err(|s| ca_err(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();

    let identity: Identity = reply.identity.parse().map_err(|e| bad(&e))?;
    if identity.service() != service {
        return Err(IdentityError::WrongService { got: identity.to_string(), want: service.to_string() });
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(reply.certificate_chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&e))?;
    let leaf = chain.first().ok_or_else(|| IdentityError::Bad("empty certificate chain".into()))?;
    if crate::tls::spiffe_identity(leaf).as_ref() != Some(&identity) {
        return Err(IdentityError::Bad("the certificate does not carry the identity the CA reported".into()));
    }
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(reply.trust_bundle_pem.as_bytes()) {
        roots.add(root.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&private).map_err(|e| bad(&e))?;
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(reply.not_after).unwrap_or(0));
    Ok(Credentials {
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        bundle_pem: reply.trust_bundle_pem,
        roots: Arc::new(roots),
        identity,
        not_after,
    })
}

/// Obtains the first identity, retrying with backoff until it succeeds.
pub(crate) async fn bootstrap(
    config: &IdentityConfig,
    service: &ServiceName,
    metrics: &ProxyMetrics,
) -> Result<Arc<IdentityState>, IdentityError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match obtain(config, service).await {
            Ok(credentials) => {
                metrics.record_identity("ok", unix(credentials.not_after));
                tracing::info!(identity = %credentials.identity, not_after = unix(credentials.not_after), "obtained an identity");
                let trust_domain = config.trust_domain.clone();
                return Ok(Arc::new(IdentityState { current: RwLock::new(Arc::new(credentials)), trust_domain }));
            }
            Err(error @ IdentityError::WrongService { .. }) => return Err(error),
            Err(error) => {
                metrics.record_identity("error", 0);
                tracing::warn!(%error, retry_in = ?delay, "cannot obtain an identity yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Renews the identity for as long as the proxy runs. The CA is trusted through the latest bundle
/// it sent, so a root rotation reaches the proxy's connection to the CA as well.
pub(crate) async fn renew_forever(
    state: Arc<IdentityState>,
    mut config: IdentityConfig,
    service: ServiceName,
    metrics: Arc<ProxyMetrics>,
) {
    config.trust_bundle = state.current().bundle_pem.clone();
    let mut failures = 0u32;
    loop {
        let current = state.current();
        let remaining = current.not_after.duration_since(SystemTime::now()).unwrap_or_default();
        let wait = if failures == 0 {
            remaining.mul_f64(config.renew_fraction)
        } else {
            // While the CA is down: back off, but never sleep past the expiry.
            (Duration::from_secs(1) * 2u32.pow(failures.min(5))).min(remaining / 2).max(Duration::from_millis(200))
        };
        tokio::time::sleep(wait).await;
        match obtain(&config, &service).await {
            Ok(credentials) => {
                failures = 0;
                metrics.record_identity("ok", unix(credentials.not_after));
                tracing::info!(identity = %credentials.identity, not_after = unix(credentials.not_after), "renewed the identity");
                config.trust_bundle = credentials.bundle_pem.clone();
                state.replace(credentials);
            }
            Err(error) => {
                failures += 1;
                metrics.record_identity("error", unix(state.current().not_after));
                tracing::warn!(%error, failures, "identity renewal failed; serving on the current certificate");
            }
        }
    }
}
