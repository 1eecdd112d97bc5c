//! Following the gateway's document and certificate files: every interval each file's modification
//! time and size are compared with the last seen; on a change the document is read again and its
//! certificates loaded, and both are put in force together, for new requests and new handshakes
//! (connections already open are not touched). A change that cannot be used is reported once and
//! the previous document and certificates stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_registry::gateway::GatewayDocument;

use super::Gateway;
use super::certs::{Certificates, Table};
use crate::telemetry::Telemetry;
use crate::telemetry::events::{GatewayLoaded, GatewayReloadFailed};

/// Reads the document at `path` and loads the certificates it names. Errors name the file, and
/// the line or the entry.
pub(crate) fn load(path: &Path) -> Result<(GatewayDocument, Table), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let document = GatewayDocument::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let table = Table::load(&document.certificates)?;
    Ok((document, table))
}

/// Puts a loaded document and its certificates in force.
pub(crate) fn install(
    (document, table): (GatewayDocument, Table),
    gateway: &Gateway,
    certificates: &Certificates,
    telemetry: &Telemetry,
    reload: bool,
) {
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
    *gateway.document.write() = Arc::new(document);
}

/// What is watched: the document and every certificate and key file it names.
type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn fingerprint(path: &Path, document: &GatewayDocument) -> Fingerprint {
    let files = document.certificates.iter().flat_map(|c| [c.cert.clone(), c.key.clone()]);
    std::iter::once(path.to_path_buf())
        .chain(files)
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
    let mut seen = fingerprint(&path, &gateway.document.read());
    loop {
        tokio::time::sleep(interval).await;
        let current = gateway.document.read().clone();
        let now = fingerprint(&path, &current);
        if now == seen {
            continue;
        }
        // A file being written may be read half-written: wait for it to settle.
        tokio::time::sleep(interval.min(Duration::from_millis(200))).await;
        seen = fingerprint(&path, &current);
        match load(&path) {
            Ok(loaded) => {
                seen = fingerprint(&path, &loaded.0);
                install(loaded, &gateway, &certificates, &telemetry, true);
            }
            // Reported once per change, not at every poll.
            Err(error) => GatewayReloadFailed { error: &error }.emit(&telemetry),
        }
    }
}
