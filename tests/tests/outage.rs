//! etcd unreachable for 20 s: a view keeps serving the last known endpoints throughout, says it
//! is stale, and converges when etcd returns.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_registry::{Metrics, ViewConfig};
use mesh_tests::demo::Backend;
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;

const PREFIX: &str = "/mesh/v1/services/backend/instances/";

#[tokio::test]
async fn view_keeps_last_known_endpoints_while_etcd_is_down_for_20s() {
    let mut etcd = Etcd::start().await;
    let _backends = [Backend::start(&etcd.endpoint(), "be-1"), Backend::start(&etcd.endpoint(), "be-2")];
    let metrics = Arc::new(Metrics::new());
    let view = etcd
        .backend_view(
            ViewConfig { max_backoff: Duration::from_millis(500), ..ViewConfig::default() },
            metrics.clone(),
            None,
        )
        .await;
    eventually("both instances in the view", Duration::from_secs(10), || async {
        (view.current().records.len() == 2).then_some(())
    })
    .await;
    let before = view.current().records.clone();

    etcd.kill();
    let down = Instant::now();
    let mut saw_stale = false;
    while down.elapsed() < Duration::from_secs(20) {
        let current = view.current();
        assert_eq!(current.records, before, "endpoints changed {:?} into the outage", down.elapsed());
        saw_stale |= current.stale;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_stale, "the view must say it is serving a last known state");
    assert_eq!(metrics.views_stale.get(), 1);

    etcd.restart().await;
    eventually("the view to be live and equal to etcd", Duration::from_secs(15), || async {
        let current = view.current();
        (!current.stale && current.records == etcd.truth(PREFIX)).then_some(())
    })
    .await;
    assert_eq!(metrics.views_stale.get(), 0);
}
