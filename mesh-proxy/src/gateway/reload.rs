//! Following the gateway's files: the document, the certificate and key files and the JWKS file it
//! names. Every interval each file's modification time and size are compared with the last seen; on
//! a change the document is read again with everything it names, and all of it is put in force
//! together, for new requests and new handshakes (connections already open are not touched). A
//! change that cannot be used is reported once and what was in force stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_registry::gateway::GatewayDocument;

use super::auth::Verifier;
use super::certs::{Certificates, Table};
use super::{Gateway, InForce};
use crate::telemetry::Telemetry;
use crate::telemetry::events::{GatewayLoaded, GatewayReloadFailed};

/// A document read, with what it names loaded.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) document: GatewayDocument,
    pub(crate) certificates: Table,
    pub(crate) verifier: Option<Verifier>,
}

/// Reads the document at `path` and loads the certificates and keys it names. Errors name the
/// file, and the line or the entry.
pub(crate) fn load(path: &Path) -> Result<Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let document = GatewayDocument::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let certificates = Table::load(&document.certificates)?;
    let verifier = document.auth.as_ref().map(Verifier::load).transpose()?;
    Ok(Loaded { document, certificates, verifier })
}

/// Puts a loaded document and what it names in force.
pub(crate) fn install(
    loaded: Loaded,
    gateway: &Gateway,
    certificates: &Certificates,
    telemetry: &Telemetry,
    reload: bool,
) {
    let Loaded { document, certificates: table, verifier } = loaded;
    let expiries: Vec<(&str, i64)> = table
        .loaded
        .iter()
        .map(|l| {
            let name = l.names.first().map_or("", String::as_str);
            let seconds = l.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            (name, i64::try_from(seconds).unwrap_or(i64::MAX))
        })
        .collect();
    GatewayLoaded { routes: document.routes.len(), certificates: &expiries, reload }.emit(telemetry);
    drop(expiries);
    certificates.replace(table);
    *gateway.state.write() = Arc::new(InForce { document, verifier, limiter: Default::default() });
}

/// What is watched: the document and every file it names.
type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn fingerprint(path: &Path, document: &GatewayDocument) -> Fingerprint {
    let certificates = document.certificates.iter().flat_map(|c| [c.cert.clone(), c.key.clone()]);
    let jwks = document.auth.iter().map(|a| a.jwks_file.clone());
    std::iter::once(path.to_path_buf())
        .chain(certificates)
        .chain(jwks)
        .map(|file| {
            let seen = std::fs::metadata(&file).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
            (file, seen)
        })
        .collect()
}

/// Follows the files until the proxy stops.
pub(crate) async fn follow(
    path: PathBuf,
    interval: Duration,
    gateway: Arc<Gateway>,
    certificates: Arc<Certificates>,
    telemetry: Arc<Telemetry>,
) {
    let mut seen = fingerprint(&path, &gateway.state.read().document);
    loop {
        tokio::time::sleep(interval).await;
        let current = gateway.state.read().clone();
        let now = fingerprint(&path, &current.document);
        if now == seen {
            continue;
        }
        // A file being written may be read half-written: wait for it to settle.
        tokio::time::sleep(interval.min(Duration::from_millis(200))).await;
        seen = fingerprint(&path, &current.document);
        match load(&path) {
            Ok(loaded) => {
                seen = fingerprint(&path, &loaded.document);
                install(loaded, &gateway, &certificates, &telemetry, true);
            }
            // Reported once per change, not at every poll.
            Err(error) => GatewayReloadFailed { error: &error }.emit(&telemetry),
        }
    }
}
