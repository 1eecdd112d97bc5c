//! Mutual TLS between proxies (rustls, TLS 1.3 only, ALPN `h2`).
//!
//! Both sides verify the peer's chain against the mesh's trust bundle (WebPKI), then check the
//! one thing WebPKI cannot: the SPIFFE identity in the URI SAN. The client side requires exactly
//! the identity of the service it is calling; the server side requires an identity in the trust
//! domain and hands it to the request path. Certificates and roots are read from the current
//! [`IdentityState`] at every handshake, so a renewal or a root rotation applies to new
//! connections without touching established ones.

use std::sync::Arc;

use mesh_registry::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError, ServerConfig,
    SignatureScheme,
};

use crate::identity::IdentityState;
use crate::identity::spiffe::spiffe_identity;
use crate::telemetry::labels::TlsFailure;

/// The peer presented a valid certificate for another identity than required.
#[derive(Debug, thiserror::Error)]
#[error("wrong identity: expected {expected}, got {got}")]
pub(crate) struct WrongIdentity {
    expected: String,
    got: String,
}

fn wrong_identity(expected: impl ToString, got: Option<Identity>) -> Error {
    let got = got.map_or_else(|| "no spiffe identity".to_string(), |i| i.to_string());
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(WrongIdentity {
        expected: expected.to_string(),
        got,
    }))))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature half of a verifier, the same on both sides: the provider's
/// algorithms, nothing of ours.
macro_rules! handshake_signatures_from_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Presents the current certificate, or nothing once it has expired.
#[derive(Debug)]
struct CurrentCert(Arc<IdentityState>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.usable().map(|c| c.key.clone())
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.usable().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Inbound: a client certificate from the trust bundle, with an identity in our trust domain.
#[derive(Debug)]
struct ClientVerifier {
    state: Arc<IdentityState>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let roots = self.state.current().roots.clone();
        let webpki = WebPkiClientVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        webpki.verify_client_cert(end_entity, intermediates, now)?;
        match spiffe_identity(end_entity) {
            Some(id) if id.trust_domain() == &self.state.trust_domain => Ok(ClientCertVerified::assertion()),
            other => Err(wrong_identity(format!("an identity in {}", self.state.trust_domain), other)),
        }
    }

    handshake_signatures_from_provider!();
}

/// Outbound: the server's chain from the trust bundle, and exactly the expected identity.
#[derive(Debug)]
struct ServerVerifier {
    state: Arc<IdentityState>,
    provider: Arc<CryptoProvider>,
    expected: Identity,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let roots = self.state.current().roots.clone();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_identity(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(wrong_identity(&self.expected, other)),
        }
    }

    handshake_signatures_from_provider!();
}

/// The inbound listener's TLS configuration.
pub(crate) fn server_config(state: &Arc<IdentityState>) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let verifier = Arc::new(ClientVerifier { state: state.clone(), provider: provider.clone() });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert(state.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that accepts only `expected` as the server's identity.
pub(crate) fn client_config(state: &Arc<IdentityState>, expected: Identity) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier { state: state.clone(), provider: provider.clone(), expected });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CurrentCert(state.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The gateway's edge: TLS 1.3 and 1.2, no client certificate, the certificate `resolver` picks
/// for the client's server name, ALPN `h2` then `http/1.1`.
pub(crate) fn edge_server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What rustls says when a certificate resolver had nothing for the client (no `Error` variant).
const NO_CERTIFICATE_RESOLVED: &str = "no server certificate chain resolved";

/// Why a handshake failed, for its event.
pub(crate) fn failure_reason(error: &std::io::Error) -> TlsFailure {
    if error.kind() == std::io::ErrorKind::TimedOut {
        return TlsFailure::Timeout;
    }
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return TlsFailure::Io;
    };
    match tls {
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => TlsFailure::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => TlsFailure::NotYetValid,
            CertificateError::UnknownIssuer | CertificateError::BadSignature => TlsFailure::UnknownCa,
            CertificateError::Other(other) if other.0.is::<WrongIdentity>() => TlsFailure::WrongIdentity,
            _ => TlsFailure::BadCertificate,
        },
        Error::NoCertificatesPresented => TlsFailure::NoClientCertificate,
        Error::AlertReceived(_) => TlsFailure::RejectedByPeer,
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            TlsFailure::NotTls
        }
        Error::NoApplicationProtocol => TlsFailure::NoAlpn,
        Error::PeerIncompatible(_) => TlsFailure::Incompatible,
        Error::General(message) if message == NO_CERTIFICATE_RESOLVED => TlsFailure::UnknownServerName,
        _ => TlsFailure::Other,
    }
}
