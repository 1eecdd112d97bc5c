//! SPIFFE identities in certificates: the one thing WebPKI does not check for the mesh.

use mesh_registry::identity::Identity;
use rustls::pki_types::CertificateDer;

/// The only identity in a certificate: its single `spiffe://` URI SAN.
pub(crate) fn spiffe_identity(cert: &CertificateDer<'_>) -> Option<Identity> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    let (first, more) = (uris.next()?, uris.next());
    if more.is_some() {
        return None;
    }
    first.parse().ok()
}
