//! Malformed values under the prefix are skipped, logged once and counted; valid instances are
//! untouched; `meshctl` shows the valid ones and says what it skipped.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::Arc;
use std::time::Duration;

use mesh_registry::{InstanceRecord, Layout, Metrics, View, ViewConfig};
use mesh_tests::demo::Backend;
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;
use mesh_tests::process::run;

const PREFIX: &str = "/mesh/v1/services/backend/instances/";

#[tokio::test]
async fn malformed_records_are_ignored_counted_and_meshctl_shows_the_valid_ones() {
    let etcd = Etcd::start().await;
    let backend = Backend::start(&etcd.endpoint(), "be-live");
    let mut client = etcd.client().await;
    let direct =
        InstanceRecord::new("backend".parse().unwrap(), "be-direct".parse().unwrap(), "127.0.0.1:9".parse().unwrap());
    client.put(format!("{PREFIX}be-direct"), direct.encode(), None).await.unwrap();

    let valid = String::from_utf8(direct.encode()).unwrap();
    let bad: Vec<(String, String)> = vec![
        (format!("{PREFIX}bad-json"), "{not json".into()),
        (format!("{PREFIX}missing-fields"), r#"{"service":"backend"}"#.into()),
        (format!("{PREFIX}port-zero"), valid.replace("127.0.0.1:9", "127.0.0.1:0").replace("be-direct", "port-zero")),
        (format!("{PREFIX}oversized"), format!("{}{}", valid.replace("be-direct", "oversized"), " ".repeat(20_000))),
        (format!("{PREFIX}mismatch"), valid.clone()),
        ("/mesh/v1/services/backend/not-an-instance".into(), valid.clone()),
    ];
    for (k, v) in &bad {
        client.put(k.as_str(), v.as_str(), None).await.unwrap();
    }

    let metrics = Arc::new(Metrics::new());
    let view = View::catalog(
        etcd.registry_client().await,
        &Layout::default(),
        ViewConfig { anti_entropy_interval: Duration::from_millis(300), ..ViewConfig::default() },
        metrics.clone(),
    );
    let snapshot = eventually("both valid instances in the catalog", Duration::from_secs(10), || async {
        let s = view.current();
        (s.records.len() == 2).then_some(s)
    })
    .await;
    assert!(snapshot.records.contains_key(&backend.key()));
    assert!(snapshot.records.contains_key(&format!("{PREFIX}be-direct")));
    assert_eq!(snapshot.malformed, 6);

    // Several anti-entropy re-lists later, each bad value is still counted once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = |reason: &str| metrics.malformed_records.with_label_values(&[reason]).get();
    assert!(metrics.relists.with_label_values(&["anti_entropy"]).get() >= 2);
    assert_eq!((count("invalid"), count("oversized"), count("key_mismatch"), count("unexpected_key")), (3, 1, 1, 1));
    assert_eq!(view.current().records.len(), 2);

    let ep = etcd.endpoint();
    let (code, out, err) = run("meshctl", &["--etcd-endpoints", &ep, "endpoints", "backend"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("be-live") && out.contains("be-direct"), "{out}");
    assert!(out.contains("5 malformed record(s) skipped"), "{out}");

    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "-o", "json", "endpoints", "backend"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["endpoints"].as_array().unwrap().len(), 2);
    let reasons: Vec<&str> =
        json["malformed"].as_array().unwrap().iter().map(|m| m["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");

    let (code, out, _) = run("meshctl", &["--etcd-endpoints", &ep, "services"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["backend", "2"]), "{out}");

    let (code, _, err) = run("meshctl", &["--etcd-endpoints", &ep, "check"]);
    assert_eq!(code, 0, "malformed records warn, they do not fail the check: {err}");
    assert!(err.contains("WARN records-valid") && err.contains("6 malformed"), "{err}");
}
