//! `meshctl check`: is etcd reachable, is the mesh prefix readable, is what it holds valid?
//!
//! A failed check exits 1; a warning (malformed records that every reader skips) is printed
//! but does not fail the command.

use etcd_client::{Client, GetOptions};
use mesh_registry::list::list;
use mesh_registry::{EtcdConfig, Layout};
use serde::Serialize;

use crate::Error;
use crate::output::{Format, print_json};

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: String) -> Self {
        Self { name, status, detail }
    }
}

pub(crate) async fn run(
    client: &mut Client,
    config: &EtcdConfig,
    layout: &Layout,
    format: Format,
    ca_bundle: Option<&std::path::Path>,
    warn_within: std::time::Duration,
) -> Result<(), Error> {
    let mut checks = checks(client, config, layout).await;
    if let Some(path) = ca_bundle {
        checks.push(bundle_check(path, warn_within));
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    match format {
        Format::Json => print_json(&serde_json::json!({ "ok": !failed, "checks": checks })),
        Format::Table => {
            for c in &checks {
                let mark = match c.status {
                    Status::Ok => "ok  ",
                    Status::Warn => "WARN",
                    Status::Fail => "FAIL",
                };
                let line = format!("{mark} {:<16} {}", c.name, c.detail);
                if c.status == Status::Ok { println!("{line}") } else { eprintln!("{line}") }
            }
        }
    }
    if failed { Err(Error::CheckFailed) } else { Ok(()) }
}

async fn checks(client: &mut Client, config: &EtcdConfig, layout: &Layout) -> Vec<Check> {
    let endpoints = config.endpoints_display();
    let mut checks = Vec::new();
    match client.status().await {
        Ok(status) => {
            checks.push(Check::new("etcd-reachable", Status::Ok, format!("etcd {} at {endpoints}", status.version())))
        }
        Err(e) => {
            checks.push(Check::new(
                "etcd-reachable",
                Status::Fail,
                format!(
                    "cannot reach etcd at {endpoints}: {e}. Is etcd running there? Point --etcd-endpoints (or MESH_ETCD_ENDPOINTS) at its client URL"
                ),
            ));
            return checks;
        }
    }
    let options = GetOptions::new().with_prefix().with_count_only();
    match client.get(layout.root(), Some(options)).await {
        Ok(resp) => checks.push(Check::new(
            "prefix-readable",
            Status::Ok,
            format!("{} holds {} key(s)", layout.root(), resp.count()),
        )),
        Err(e) => {
            checks.push(Check::new(
                "prefix-readable",
                Status::Fail,
                format!("cannot read {}: {e}. Check the etcd user's permissions on that prefix", layout.root()),
            ));
            return checks;
        }
    }
    match list(client, layout, None).await {
        Ok(listing) if listing.malformed.is_empty() => checks.push(Check::new(
            "records-valid",
            Status::Ok,
            format!("{} instance record(s), all valid", listing.instances.len()),
        )),
        Ok(listing) => {
            let keys: Vec<_> = listing.malformed.iter().map(|m| format!("{} ({})", m.key, m.error)).collect();
            checks.push(Check::new(
                "records-valid",
                Status::Warn,
                format!(
                    "{} valid record(s); {} malformed record(s) skipped by every reader: {}",
                    listing.instances.len(),
                    keys.len(),
                    keys.join("; ")
                ),
            ));
        }
        Err(e) => checks.push(Check::new("records-valid", Status::Fail, format!("cannot list records: {e}"))),
    }
    checks
}

/// Roots in the trust bundle: expired fails, expiring within `warn_within` warns.
fn bundle_check(path: &std::path::Path, warn_within: std::time::Duration) -> Check {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) => return Check::new("trust-bundle", Status::Fail, format!("cannot read {}: {e}", path.display())),
    };
    let roots = match crate::identity::bundle_expiries(&pem) {
        Ok(roots) => roots,
        Err(e) => return Check::new("trust-bundle", Status::Fail, format!("{}: {e}", path.display())),
    };
    let now = std::time::SystemTime::now();
    let mut status = Status::Ok;
    let mut details = Vec::new();
    for (subject, not_after) in roots {
        let left = not_after.duration_since(now).unwrap_or_default();
        let when = humantime::format_rfc3339_seconds(not_after);
        if left.is_zero() {
            status = Status::Fail;
            details.push(format!("{subject} EXPIRED at {when}"));
        } else if left < warn_within {
            if status == Status::Ok {
                status = Status::Warn;
            }
            details.push(format!(
                "{subject} expires {when}, within {}: rotate the root",
                humantime::format_duration(warn_within)
            ));
        } else {
            details.push(format!("{subject} valid until {when}"));
        }
    }
    Check::new("trust-bundle", status, details.join("; "))
}
