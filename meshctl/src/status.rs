//! `meshctl status`: which version of each service policy every proxy runs, from the proxies'
//! status records (`mesh_registry::status`) against the live documents and their history, so a
//! rollout's convergence is visible. A proxy that could not use the live document (written to
//! etcd by hand, say) keeps the last good one; it is counted as rejecting, and named.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, GetOptions};
use mesh_registry::status::{self, ProxyStatus};
use mesh_registry::{Layout, ServiceName, versions};
use serde::Serialize;

use crate::output::{Format, Table, print_json};

/// One destination service's convergence.
#[derive(Debug, Serialize)]
struct Convergence {
    service: String,
    /// The live document's version (`None`: written by hand, or no history).
    version: Option<u64>,
    /// The live document's etcd revision (0: no policy).
    revision: i64,
    proxies: usize,
    current: usize,
    behind: usize,
    rejecting: usize,
    /// Proxies not on the live document: `service/instance` and what they run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lagging: Vec<String>,
}

/// Prints each policy's convergence.
pub(crate) async fn run(client: &mut Client, layout: &Layout, format: Format) -> Result<(), etcd_client::Error> {
    let proxies = status::list(client, layout).await?;
    let live = client.get(layout.policies(), Some(GetOptions::new().with_prefix())).await?;
    let mut services: BTreeMap<String, i64> = live
        .kvs()
        .iter()
        .filter_map(|kv| Some((layout.parse_policy_key(kv.key_str().ok()?)?.to_string(), kv.mod_revision())))
        .collect();
    // Removed policies some proxy still runs.
    let reported: BTreeSet<String> = proxies.iter().flat_map(|p| p.policies.keys().cloned()).collect();
    for service in reported {
        services.entry(service).or_insert(0);
    }
    let mut rows = Vec::new();
    for (service, revision) in services {
        let name: Option<ServiceName> = service.parse().ok();
        let history = match &name {
            Some(name) => versions::history(client, layout, name).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let version_of = |rev: i64| history.iter().find(|v| v.revision == rev).map(|v| v.version);
        rows.push(converge(&service, revision, version_of(revision), &proxies, &version_of));
    }
    if format == Format::Json {
        print_json(&serde_json::json!({ "policies": rows, "proxies": proxies }));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no service policies, and {} proxies reporting", proxies.len());
        return Ok(());
    }
    let mut table = Table::new(vec!["SERVICE", "VERSION", "REVISION", "PROXIES", "CURRENT", "BEHIND", "REJECTING"]);
    for r in &rows {
        let version = match (r.revision, r.version) {
            (0, _) => "(none)".to_string(),
            (_, Some(v)) => v.to_string(),
            (_, None) => "by hand".to_string(),
        };
        let counts = [r.proxies, r.current, r.behind, r.rejecting].map(|n| n.to_string());
        let mut row = vec![r.service.clone(), version, r.revision.to_string()];
        row.extend(counts);
        table.row(row);
    }
    print!("{}", table.render());
    for r in rows.iter().filter(|r| !r.lagging.is_empty()) {
        println!("{}: {}", r.service, r.lagging.join(", "));
    }
    Ok(())
}

fn converge(
    service: &str,
    revision: i64,
    version: Option<u64>,
    proxies: &[ProxyStatus],
    version_of: &dyn Fn(i64) -> Option<u64>,
) -> Convergence {
    let mut row = Convergence {
        service: service.to_string(),
        version,
        revision,
        proxies: proxies.len(),
        current: 0,
        behind: 0,
        rejecting: 0,
        lagging: Vec::new(),
    };
    let name = |rev: i64| match (rev, version_of(rev)) {
        (0, _) => "no policy".to_string(),
        (_, Some(v)) => format!("version {v}"),
        (_, None) => format!("revision {rev}"),
    };
    for proxy in proxies {
        let running = proxy.policies.get(service).copied().unwrap_or_default();
        let who = format!("{}/{}", proxy.service, proxy.instance);
        if running.rejected.is_some_and(|r| r == revision) {
            row.rejecting += 1;
            row.lagging.push(format!("{who} rejected revision {revision}, runs {}", name(running.revision)));
        } else if running.revision == revision {
            row.current += 1;
        } else {
            row.behind += 1;
            row.lagging.push(format!("{who} runs {}", name(running.revision)));
        }
    }
    row
}
