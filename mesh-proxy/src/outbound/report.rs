//! Tells the mesh which service policy versions this proxy runs: a status record in etcd
//! (`<prefix>/v1/status/<service>/<instance>`, on a lease of its own, so it goes when the proxy
//! goes; `meshctl status` reads them all) rewritten within a second of a policy change, the same
//! JSON at the admin endpoint `/policies`, and the `mesh_policy_revision` gauge.

use std::sync::Arc;

use mesh_registry::status::{MAX_REPORTED, ProxyStatus};
use mesh_registry::{InstanceId, Layout, Registration, RegistrationConfig, ServiceName};
use tokio::sync::watch;

use super::policy::Policies;

/// The shortest time between two writes of the record.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Starts reporting; the record lives as long as the returned registration. The receiver holds
/// the record's JSON (for the admin endpoint).
pub(crate) fn start(
    etcd: etcd_client::Client,
    layout: &Layout,
    (service, instance): (&ServiceName, &InstanceId),
    policies: Arc<Policies>,
    lease: RegistrationConfig,
) -> (Registration, watch::Receiver<Vec<u8>>) {
    let base = ProxyStatus { service: service.to_string(), instance: instance.to_string(), ..ProxyStatus::default() };
    let encode = move |policies: &Policies| {
        let running = policies.running();
        let mut status = base.clone();
        status.policies = running.iter().take(MAX_REPORTED).map(|(k, v)| (k.clone(), *v)).collect();
        status.more = running.len().saturating_sub(MAX_REPORTED);
        serde_json::to_vec(&status).unwrap_or_default()
    };
    let (tx, rx) = watch::channel(encode(&policies));
    let key = layout.status(service, instance);
    // Counted apart from the instance's registration: an undeclared set of registry metrics.
    let metrics = Arc::new(mesh_registry::Metrics::new());
    let registration = Registration::publish(etcd, key, rx.clone(), lease, metrics);
    tokio::spawn(async move {
        let mut changes = policies.subscribe();
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            // Parsed as it arrives, not when the report is next due: a good version followed
            // within MIN_INTERVAL by one that cannot be used is still the last good one.
            policies.refresh();
            // At most one record write per MIN_INTERVAL, whatever the rate of policy changes: a
            // burst of applies is one write per proxy, not one per apply.
            tokio::time::sleep_until(last + MIN_INTERVAL).await;
            last = tokio::time::Instant::now();
            let next = encode(&policies);
            tx.send_if_modified(|current| {
                let changed = *current != next;
                if changed {
                    *current = next;
                }
                changed
            });
        }
    });
    (registration, rx)
}
