//! etcd is killed and restarted, with its data and with a fresh data directory: registrations
//! come back without restarting the registering processes, and watchers converge to the truth.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::Arc;
use std::time::Duration;

use mesh_registry::{Metrics, View, ViewConfig};
use mesh_tests::demo::{Backend, TEST_TTL};
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;

const PREFIX: &str = "/mesh/v1/services/backend/instances/";

async fn converged(etcd: &Etcd, view: &View, expected: usize) {
    eventually(&format!("{expected} registrations and a view equal to etcd"), Duration::from_secs(20), || async {
        let truth = etcd.truth(PREFIX);
        let current = view.current();
        (truth.len() == expected && current.records == truth && !current.stale).then_some(())
    })
    .await;
}

async fn setup() -> (Etcd, Vec<Backend>, View) {
    let etcd = Etcd::start().await;
    let backends = vec![Backend::start(&etcd.endpoint(), "be-1"), Backend::start(&etcd.endpoint(), "be-2")];
    let view = etcd
        .backend_view(
            ViewConfig { max_backoff: Duration::from_millis(500), ..ViewConfig::default() },
            Arc::new(Metrics::new()),
            None,
        )
        .await;
    converged(&etcd, &view, 2).await;
    (etcd, backends, view)
}

#[tokio::test]
async fn registrations_and_views_recover_after_etcd_restarts_with_its_data() {
    let (mut etcd, _backends, view) = setup().await;
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(view.current().records.len(), 2, "the view keeps its endpoints while etcd is down");
    etcd.restart().await;
    converged(&etcd, &view, 2).await;

    // Keepalives resumed: the leases outlive a full TTL after the restart.
    tokio::time::sleep(TEST_TTL + Duration::from_secs(1)).await;
    converged(&etcd, &view, 2).await;

    // The watch is live again: a new instance shows up.
    let _third = Backend::start(&etcd.endpoint(), "be-3");
    converged(&etcd, &view, 3).await;
}

#[tokio::test]
async fn registrations_come_back_after_etcd_restarts_with_fresh_data() {
    let (mut etcd, _backends, view) = setup().await;
    etcd.restart_fresh().await;
    // The old leases are gone with the data; each process notices and registers again.
    converged(&etcd, &view, 2).await;
    let leases = etcd.keys_with_leases(PREFIX).await;
    assert!(leases.values().all(|l| *l != 0), "re-registered records are on leases: {leases:?}");
}
