//! A watcher whose start revision has been compacted re-lists and ends equal to
//! `etcdctl get --prefix`; the periodic anti-entropy re-list repairs a view that missed events.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use mesh_registry::{InstanceRecord, Layout, Metrics, Snapshot, ViewConfig};
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;

const PREFIX: &str = "/mesh/v1/services/backend/instances/";

fn record(id: &str, port: u16) -> InstanceRecord {
    InstanceRecord::new("backend".parse().unwrap(), id.parse().unwrap(), format!("127.0.0.1:{port}").parse().unwrap())
}

async fn put(client: &mut Client, r: &InstanceRecord) -> i64 {
    let key = Layout::default().instance(&r.service, &r.instance_id);
    client.put(key, r.encode(), None).await.unwrap().header().unwrap().revision()
}

fn snapshot(records: &[InstanceRecord], revision: i64) -> Snapshot {
    let layout = Layout::default();
    let records: BTreeMap<_, _> =
        records.iter().map(|r| (layout.instance(&r.service, &r.instance_id), r.clone())).collect();
    Snapshot { records, revision, synced: true, ..Snapshot::default() }
}

#[tokio::test]
async fn watcher_resuming_from_a_compacted_revision_relists() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (a, b) = (record("a", 1001), record("b", 1002));
    put(&mut client, &a).await;
    let known_at = put(&mut client, &b).await;

    // History moves on and is compacted past the revision the watcher knows.
    put(&mut client, &record("c", 1003)).await;
    client.delete(format!("{PREFIX}a"), None).await.unwrap();
    put(&mut client, &record("b", 2002)).await;
    let now = put(&mut client, &record("d", 1004)).await;
    client.compact(now, None).await.unwrap();

    let metrics = Arc::new(Metrics::new());
    let view = etcd.backend_view(ViewConfig::default(), metrics.clone(), Some(snapshot(&[a, b], known_at))).await;
    eventually("the view to equal etcdctl get --prefix", Duration::from_secs(10), || async {
        (view.current().records == etcd.truth(PREFIX)).then_some(())
    })
    .await;
    assert_eq!(metrics.relists.with_label_values(&["compacted"]).get(), 1);
    assert_eq!(view.current().records.len(), 3);
}

#[tokio::test]
async fn anti_entropy_relist_repairs_a_view_that_missed_events() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let real = record("real", 1001);
    let now = put(&mut client, &real).await;

    // The view believes in an instance etcd never told it was deleted, and misses a real one.
    let metrics = Arc::new(Metrics::new());
    let view = etcd
        .backend_view(
            ViewConfig { anti_entropy_interval: Duration::from_millis(500), ..ViewConfig::default() },
            metrics.clone(),
            Some(snapshot(&[record("phantom", 1002)], now)),
        )
        .await;
    assert_eq!(view.current().records.len(), 1);
    eventually("anti-entropy to replace the phantom with the truth", Duration::from_secs(5), || async {
        (view.current().records == etcd.truth(PREFIX)).then_some(())
    })
    .await;
    assert!(metrics.relists.with_label_values(&["anti_entropy"]).get() >= 1);
}
