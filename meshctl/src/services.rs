//! `meshctl services`: every service and its instance count.

use std::collections::BTreeMap;

use etcd_client::Client;
use mesh_registry::Layout;
use mesh_registry::list::list;
use serde::Serialize;

use crate::output::{Format, Table, print_json};

#[derive(Serialize)]
struct Services {
    services: Vec<Service>,
    malformed: Vec<MalformedRecord>,
}

#[derive(Serialize)]
struct Service {
    name: String,
    instances: usize,
}

/// A value under the prefix that is not a valid record, for output.
#[derive(Serialize)]
pub(crate) struct MalformedRecord {
    pub(crate) key: String,
    pub(crate) reason: &'static str,
    pub(crate) error: String,
}

impl From<&mesh_registry::Malformed> for MalformedRecord {
    fn from(m: &mesh_registry::Malformed) -> Self {
        Self { key: m.key.clone(), reason: m.error.reason(), error: m.error.to_string() }
    }
}

/// The line printed under a table when malformed records were skipped.
pub(crate) fn malformed_note(count: usize) -> Option<String> {
    (count > 0).then(|| format!("\n{count} malformed record(s) skipped; `--output json` lists them"))
}

pub(crate) async fn run(client: &mut Client, layout: &Layout, format: Format) -> Result<(), etcd_client::Error> {
    let listing = list(client, layout, None).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (record, _) in &listing.instances {
        *counts.entry(record.service.to_string()).or_default() += 1;
    }
    match format {
        Format::Json => print_json(&Services {
            services: counts.into_iter().map(|(name, instances)| Service { name, instances }).collect(),
            malformed: listing.malformed.iter().map(Into::into).collect(),
        }),
        Format::Table => {
            let mut table = Table::new(vec!["SERVICE", "INSTANCES"]);
            for (name, n) in counts {
                table.row(vec![name, n.to_string()]);
            }
            print!("{}", table.render());
            if let Some(note) = malformed_note(listing.malformed.len()) {
                println!("{note}");
            }
        }
    }
    Ok(())
}
