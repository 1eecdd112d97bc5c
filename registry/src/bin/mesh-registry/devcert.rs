//! `mesh-registry dev-cert`: a development CA and a serving certificate signed by it, for the
//! gateway's TLS listener where no real certificate is at hand (compose's bootstrap). The CA is the
//! edge's own, not the mesh's root: what outside clients trust says nothing about mesh identities.
//!
//! Files in `--out`: `dev-ca.crt` (what clients trust), `dev-ca.key`, and `<name>.crt`,
//! `<name>.key` for the serving certificate. Idempotent: existing files are kept, so a client that
//! trusts the CA keeps trusting it; `--renew` signs the serving certificate again (the CA stays).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::OffsetDateTime;

/// What `dev-cert` did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) created_ca: bool,
    pub(crate) signed: bool,
}

/// Makes (or keeps) the CA in `dir` and a serving certificate `<file>.crt` for `names` (DNS names
/// or IP addresses), valid for `lifetime`.
pub(crate) fn dev_cert(
    dir: &Path,
    file: &str,
    names: &[String],
    lifetime: Duration,
    renew: bool,
) -> Result<Outcome, String> {
    if names.is_empty() {
        return Err("give at least one --name".into());
    }
    if file.is_empty() || !file.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("--file {file:?}: use letters, digits, `-` and `_`"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("dev-ca.crt"), dir.join("dev-ca.key"));
    let created_ca = !ca_cert.exists();
    if created_ca {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "mesh development edge CA");
        params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(300);
        params.not_after = OffsetDateTime::now_utc() + Duration::from_secs(10 * 365 * 86_400);
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        write(&ca_key, &key.serialize_pem())?;
        write(&ca_cert, &cert.pem())?;
    }
    let (leaf_cert, leaf_key) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    if leaf_cert.exists() && !renew && !created_ca {
        return Ok(Outcome { created_ca, signed: false });
    }
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca_key = KeyPair::from_pem(&read(&ca_key)?).map_err(|e| format!("{}: {e}", ca_key.display()))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_key).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    for name in names {
        params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into().map_err(|e| format!("--name {name:?}: {e}"))?),
        });
    }
    params.distinguished_name.push(DnType::CommonName, names[0].as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(300);
    params.not_after = OffsetDateTime::now_utc() + lifetime;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    // The key first: a reader that sees the new certificate finds its key.
    write(&leaf_key, &key.serialize_pem())?;
    write(&leaf_cert, &cert.pem())?;
    Ok(Outcome { created_ca, signed: true })
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_kept_and_the_certificate_names_what_was_asked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let day = Duration::from_secs(86_400);
        let first = dev_cert(dir.path(), "gateway", &names, day, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, Outcome { created_ca: true, signed: true });
        let ca = std::fs::read(dir.path().join("dev-ca.crt")).unwrap_or_default();
        let again = dev_cert(dir.path(), "gateway", &names, day, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, Outcome { created_ca: false, signed: false }, "kept as it was");
        let renewed = dev_cert(dir.path(), "gateway", &names, day, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(renewed, Outcome { created_ca: false, signed: true });
        assert_eq!(std::fs::read(dir.path().join("dev-ca.crt")).unwrap_or_default(), ca, "the CA stays");

        let pem = std::fs::read(dir.path().join("gateway.crt")).unwrap_or_default();
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap_or_else(|e| panic!("{e}"));
        let cert = block.parse_x509().unwrap_or_else(|e| panic!("{e}"));
        let san = cert.subject_alternative_name().ok().flatten().map(|s| format!("{:?}", s.value)).unwrap_or_default();
        assert!(san.contains("DNSName(\"localhost\")") && san.contains("IPAddress([127, 0, 0, 1])"), "{san}");
        assert!(dev_cert(dir.path(), "../x", &names, day, false).is_err());
        assert!(dev_cert(dir.path(), "gateway", &[], day, false).is_err());
    }
}
