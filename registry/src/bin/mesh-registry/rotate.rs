//! Root rotation, in three steps an operator runs with time between them for every proxy to renew
//! (one leaf lifetime x 0.7 is enough):
//!
//! 1. `root add`: a new root (`next.pem`, `next.key.pem`) joins the trust bundle. Proxies learn
//!    to trust it with their next certificate.
//! 2. `root promote`: the new root becomes the issuer (`root.pem`, `root.key.pem`); the old root
//!    stays in the bundle, so old and new certificates keep verifying each other.
//! 3. `root retire`: the bundle keeps only the current root.
//!
//! Every file is replaced atomically (write to a temporary file, then rename), and the serving CA
//! reloads within a second of a change.

use std::path::Path;
use std::time::Duration;

use mesh_registry::identity::TrustDomain;

use crate::ca::{CaError, CaFiles};

fn next_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("next.pem"), dir.join("next.key.pem"))
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io { path: path.to_path_buf(), source })
}

/// Replaces `path` atomically with `contents` (mode 0600 if `private`).
pub(crate) fn replace(path: &Path, contents: &str, private: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| CaError::Io { path: tmp.clone(), source };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|source| CaError::Io { path: path.to_path_buf(), source })
}

/// Step 1: create the next root and add it to the bundle.
pub(crate) fn add(dir: &Path, trust_domain: &TrustDomain, lifetime: Duration) -> Result<(), CaError> {
    let (next_cert, next_key) = next_files(dir);
    if next_cert.exists() {
        return Err(CaError::Exists(next_cert));
    }
    let (cert_pem, key_pem) = crate::ca::new_root(trust_domain, lifetime)?;
    replace(&next_key, &key_pem, true)?;
    replace(&next_cert, &cert_pem, false)?;
    let files = CaFiles::in_dir(dir);
    let bundle = read(&files.bundle)?;
    replace(&files.bundle, &format!("{}\n{cert_pem}", bundle.trim_end()), false)
}

/// Step 2: issue from the next root from now on (the old root stays trusted).
pub(crate) fn promote(dir: &Path) -> Result<(), CaError> {
    let (next_cert, next_key) = next_files(dir);
    let files = CaFiles::in_dir(dir);
    let (cert, key) = (read(&next_cert)?, read(&next_key)?);
    replace(&files.root_key, &key, true)?;
    replace(&files.root_cert, &cert, false)?;
    for path in [next_cert, next_key] {
        std::fs::remove_file(&path).map_err(|source| CaError::Io { path, source })?;
    }
    Ok(())
}

/// Step 3: trust only the current root.
pub(crate) fn retire(dir: &Path) -> Result<(), CaError> {
    let files = CaFiles::in_dir(dir);
    if next_files(dir).0.exists() {
        return Err(CaError::Refused("a next root was added but not promoted yet: promote it first".into()));
    }
    let root = read(&files.root_cert)?;
    replace(&files.bundle, &root, false)
}
