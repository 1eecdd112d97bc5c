//! Following the gateway's files: the document, the certificate and key files and the JWKS file it
//! names. Every interval each file's modification time and size are compared with the last seen; on
//! a change the document is read again with everything it names, and all of it is put in force
//! together, for new requests and new handshakes (connections already open are not touched). A
//! change that cannot be used is reported once and what was in force stays.
//!
//! Also followed: the routes kept in etcd for this gateway's service (`Layout::gateway`), put after
//! the file's. A change there is put in force with the file's document as it is on disk; an etcd
//! document that cannot be used is reported once, and the last good routes from etcd stay (with
//! later changes of the file too).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_registry::gateway::{GatewayDocument, GatewayRoute};
use mesh_registry::watch_prefix::Values;
use tokio::sync::watch;

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

/// The routes kept in etcd for this gateway: the watched value, and the key in it.
#[derive(Debug)]
pub(crate) struct EtcdRoutes {
    pub(crate) values: watch::Receiver<Values>,
    pub(crate) key: String,
}

impl EtcdRoutes {
    /// The routes stored now (none if the key is absent), or why they cannot be used.
    fn current(&self) -> Result<Vec<GatewayRoute>, String> {
        match self.values.borrow().get(&self.key) {
            None => Ok(Vec::new()),
            Some(entry) => GatewayDocument::parse_routes(&entry.value)
                .map_err(|e| format!("{} (etcd revision {}): {e}", self.key, entry.revision)),
        }
    }
}

/// Follows the files (and the routes in etcd, if given) until the proxy stops.
pub(crate) async fn follow(
    path: PathBuf,
    interval: Duration,
    gateway: Arc<Gateway>,
    certificates: Arc<Certificates>,
    telemetry: Arc<Telemetry>,
    mut etcd: Option<EtcdRoutes>,
) {
    let mut seen = fingerprint(&path, &gateway.state.read().document);
    // The last routes from etcd that could be used (put in force with the file's).
    let mut from_etcd: Vec<GatewayRoute> = Vec::new();
    loop {
        let etcd_changed = async {
            match etcd.as_mut() {
                Some(routes) => routes.values.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let routes_changed = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            changed = etcd_changed => changed,
        };
        if routes_changed {
            match etcd.as_ref().map_or(Ok(Vec::new()), EtcdRoutes::current) {
                Ok(routes) if routes == from_etcd => continue,
                Ok(routes) => match load_with(&path, &routes) {
                    Ok(loaded) => {
                        seen = fingerprint(&path, &loaded.document);
                        from_etcd = routes;
                        install(loaded, &gateway, &certificates, &telemetry, true);
                    }
                    Err(error) => GatewayReloadFailed { error: &error }.emit(&telemetry),
                },
                Err(error) => GatewayReloadFailed { error: &error }.emit(&telemetry),
            }
            continue;
        }
        let current = gateway.state.read().clone();
        let now = fingerprint(&path, &current.document);
        if now == seen {
            continue;
        }
        // A file being written may be read half-written: wait for it to settle.
        tokio::time::sleep(interval.min(Duration::from_millis(200))).await;
        seen = fingerprint(&path, &current.document);
        match load_with(&path, &from_etcd) {
            Ok(loaded) => {
                seen = fingerprint(&path, &loaded.document);
                install(loaded, &gateway, &certificates, &telemetry, true);
            }
            // Reported once per change, not at every poll.
            Err(error) => GatewayReloadFailed { error: &error }.emit(&telemetry),
        }
    }
}

/// [`load`], with `routes` from etcd after the file's.
fn load_with(path: &Path, routes: &[GatewayRoute]) -> Result<Loaded, String> {
    let mut loaded = load(path)?;
    loaded.document = loaded.document.with_routes(routes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(loaded)
}
