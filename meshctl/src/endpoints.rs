//! `meshctl endpoints <service>`: one service's instances with their lease's remaining TTL.

use std::collections::BTreeMap;

use etcd_client::Client;
use mesh_registry::list::list;
use mesh_registry::{Layout, ServiceName};
use serde::Serialize;

use crate::output::{Format, Table, print_json};
use crate::services::{MalformedRecord, malformed_note};

#[derive(Serialize)]
struct Endpoints {
    service: String,
    endpoints: Vec<Endpoint>,
    malformed: Vec<MalformedRecord>,
}

#[derive(Serialize)]
struct Endpoint {
    instance_id: String,
    address: String,
    labels: BTreeMap<String, String>,
    weight: u32,
    identity: Option<String>,
    started_at: String,
    lease_id: i64,
    /// Seconds left on the lease; `None` when the record has no lease or it just expired.
    lease_ttl_seconds: Option<i64>,
}

pub(crate) async fn run(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    format: Format,
) -> Result<(), etcd_client::Error> {
    let listing = list(client, layout, Some(service)).await?;
    let mut ttls: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    for (_, lease) in &listing.instances {
        if *lease != 0 && !ttls.contains_key(lease) {
            let ttl = client.lease_time_to_live(*lease, None).await?.ttl();
            ttls.insert(*lease, (ttl >= 0).then_some(ttl));
        }
    }
    let endpoints: Vec<Endpoint> = listing
        .instances
        .into_iter()
        .map(|(r, lease)| Endpoint {
            instance_id: r.instance_id.to_string(),
            address: r.address.to_string(),
            labels: r.labels,
            weight: r.weight,
            identity: r.identity,
            started_at: r.started_at,
            lease_id: lease,
            lease_ttl_seconds: ttls.get(&lease).copied().flatten(),
        })
        .collect();
    match format {
        Format::Json => print_json(&Endpoints {
            service: service.to_string(),
            endpoints,
            malformed: listing.malformed.iter().map(Into::into).collect(),
        }),
        Format::Table => {
            let mut table = Table::new(vec!["INSTANCE", "ADDRESS", "LABELS", "WEIGHT", "LEASE-TTL", "STARTED"]);
            for e in &endpoints {
                let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                table.row(vec![
                    e.instance_id.clone(),
                    e.address.clone(),
                    if labels.is_empty() { "-".into() } else { labels.join(",") },
                    e.weight.to_string(),
                    e.lease_ttl_seconds.map_or_else(|| "none".into(), |t| format!("{t}s")),
                    e.started_at.clone(),
                ]);
            }
            if endpoints.is_empty() {
                println!("no instances of {service} are registered");
            } else {
                print!("{}", table.render());
            }
            if let Some(note) = malformed_note(listing.malformed.len()) {
                println!("{note}");
            }
        }
    }
    Ok(())
}
