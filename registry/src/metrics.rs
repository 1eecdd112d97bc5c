//! The registry's metrics. Names follow the mesh's convention (`mesh_` prefix, `_total` for
//! counters); every label set is closed. A [`Metrics`] is created once per process and registered
//! into the registry the process exposes: there is no global registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    /// Creates the metrics, not yet registered anywhere.
    pub fn new() -> Self {
        let counter_vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| unreachable!("{e}"))
        };
        let counter = |name: &str, help: &str| IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{e}"));
        Self {
            registrations: counter_vec(
                "mesh_registry_registrations_total",
                "Instance registrations (lease grant and record put) by outcome.",
                "outcome",
            ),
            leases_lost: counter("mesh_registry_leases_lost_total", "Leases found lost under a live registration."),
            keepalive_failures: counter(
                "mesh_registry_keepalive_failures_total",
                "Lease keepalive rounds that failed.",
            ),
            records_restored: counter(
                "mesh_registry_records_restored_total",
                "Own instance records found missing from etcd and written again.",
            ),
            relists: counter_vec(
                "mesh_registry_relists_total",
                "Full re-lists of a discovery view by reason.",
                "reason",
            ),
            watch_errors: counter("mesh_registry_watch_errors_total", "Discovery watch streams that failed."),
            malformed_records: counter_vec(
                "mesh_registry_malformed_records_total",
                "Malformed values under the mesh prefix, skipped (each distinct value counted once).",
                "reason",
            ),
            views_stale: IntGauge::new(
                "mesh_registry_views_stale",
                "Discovery views serving their last known state while etcd is unreachable.",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        }
    }

    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.registrations.clone()))?;
        registry.register(Box::new(self.leases_lost.clone()))?;
        registry.register(Box::new(self.keepalive_failures.clone()))?;
        registry.register(Box::new(self.records_restored.clone()))?;
        registry.register(Box::new(self.relists.clone()))?;
        registry.register(Box::new(self.watch_errors.clone()))?;
        registry.register(Box::new(self.malformed_records.clone()))?;
        registry.register(Box::new(self.views_stale.clone()))?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
