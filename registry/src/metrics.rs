//! The registry's metrics. Names follow the mesh's convention (`mesh_` prefix, `_total` for
//! counters); every label set is closed. A [`Metrics`] is declared once per process into the
//! registry the process exposes (there is no global registry); the README's table is checked
//! against what is declared here.

use mesh_common::metrics::Declare;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

/// Counters for registration and discovery.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `mesh_registry_registrations_total{outcome}`: lease grants + puts, `ok` or `error`.
    pub registrations: IntCounterVec,
    /// `mesh_registry_leases_lost_total`: leases found expired or revoked under a live registration.
    pub leases_lost: IntCounter,
    /// `mesh_registry_keepalive_failures_total`: keepalive rounds that got no answer.
    pub keepalive_failures: IntCounter,
    /// `mesh_registry_records_restored_total`: own records found missing and written again.
    pub records_restored: IntCounter,
    /// `mesh_registry_relists_total{reason}`: full re-lists (`initial`, `reconnect`, `compacted`, `anti_entropy`).
    pub relists: IntCounterVec,
    /// `mesh_registry_watch_errors_total`: watch streams that failed or were cancelled.
    pub watch_errors: IntCounter,
    /// `mesh_registry_malformed_records_total{reason}`: distinct bad values skipped.
    pub malformed_records: IntCounterVec,
    /// `mesh_registry_views_stale`: views currently serving a last-known state because etcd is unreachable.
    pub views_stale: IntGauge,
}

impl Metrics {
    /// Declares the metrics into the registry the process exposes.
    pub fn declare(d: &mut Declare) -> prometheus::Result<Self> {
        Ok(Self {
            registrations: d.counter_vec(
                "mesh_registry_registrations_total",
                "Instance registrations (lease grant and record put) by outcome.",
                &["outcome"],
            )?,
            leases_lost: d
                .counter("mesh_registry_leases_lost_total", "Leases found lost under a live registration.")?,
            keepalive_failures: d
                .counter("mesh_registry_keepalive_failures_total", "Lease keepalive rounds that failed.")?,
            records_restored: d.counter(
                "mesh_registry_records_restored_total",
                "Own instance records found missing from etcd and written again.",
            )?,
            relists: d.counter_vec(
                "mesh_registry_relists_total",
                "Full re-lists of a discovery view by reason.",
                &["reason"],
            )?,
            watch_errors: d.counter("mesh_registry_watch_errors_total", "Discovery watch streams that failed.")?,
            malformed_records: d.counter_vec(
                "mesh_registry_malformed_records_total",
                "Malformed values under the mesh prefix, skipped (each distinct value counted once).",
                &["reason"],
            )?,
            views_stale: d.gauge(
                "mesh_registry_views_stale",
                "Discovery views serving their last known state while etcd is unreachable.",
            )?,
        })
    }

    /// Metrics counted but exposed nowhere (a process that serves no `/metrics`).
    pub fn new() -> Self {
        Self::declare(&mut Declare::new(&Registry::new())).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_documents_every_registry_metric() -> prometheus::Result<()> {
        let mut d = Declare::new(&Registry::new());
        Metrics::declare(&mut d)?;
        let readme = include_str!("../../README.md");
        let documented = mesh_common::metrics::documented(readme, "The registry's metrics")
            .unwrap_or_else(|e| panic!("README: {e}"));
        if let Err(differences) = mesh_common::metrics::compare(d.declared(), &documented) {
            panic!("the README's registry metrics table and the code differ:\n{differences}");
        }
        Ok(())
    }
}
