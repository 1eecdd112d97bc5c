//! `meshctl validate | apply | show | remove`: service policy documents (timeouts, retries, the
//! retry budget; `docs/policy.schema.json`). A file is checked whole before anything is written,
//! so a document the proxies cannot use never reaches them; errors name the line and column.

use std::path::{Path, PathBuf};

use etcd_client::Client;
use mesh_registry::policy::{PolicyError, ServicePolicy};
use mesh_registry::{Layout, ServiceName};

use crate::output::{Format, print_json};

/// Why a service policy command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: PolicyError },
    #[error("no service policy for {0}: its calls follow the built-in defaults")]
    NotFound(ServiceName),
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
}

/// Reads and checks a document.
pub(crate) fn load(file: &Path) -> Result<ServicePolicy, ApplyError> {
    let bytes = std::fs::read(file).map_err(|source| ApplyError::Read { path: file.to_path_buf(), source })?;
    ServicePolicy::parse(&bytes).map_err(|source| ApplyError::Invalid { path: file.to_path_buf(), source })
}

/// `meshctl validate -f <file>`: needs no etcd.
pub(crate) fn validate(file: &Path) -> Result<(), ApplyError> {
    let policy = load(file)?;
    println!("{}: valid service policy {:?} ({} method entries)", file.display(), policy.version, policy.methods.len());
    Ok(())
}

/// `meshctl apply <service> -f <file>`.
pub(crate) async fn apply(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    file: &Path,
) -> Result<(), ApplyError> {
    let policy = load(file)?;
    let value = serde_json::to_vec(&policy).unwrap_or_default();
    client.put(layout.policy(service), value, None).await?;
    println!("applied the service policy for {service}; its callers' proxies follow it within a second");
    Ok(())
}

/// `meshctl show <service>`.
pub(crate) async fn show(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    format: Format,
) -> Result<(), ApplyError> {
    let resp = client.get(layout.policy(service), None).await?;
    let kv = resp.kvs().first().ok_or_else(|| ApplyError::NotFound(service.clone()))?;
    let value: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null);
    match format {
        Format::Json => print_json(&value),
        Format::Table => println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default()),
    }
    Ok(())
}

/// `meshctl remove <service>`.
pub(crate) async fn remove(client: &mut Client, layout: &Layout, service: &ServiceName) -> Result<(), ApplyError> {
    if client.delete(layout.policy(service), None).await?.deleted() == 0 {
        return Err(ApplyError::NotFound(service.clone()));
    }
    println!("removed the service policy for {service}; its calls follow the built-in defaults");
    Ok(())
}
