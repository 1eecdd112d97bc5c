//! The mesh's certificate authority: a root (created by `mesh-registry init`, or brought by the
//! operator) that signs short-lived leaf certificates carrying exactly one identity,
//! `spiffe://<trust-domain>/svc/<service>`, the service bound to the join token presented.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_registry::ServiceName;
use mesh_registry::identity::{Identity, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Leaf certificates start this far in the past, so peers with slightly slow clocks accept them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Files in the CA directory.
///
/// - `root.pem`, `root.key.pem`: the issuer: a root created by `init`, or an intermediate under a
///   root the operator brings.
/// - `bundle.pem`: the roots every workload trusts.
/// - `chain.pem` (optional): certificates between the issuer and a root in the bundle (with an
///   intermediate issuer: the intermediate itself, and any above it), sent with every leaf.
pub(crate) struct CaFiles {
    pub(crate) root_cert: PathBuf,
    pub(crate) root_key: PathBuf,
    pub(crate) bundle: PathBuf,
    pub(crate) chain: PathBuf,
}

impl CaFiles {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            root_cert: dir.join("root.pem"),
            root_key: dir.join("root.key.pem"),
            bundle: dir.join("bundle.pem"),
            chain: dir.join("chain.pem"),
        }
    }
}

/// Why the CA could not do something.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists; refusing to overwrite a CA (remove the directory to start over)")]
    Exists(PathBuf),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    #[error("{0}")]
    Refused(String),
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io { path: path.to_path_buf(), source })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| CaError::Io { path: path.to_path_buf(), source })?;
    file.write_all(contents.as_bytes()).map_err(|source| CaError::Io { path: path.to_path_buf(), source })
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// Creates a new root in `dir`: `root.pem`, `root.key.pem` (mode 0600) and `bundle.pem`.
pub(crate) fn init(dir: &Path, trust_domain: &TrustDomain, lifetime: Duration) -> Result<(), CaError> {
    let files = CaFiles::in_dir(dir);
    for path in [&files.root_cert, &files.root_key, &files.bundle] {
        if path.exists() {
            return Err(CaError::Exists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io { path: dir.to_path_buf(), source })?;
    let (cert_pem, key_pem) = new_root(trust_domain, lifetime)?;
    write(&files.root_key, &key_pem, true)?;
    write(&files.root_cert, &cert_pem, false)?;
    write(&files.bundle, &cert_pem, false)?;
    Ok(())
}

/// A new self-signed root: (certificate PEM, key PEM).
pub(crate) fn new_root(trust_domain: &TrustDomain, lifetime: Duration) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(3600));
    params.not_after = OffsetDateTime::from(now + lifetime);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("mesh root CA ({trust_domain})"));
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A loaded CA.
pub(crate) struct Ca {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    bundle_pem: String,
    /// Intermediates sent after each leaf (empty when the issuer is a root).
    chain_pem: String,
    leaf_lifetime: Duration,
}

impl Ca {
    /// Loads the root (or intermediate) and trust bundle from `dir`.
    pub(crate) fn load(dir: &Path, trust_domain: TrustDomain, leaf_lifetime: Duration) -> Result<Self, CaError> {
        // (Root files are replaced atomically by `rotate`, so a load never sees half a file.)
        let files = CaFiles::in_dir(dir);
        let key = KeyPair::from_pem(&read(&files.root_key)?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&files.root_cert)?, key)?;
        let chain_pem = if files.chain.exists() { read(&files.chain)? } else { String::new() };
        Ok(Self { trust_domain, issuer, bundle_pem: read(&files.bundle)?, chain_pem, leaf_lifetime })
    }

    pub(crate) fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Signs a leaf for `service` with the public key of `csr_der`. Nothing else in the CSR is
    /// used: its names, extensions and validity are the caller's wishes, not the token's grant.
    pub(crate) fn issue(&self, csr_der: &[u8], service: &ServiceName) -> Result<Leaf, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map_err(CaError::BadCsr)?;
        let identity = Identity::new(self.trust_domain.clone(), service.clone());
        let now = SystemTime::now();
        let (not_before, not_after) = (now - BACKDATE, now + self.leaf_lifetime);
        let mut params = CertificateParams::default();
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, service.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let leaf = CertificateSigningRequestParams { params, public_key: csr.public_key }.signed_by(&self.issuer)?;
        Ok(Leaf { chain_pem: self.with_chain(leaf.pem()), identity, not_before, not_after })
    }

    /// A certificate and key for the CA's own TLS endpoint, valid for `names` (DNS names or IPs).
    pub(crate) fn serving_identity(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(now + Duration::from_secs(365 * 24 * 3600));
        let service: ServiceName = "mesh-registry".parse().map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let identity = Identity::new(self.trust_domain.clone(), service);
        params.subject_alt_names.push(SanType::URI(identity.uri().try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((self.with_chain(cert.pem()), key.serialize_pem()))
    }

    /// A leaf followed by the intermediates, if any.
    fn with_chain(&self, leaf_pem: String) -> String {
        if self.chain_pem.trim().is_empty() {
            leaf_pem
        } else {
            format!("{}\n{}", leaf_pem.trim_end(), self.chain_pem.trim())
        }
    }
}

/// An issued certificate.
pub(crate) struct Leaf {
    pub(crate) chain_pem: String,
    pub(crate) identity: Identity,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}
