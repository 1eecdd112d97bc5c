//! This proxy's identity: a key generated here (it never leaves the process), a certificate for
//! `spiffe://<trust-domain>/svc/<service>` from the control plane's Certify API in exchange for a
//! join token, and its renewal at about 70 % of the certificate's remaining lifetime, with backoff
//! while the CA is unreachable. The current certificate keeps serving until it expires; after
//! that this proxy presents nothing, so handshakes fail closed. ([`spiffe`]: the SPIFFE identity
//! in a certificate.)

pub(crate) mod spiffe;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_common::backoff::Backoff;
use parking_lot::RwLock;

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

use crate::telemetry::Telemetry;
use crate::telemetry::events::{CertificateIssued, CertificateRequestFailed};

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
        self.current.read().clone()
    }

    /// The current credentials, unless the certificate has expired (fail closed).
    pub(crate) fn usable(&self) -> Option<Arc<Credentials>> {
        let current = self.current();
        (SystemTime::now() < current.not_after).then_some(current)
    }

    fn replace(&self, credentials: Credentials) {
        *self.current.write() = Arc::new(credentials);
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
    if spiffe::spiffe_identity(leaf).as_ref() != Some(&identity) {
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

/// Where certificates come from: the control plane's Certify API ([`CertifyClient`]), or a
/// test's fake.
pub(crate) trait Issuer: Send + 'static {
    /// Generates a key and gets a certificate for it.
    fn issue(&mut self) -> impl Future<Output = Result<Credentials, IdentityError>> + Send;
}

/// The control plane's Certify API, trusted through the latest bundle it sent, so that a root
/// rotation reaches the proxy's connection to the CA as well.
#[derive(Debug)]
pub(crate) struct CertifyClient {
    config: IdentityConfig,
    service: ServiceName,
}

impl CertifyClient {
    pub(crate) fn new(config: IdentityConfig, service: ServiceName) -> Self {
        Self { config, service }
    }
}

impl Issuer for CertifyClient {
    async fn issue(&mut self) -> Result<Credentials, IdentityError> {
        let credentials = obtain(&self.config, &self.service).await?;
        self.config.trust_bundle.clone_from(&credentials.bundle_pem);
        Ok(credentials)
    }
}

/// Obtains the first identity, retrying with backoff (200 ms doubling to 10 s) until it succeeds;
/// a token for another service is an error at once.
pub(crate) async fn bootstrap<I: Issuer>(
    issuer: &mut I,
    trust_domain: TrustDomain,
    telemetry: &Telemetry,
) -> Result<Arc<IdentityState>, IdentityError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match issuer.issue().await {
            Ok(credentials) => {
                let not_after = unix(credentials.not_after);
                CertificateIssued { identity: &credentials.identity, not_after, renewal: false }.emit(telemetry);
                return Ok(Arc::new(IdentityState { current: RwLock::new(Arc::new(credentials)), trust_domain }));
            }
            Err(error @ IdentityError::WrongService { .. }) => return Err(error),
            Err(error) => {
                let retry_in = backoff.next_delay();
                let failures = backoff.failures();
                CertificateRequestFailed { error: &error, failures, retry_in, serving: false }.emit(telemetry);
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// How long to wait before the next certificate request: `fraction` of the remaining lifetime
/// after a success; after a failure the backoff's delay, but never more than half of what is left,
/// so that a CA that comes back before the expiry is asked in time.
pub(crate) fn next_request(remaining: Duration, fraction: f64, backoff: Option<Duration>) -> Duration {
    match backoff {
        None => remaining.mul_f64(fraction),
        Some(delay) => delay.min(remaining / 2).max(Duration::from_millis(200)),
    }
}

/// Renews the identity for as long as the proxy runs.
pub(crate) async fn renew_forever<I: Issuer>(
    state: Arc<IdentityState>,
    mut issuer: I,
    renew_fraction: f64,
    telemetry: Arc<Telemetry>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(32));
    let mut failed: Option<Duration> = None;
    loop {
        let remaining = state.current().not_after.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(next_request(remaining, renew_fraction, failed)).await;
        match issuer.issue().await {
            Ok(credentials) => {
                backoff.reset();
                failed = None;
                let not_after = unix(credentials.not_after);
                CertificateIssued { identity: &credentials.identity, not_after, renewal: true }.emit(&telemetry);
                state.replace(credentials);
            }
            Err(error) => {
                let retry_in = backoff.next_delay();
                failed = Some(retry_in);
                let failures = backoff.failures();
                CertificateRequestFailed { error: &error, failures, retry_in, serving: true }.emit(&telemetry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use parking_lot::Mutex;
    use tokio::time::Instant;

    use super::*;

    /// Credentials valid for `lifetime` from now (a self-signed certificate; nothing verifies it).
    fn credentials(lifetime: Duration) -> Credentials {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap_or_else(|e| panic!("{e}"));
        let cert = CertificateParams::new(vec!["fake".to_string()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&private).unwrap_or_else(|e| panic!("{e}"));
        Credentials {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)),
            bundle_pem: String::new(),
            roots: Arc::new(RootCertStore::empty()),
            identity: "spiffe://mesh.local/svc/orders".parse().unwrap_or_else(|e| panic!("{e}")),
            not_after: SystemTime::now() + lifetime,
        }
    }

    /// A CA that answers from a script (ok with a lifetime, or a failure) and notes when it was asked.
    struct Scripted {
        answers: VecDeque<Option<Duration>>,
        asked: Arc<Mutex<Vec<Instant>>>,
    }

    impl Issuer for Scripted {
        async fn issue(&mut self) -> Result<Credentials, IdentityError> {
            self.asked.lock().push(Instant::now());
            match self.answers.pop_front().flatten() {
                Some(lifetime) => Ok(credentials(lifetime)),
                None => Err(IdentityError::Ca { addr: "fake".into(), cause: "down".into() }),
            }
        }
    }

    fn telemetry() -> Arc<Telemetry> {
        Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn gaps(asked: &[Instant], from: Instant) -> Vec<u64> {
        let mut last = from;
        asked
            .iter()
            .map(|t| {
                let gap = t.duration_since(last).as_secs();
                last = *t;
                gap
            })
            .collect()
    }

    // Wall-clock expiry (`SystemTime`) stands still on paused time, so each certificate's remaining
    // lifetime at renewal is its whole lifetime: the schedule is read off the gaps between requests.
    #[tokio::test(start_paused = true)]
    async fn certificates_are_renewed_at_the_fraction_and_failures_back_off_within_the_lifetime() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let hour = Duration::from_secs(3600);
        let answers = [Some(hour), Some(hour), None, None, None, Some(hour), Some(hour)];
        let issuer = Scripted { answers: answers.into_iter().collect(), asked: asked.clone() };
        let state = Arc::new(IdentityState {
            current: RwLock::new(Arc::new(credentials(hour))),
            trust_domain: "mesh.local".parse().unwrap_or_else(|e| panic!("{e}")),
        });
        let started = Instant::now();
        let renewing = tokio::spawn(renew_forever(state, issuer, 0.7, telemetry()));
        tokio::time::sleep(hour * 4).await;
        renewing.abort();
        let gaps = gaps(&asked.lock(), started);
        // 70 % of an hour (2520 s) after each success; after a failure 1 s, 2 s, 4 s (less up to
        // half, jitter), then back to the schedule.
        // (A second less when the wall clock ticks over while a certificate is made.)
        assert!(gaps[..3].iter().all(|g| (2519..=2520).contains(g)), "{gaps:?}");
        assert!(gaps[3] <= 1, "first retry within 1 s: {gaps:?}");
        assert!((1..=2).contains(&gaps[4]), "second within 2 s: {gaps:?}");
        assert!((2..=4).contains(&gaps[5]), "third within 4 s: {gaps:?}");
        assert!((2519..=2520).contains(&gaps[6]), "back on the schedule after a success: {gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_certificate_is_retried_until_it_comes_and_a_wrong_service_stops_at_once() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let answers = [None, None, None, Some(Duration::from_secs(60))];
        let mut issuer = Scripted { answers: answers.into_iter().collect(), asked: asked.clone() };
        let domain: TrustDomain = "mesh.local".parse().unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let state = bootstrap(&mut issuer, domain.clone(), &telemetry()).await;
        assert!(state.is_ok());
        let gaps = gaps(&asked.lock(), started);
        assert_eq!(gaps.len(), 4);
        assert!(started.elapsed() <= Duration::from_millis(200 + 400 + 800), "200 ms doubling: {gaps:?}");

        /// A CA that issues for another service.
        struct Wrong;
        impl Issuer for Wrong {
            async fn issue(&mut self) -> Result<Credentials, IdentityError> {
                Err(IdentityError::WrongService { got: "users".into(), want: "orders".into() })
            }
        }
        let started = Instant::now();
        assert!(matches!(bootstrap(&mut Wrong, domain, &telemetry()).await, Err(IdentityError::WrongService { .. })));
        assert_eq!(started.elapsed(), Duration::ZERO, "no retry for a token of another service");
    }

    #[test]
    fn the_next_request_never_waits_past_half_of_what_is_left() {
        let s = Duration::from_secs;
        assert_eq!(next_request(s(100), 0.7, None), s(70));
        assert_eq!(next_request(s(100), 0.7, Some(s(8))), s(8));
        assert_eq!(next_request(s(10), 0.7, Some(s(8))), s(5), "half of the 10 s left");
        assert_eq!(next_request(s(0), 0.7, Some(s(8))), Duration::from_millis(200), "expired: keep asking");
    }
}
