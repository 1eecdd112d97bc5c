//! `meshctl validate | diff | apply | history | rollback | show | remove`: service policy
//! documents (`docs/policy.md`, schema `docs/policy.schema.json`), in JSON or YAML. A file is
//! checked whole before anything is written, so a document the proxies cannot use never reaches
//! them; errors name the line and column, or the route. Every change is a numbered version in a
//! bounded history (`mesh_registry::versions`), with who made it and when.

use std::path::{Path, PathBuf};

use etcd_client::Client;
use mesh_registry::policy::{MAX_POLICY_BYTES, PolicyError, ServicePolicy};
use mesh_registry::versions::{self, Action, Version, VersionError};
use mesh_registry::{Layout, ServiceName};

use crate::output::{Format, Table, print_json};

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
    Version(#[from] VersionError),
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    /// A split would send calls to a subset that has no instance.
    #[error(
        "{0}\nhint: start the subset's instances first, or pass --allow-empty-subsets if they are about to start (calls would go to the split's other subsets meanwhile)"
    )]
    EmptySubsets(String),
    /// `diff` found differences (exit code 1, like `diff`).
    #[error("the file differs from the live policy")]
    Differs,
}

/// Reads and checks a document: YAML if the file is named `.yaml`/`.yml`, else JSON.
pub(crate) fn load(file: &Path) -> Result<ServicePolicy, ApplyError> {
    let bytes = std::fs::read(file).map_err(|source| ApplyError::Read { path: file.to_path_buf(), source })?;
    let invalid = |source| ApplyError::Invalid { path: file.to_path_buf(), source };
    let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if !yaml {
        return ServicePolicy::parse(&bytes).map_err(invalid);
    }
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(invalid(PolicyError(format!("{} bytes, over the {MAX_POLICY_BYTES}-byte limit", bytes.len()))));
    }
    let policy: ServicePolicy = serde_norway::from_slice(&bytes).map_err(|e| invalid(PolicyError(e.to_string())))?;
    policy.check().map_err(invalid)?;
    Ok(policy)
}

/// `meshctl validate -f <file>`: needs no etcd.
pub(crate) fn validate(file: &Path) -> Result<(), ApplyError> {
    let policy = load(file)?;
    println!(
        "{}: valid service policy {:?} ({} method entries, {} subsets, {} routes)",
        file.display(),
        policy.version,
        policy.methods.len(),
        policy.subsets.len(),
        policy.routes.len()
    );
    Ok(())
}

/// `meshctl apply <service> -f <file>`: a new version.
pub(crate) async fn apply(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    file: &Path,
    by: &str,
    allow_empty_subsets: bool,
) -> Result<(), ApplyError> {
    let policy = load(file)?;
    if !allow_empty_subsets {
        let listing = mesh_registry::list::list(client, layout, Some(service)).await?;
        let labels: Vec<_> = listing.instances.iter().map(|(r, _)| &r.labels).collect();
        let empty = empty_subsets(&policy, &labels);
        if !empty.is_empty() {
            return Err(ApplyError::EmptySubsets(format!(
                "{}: refused: {service} has no instance in {}",
                file.display(),
                empty.join("; ")
            )));
        }
    }
    let version = versions::record(client, layout, service, Action::Apply, None, Some(policy), by).await?;
    println!(
        "applied version {} of {service}'s policy (etcd revision {}); its callers' proxies follow it within a second (meshctl status)",
        version.version, version.revision
    );
    Ok(())
}

/// The split entries (with weight) and mirrors whose subset no instance with `labels` belongs to.
fn empty_subsets(policy: &ServicePolicy, labels: &[&std::collections::BTreeMap<String, String>]) -> Vec<String> {
    let serves = |name: &str| policy.subsets.get(name).is_some_and(|s| labels.iter().any(|l| s.matches(l)));
    let mut empty = Vec::new();
    for route in &policy.routes {
        let split = route.split.iter().filter(|b| b.weight > 0).filter_map(|b| b.subset.as_deref());
        let mirror = route.mirror.as_ref().and_then(|m| m.subset.as_deref());
        for subset in split.chain(mirror).filter(|s| !serves(s)) {
            empty.push(format!("subset {subset:?} (route {:?})", route.name));
        }
    }
    empty
}

/// `meshctl diff <service> -f <file>`: what applying the file would change.
pub(crate) async fn diff(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    file: &Path,
) -> Result<(), ApplyError> {
    let policy = load(file)?;
    let resp = client.get(layout.policy(service), None).await?;
    let live: Option<serde_json::Value> = resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok());
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let old = live.as_ref().map(pretty).unwrap_or_default();
    let new = pretty(&serde_json::to_value(&policy).unwrap_or_default());
    if old == new {
        println!("no changes: {} matches the live policy of {service}", file.display());
        return Ok(());
    }
    let live_name = format!("{service} (live)");
    let diff = similar::TextDiff::from_lines(&old, &new);
    print!("{}", diff.unified_diff().context_radius(3).header(&live_name, &file.display().to_string()));
    Err(ApplyError::Differs)
}

/// `meshctl history <service>`.
pub(crate) async fn history(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    format: Format,
) -> Result<(), ApplyError> {
    let history = versions::history(client, layout, service).await?;
    if history.is_empty() {
        return Err(ApplyError::NotFound(service.clone()));
    }
    if format == Format::Json {
        let rows: Vec<_> = history.iter().map(|v| (v, v.revision)).map(json_version).collect();
        print_json(&rows);
        return Ok(());
    }
    let mut table = Table::new(vec!["VERSION", "ACTION", "BY", "AT", "REVISION", ""]);
    let live = history.last().map(|v| v.version);
    for v in &history {
        table.row(vec![
            v.version.to_string(),
            describe(v),
            v.applied_by.clone(),
            v.applied_at.clone(),
            v.revision.to_string(),
            if Some(v.version) == live { "live".into() } else { String::new() },
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn describe(v: &Version) -> String {
    match (v.action, v.restores) {
        (Action::Apply, _) => "apply".into(),
        (Action::Rollback, Some(n)) => format!("rollback to {n}"),
        (Action::Remove, Some(n)) => format!("rollback to {n} (none)"),
        (action, _) => format!("{action:?}").to_lowercase(),
    }
}

fn json_version((v, revision): (&Version, i64)) -> serde_json::Value {
    let mut value = serde_json::to_value(v).unwrap_or_default();
    value["revision"] = revision.into();
    value
}

/// `meshctl rollback <service> [--to N]`: a new version with an earlier one's document.
pub(crate) async fn rollback(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    to: Option<u64>,
    by: &str,
) -> Result<(), ApplyError> {
    let version = versions::rollback(client, layout, service, to, by).await?;
    println!(
        "{service}'s policy is now version {}, the document of version {} (etcd revision {}); its callers' proxies follow it within a second",
        version.version,
        version.restores.unwrap_or(0),
        version.revision
    );
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

/// `meshctl remove <service>`: a new version without a document.
pub(crate) async fn remove(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    by: &str,
) -> Result<(), ApplyError> {
    if client.get(layout.policy(service), None).await?.kvs().is_empty() {
        return Err(ApplyError::NotFound(service.clone()));
    }
    let version = versions::record(client, layout, service, Action::Remove, None, None, by).await?;
    println!(
        "removed the service policy for {service} (version {}); its calls follow the built-in defaults",
        version.version
    );
    Ok(())
}
