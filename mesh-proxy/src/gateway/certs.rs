//! The gateway's serving certificates: read from the operator's PEM files, chosen per connection by
//! the server name the client asks for (SNI), replaced as a whole when the files change (`reload.rs`).
//!
//! A certificate serves the DNS names in its subject alternative names, exact or wildcard
//! (`*.example.com`, one label). A client that sends no server name (one dialling an IP address)
//! gets the first certificate; one that asks for a name no certificate has is refused
//! (`unknown_server_name`). Handshakes in progress keep the table they started with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_registry::gateway::CertificateFiles;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One loaded certificate.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The DNS names it serves.
    pub(crate) names: Vec<String>,
    /// When it expires.
    pub(crate) not_after: SystemTime,
    key: Arc<CertifiedKey>,
}

/// The certificates in force.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// In the document's order: the first is served to clients without SNI.
    pub(crate) loaded: Vec<Loaded>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl Table {
    /// Reads every certificate and key; any that cannot be used fails the whole table, naming the file.
    pub(crate) fn load(files: &[CertificateFiles]) -> Result<Self, String> {
        let mut table = Self::default();
        for file in files {
            let loaded = load_one(file)?;
            let index = table.loaded.len();
            for name in &loaded.names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.to_string()),
                    None => table.exact.entry(name.clone()),
                };
                // The first certificate that names a host serves it.
                map.or_insert(index);
            }
            table.loaded.push(loaded);
        }
        Ok(table)
    }

    /// The certificate for `server_name` (or the default, when the client sent none).
    fn pick(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let index = match server_name {
            None => 0,
            Some(name) => {
                let name = name.to_ascii_lowercase();
                match self.exact.get(&name) {
                    Some(index) => *index,
                    None => *name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent))?,
                }
            }
        };
        self.loaded.get(index).map(|l| &l.key)
    }
}

fn load_one(file: &CertificateFiles) -> Result<Loaded, String> {
    let named = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&file.cert)
        .map_err(|e| named(&file.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| named(&file.cert, &e))?;
    let leaf = chain.first().ok_or_else(|| named(&file.cert, &"no PEM certificate in it"))?;
    let key = PrivateKeyDer::from_pem_file(&file.key).map_err(|e| named(&file.key, &e))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| named(&file.key, &e))?;
    let (names, not_after) = describe(leaf).map_err(|e| named(&file.cert, &e))?;
    let key = CertifiedKey::new(chain, signing_key);
    key.keys_match().map_err(|e| format!("{} and {}: {e}", file.cert.display(), file.key.display()))?;
    Ok(Loaded { names, not_after, key: Arc::new(key) })
}

/// The leaf's DNS names (lowercase) and expiry.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((names, UNIX_EPOCH + Duration::from_secs(seconds)))
}

/// Picks each handshake's certificate from the table in force.
#[derive(Debug, Default)]
pub(crate) struct Certificates(RwLock<Arc<Table>>);

impl Certificates {
    /// Puts `table` in force for new handshakes.
    pub(crate) fn replace(&self, table: Table) {
        *self.0.write() = Arc::new(table);
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().pick(hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, names: &[&str]) -> CertificateFiles {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let files = CertificateFiles { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        std::fs::write(&files.cert, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&files.key, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        files
    }

    #[test]
    fn names_pick_their_certificate_and_no_name_gets_the_first() {
        let dir = std::env::temp_dir().join(format!("mesh-gw-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let a = write(&dir, "a", &["api.example.com"]);
        let b = write(&dir, "b", &["*.example.com", "other.test"]);
        let table = Table::load(&[a, b.clone()]).unwrap_or_else(|e| panic!("{e}"));
        let picked = |name: Option<&str>| table.pick(name).map(Arc::as_ptr);
        let (first, second) = (Some(Arc::as_ptr(&table.loaded[0].key)), Some(Arc::as_ptr(&table.loaded[1].key)));
        assert_eq!(picked(Some("api.example.com")), first);
        assert_eq!(picked(Some("API.Example.com")), first, "names are case-insensitive");
        assert_eq!(picked(Some("www.example.com")), second, "a wildcard covers one label");
        assert_eq!(picked(Some("a.b.example.com")), None);
        assert_eq!(picked(Some("other.test")), second);
        assert_eq!(picked(Some("unknown.test")), None);
        assert_eq!(picked(None), first);
        assert!(table.loaded[0].not_after > SystemTime::now());

        // A key that is not the certificate's, or a missing file, fails the load and says which.
        let mismatched = CertificateFiles { cert: b.cert.clone(), key: dir.join("a.key") };
        let error = Table::load(&[mismatched]).err().unwrap_or_default();
        assert!(error.contains("b.crt and") && error.contains("a.key"), "{error}");
        let missing = CertificateFiles { cert: dir.join("nope.crt"), key: b.key };
        assert!(Table::load(&[missing]).err().unwrap_or_default().contains("nope.crt"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
