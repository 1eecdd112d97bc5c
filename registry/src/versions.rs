//! Versions of service policies: every change made through `meshctl` (apply, rollback, remove) is
//! one numbered entry in a bounded history, written in the same etcd transaction as the live
//! document, so an entry and the live value it produced share one etcd revision. That revision
//! is what proxies report running (see [`status`](crate::status)), and the history maps it back
//! to a version number, who made it and when.
//!
//! ```text
//! <prefix>/v1/policies/<service>                       the live document (what proxies follow)
//! <prefix>/v1/policy-history/<service>/<0000000007>    {"version":7,"action":"apply","applied_by":..,"applied_at":..,"document":{..}}
//! ```
//!
//! A change is refused if the live document changed since it was read (another operator's apply
//! in between): nothing is lost, the operator runs the command again. The last
//! [`MAX_HISTORY`] entries are kept.

use etcd_client::{Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::name::ServiceName;
use crate::policy::ServicePolicy;

/// Entries kept per service.
pub const MAX_HISTORY: u64 = 50;

/// What a version did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A document was applied.
    Apply,
    /// An earlier version's document was applied again.
    Rollback,
    /// The document was removed (the built-in defaults apply).
    Remove,
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, ... per service.
    pub version: u64,
    /// What it did.
    pub action: Action,
    /// For a rollback: the version whose document it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<u64>,
    /// Who: `meshctl`'s `--as`, else the OS user.
    pub applied_by: String,
    /// When, RFC 3339.
    pub applied_at: String,
    /// The document in force from this version on (`None` after a remove).
    pub document: Option<ServicePolicy>,
    /// The etcd revision that wrote it (and the live document): filled in when read.
    #[serde(skip)]
    pub revision: i64,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The live document changed between read and write.
    #[error("the policy of {0} changed while this command ran (another apply?); nothing was written, run it again")]
    Conflict(ServiceName),
    /// Nothing to roll back to.
    #[error("{0}")]
    NoVersion(String),
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
}

impl Layout {
    /// Every service's policy history: `<prefix>/v1/policy-history/`.
    pub fn policy_histories(&self) -> String {
        format!("{}policy-history/", self.root())
    }

    /// One service's policy history.
    pub fn policy_history(&self, service: &ServiceName) -> String {
        format!("{}{service}/", self.policy_histories())
    }

    fn policy_version(&self, service: &ServiceName, version: u64) -> String {
        format!("{}{version:010}", self.policy_history(service))
    }
}

/// A service's history, oldest first.
pub async fn history(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
) -> Result<Vec<Version>, VersionError> {
    let resp = client.get(layout.policy_history(service), Some(GetOptions::new().with_prefix())).await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let mut v: Version = serde_json::from_slice(kv.value()).ok()?;
            v.revision = kv.mod_revision();
            Some(v)
        })
        .collect())
}

/// Makes `document` (`None`: remove) the service's live policy as a new version; returns it.
pub async fn record(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    action: Action,
    restores: Option<u64>,
    document: Option<ServicePolicy>,
    applied_by: &str,
) -> Result<Version, VersionError> {
    let live_key = layout.policy(service);
    let live = client.get(live_key.as_str(), None).await?;
    let live_revision = live.kvs().first().map_or(0, etcd_client::KeyValue::mod_revision);
    let last = client
        .get(
            layout.policy_history(service),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1)
                    .with_keys_only(),
            ),
        )
        .await?;
    let last_version =
        last.kvs().first().and_then(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse::<u64>().ok()).unwrap_or(0);
    let mut version = Version {
        version: last_version + 1,
        action,
        restores,
        applied_by: applied_by.to_string(),
        applied_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        document,
        revision: 0,
    };
    let entry = serde_json::to_vec(&version).unwrap_or_default();
    let mut ops = vec![TxnOp::put(layout.policy_version(service, version.version), entry, None)];
    ops.push(match &version.document {
        Some(document) => TxnOp::put(live_key.as_str(), serde_json::to_vec(document).unwrap_or_default(), None),
        None => TxnOp::delete(live_key.as_str(), None),
    });
    if version.version > MAX_HISTORY {
        // Everything older than the last MAX_HISTORY entries.
        let from = layout.policy_version(service, 0);
        let until = layout.policy_version(service, version.version - MAX_HISTORY + 1);
        ops.push(TxnOp::delete(from, Some(etcd_client::DeleteOptions::new().with_range(until))));
    }
    let txn = Txn::new()
        .when([
            Compare::mod_revision(live_key.as_str(), CompareOp::Equal, live_revision),
            Compare::version(layout.policy_version(service, version.version), CompareOp::Equal, 0),
        ])
        .and_then(ops);
    let resp = client.txn(txn).await?;
    if !resp.succeeded() {
        return Err(VersionError::Conflict(service.clone()));
    }
    version.revision = resp.header().map_or(0, etcd_client::ResponseHeader::revision);
    Ok(version)
}

/// Restores version `to` (default: the one before the live one) as a new version.
pub async fn rollback(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    to: Option<u64>,
    applied_by: &str,
) -> Result<Version, VersionError> {
    let history = history(client, layout, service).await?;
    let Some(current) = history.last() else {
        return Err(VersionError::NoVersion(format!("{service} has no policy history: nothing to roll back")));
    };
    let target = match to {
        Some(n) => history.iter().find(|v| v.version == n).ok_or_else(|| {
            let kept = history.first().map_or(0, |v| v.version);
            VersionError::NoVersion(format!(
                "{service} has no version {n} (versions {kept}-{} are kept)",
                current.version
            ))
        })?,
        None => history.iter().rev().nth(1).ok_or_else(|| {
            VersionError::NoVersion(format!("{service} has only version {}: nothing before it", current.version))
        })?,
    };
    let action = if target.document.is_some() { Action::Rollback } else { Action::Remove };
    record(client, layout, service, action, Some(target.version), target.document.clone(), applied_by).await
}

/// Who is making a change: the OS user (`$USER`, `$LOGNAME`) on this host.
pub fn local_user() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() { user } else { format!("{user}@{host}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_key_and_live_under_the_prefix() {
        let layout = Layout::default();
        let svc: ServiceName = "web".parse().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(layout.policy_version(&svc, 7), "/mesh/v1/policy-history/web/0000000007");
        assert!(layout.policy_version(&svc, 9) < layout.policy_version(&svc, 10));
        assert!(layout.parse_policy_key(&layout.policy_version(&svc, 7)).is_none(), "not a live policy key");
    }
}
