//! An instance registers on a lease, and leaves etcd when it dies (within TTL + 1 s) or stops
//! cleanly (at once).

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_registry::{InstanceRecord, Layout};
use mesh_tests::demo::{Backend, TEST_TTL};
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;

const PREFIX: &str = "/mesh/v1/services/backend/instances/";

async fn registered_lease(etcd: &Etcd, key: &str) -> i64 {
    eventually(&format!("{key} to be registered"), Duration::from_secs(10), || async {
        etcd.keys_with_leases(PREFIX).await.get(key).copied()
    })
    .await
}

#[tokio::test]
async fn registered_instance_is_in_etcd_on_its_lease() {
    let etcd = Etcd::start().await;
    let backend = Backend::start(&etcd.endpoint(), "be-1");
    let lease = registered_lease(&etcd, &backend.key()).await;
    assert_ne!(lease, 0, "the record must be attached to a lease");

    let ttl = etcd.client().await.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3);
    assert!((1..=3).contains(&ttl.ttl()), "remaining TTL {}", ttl.ttl());

    let raw = etcd.etcdctl_get_prefix(PREFIX);
    let record = InstanceRecord::decode(&Layout::default(), &backend.key(), raw[&backend.key()].as_bytes()).unwrap();
    assert_eq!(record.address.as_str(), backend.listen);
    assert_eq!(record.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(record.service.as_str(), "backend");
}

#[tokio::test]
async fn sigkilled_instance_disappears_within_ttl_plus_one_second() {
    let etcd = Etcd::start().await;
    let mut backend = Backend::start(&etcd.endpoint(), "be-killed");
    registered_lease(&etcd, &backend.key()).await;

    backend.proc.sigkill();
    let killed = Instant::now();
    eventually("the record to expire", Duration::from_secs(10), || async {
        (!etcd.keys_with_leases(PREFIX).await.contains_key(&backend.key())).then_some(())
    })
    .await;
    let gone_after = killed.elapsed();
    assert!(gone_after <= TEST_TTL + Duration::from_secs(1), "record outlived TTL + 1 s: {gone_after:?}");
}

#[tokio::test]
async fn cleanly_stopped_instance_disappears_at_once() {
    let etcd = Etcd::start().await;
    let mut backend = Backend::start(&etcd.endpoint(), "be-stopped");
    let other = Backend::start(&etcd.endpoint(), "be-other");
    registered_lease(&etcd, &backend.key()).await;
    registered_lease(&etcd, &other.key()).await;

    let status = backend.proc.terminate();
    assert!(status.success(), "clean shutdown exits 0, got {status}");
    // Deregistration happens before the process exits: the record is gone now, not after a TTL.
    let keys = etcd.keys_with_leases(PREFIX).await;
    assert!(!keys.contains_key(&backend.key()), "record still present after clean exit: {keys:?}");
    assert!(keys.contains_key(&other.key()), "another instance's record must stay");
}

#[tokio::test]
async fn deleted_record_is_written_again_on_the_same_lease() {
    let etcd = Etcd::start().await;
    let backend = Backend::start(&etcd.endpoint(), "be-deleted");
    let lease = registered_lease(&etcd, &backend.key()).await;

    etcd.client().await.delete(backend.key(), None).await.unwrap();
    let restored = registered_lease(&etcd, &backend.key()).await;
    assert_eq!(restored, lease);
}
