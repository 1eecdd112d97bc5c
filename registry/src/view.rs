//! The state behind a discovery view, without any I/O.
//!
//! A view is a map from etcd key to decoded record. The watcher feeds it three kinds of input:
//! a put, a delete, and a full re-list that replaces everything. Keeping this pure lets the
//! property test drive it through any sequence of events, compactions and reconnects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::layout::Layout;
use crate::metrics::Metrics;
use crate::record::{DecodeError, InstanceRecord};

/// One malformed value under the prefix, as reported to users (`meshctl`, logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The etcd key.
    pub key: String,
    /// What is wrong with it.
    pub error: DecodeError,
}

/// What a view holds at one moment. Published to subscribers behind an `Arc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Valid records by etcd key.
    pub records: BTreeMap<String, InstanceRecord>,
    /// The etcd revision this state reflects (0 before the first list).
    pub revision: i64,
    /// True once a first list has completed; an unsynced empty view means "unknown", not "none".
    pub synced: bool,
    /// True while etcd is unreachable and this is the last known state.
    pub stale: bool,
    /// How many keys under the prefix currently hold malformed values.
    pub malformed: usize,
}

impl Snapshot {
    /// The records, in key order.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.records.values()
    }
}

/// The mutable state of a view.
#[derive(Debug)]
pub(crate) struct ViewState {
    layout: Layout,
    snapshot: Snapshot,
    /// Malformed keys and the mod revision of the bad value already reported, so each bad
    /// value is logged and counted once however often it is re-listed.
    reported: HashMap<String, i64>,
    metrics: Arc<Metrics>,
}

impl ViewState {
    pub(crate) fn new(layout: Layout, metrics: Arc<Metrics>) -> Self {
        Self { layout, snapshot: Snapshot::default(), reported: HashMap::new(), metrics }
    }

    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Marks the view stale or live; returns whether that changed.
    pub(crate) fn set_stale(&mut self, stale: bool) -> bool {
        let changed = self.snapshot.stale != stale;
        self.snapshot.stale = stale;
        changed
    }

    /// Applies a put; returns whether the published state changed.
    pub(crate) fn put(&mut self, key: &str, value: &[u8], mod_revision: i64) -> bool {
        match InstanceRecord::decode(&self.layout, key, value) {
            Ok(record) => {
                self.clear_malformed(key);
                let changed = self.snapshot.records.get(key) != Some(&record);
                self.snapshot.records.insert(key.to_string(), record);
                changed
            }
            Err(error) => {
                self.report_malformed(key, mod_revision, error);
                // The key no longer describes a usable instance; other keys are untouched.
                self.snapshot.records.remove(key).is_some() | self.sync_malformed_count()
            }
        }
    }

    /// Applies a delete; returns whether the published state changed.
    pub(crate) fn delete(&mut self, key: &str) -> bool {
        let had_malformed = self.clear_malformed(key);
        self.snapshot.records.remove(key).is_some() | had_malformed
    }

    /// Records the revision reached by a batch of watch events.
    pub(crate) fn advance(&mut self, revision: i64) {
        self.snapshot.revision = self.snapshot.revision.max(revision);
    }

    /// Replaces the whole state with a full listing taken at `revision`; returns whether the
    /// published records changed. The view becomes synced and live.
    pub(crate) fn replace<'a>(
        &mut self,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8], i64)>,
        revision: i64,
    ) -> bool {
        let before = std::mem::take(&mut self.snapshot.records);
        let mut still_bad = HashMap::new();
        for (key, value, mod_revision) in kvs {
            match InstanceRecord::decode(&self.layout, key, value) {
                Ok(record) => {
                    self.snapshot.records.insert(key.to_string(), record);
                }
                Err(error) => {
                    self.report_malformed(key, mod_revision, error);
                    still_bad.insert(key.to_string(), mod_revision);
                }
            }
        }
        self.reported = still_bad;
        let changed = before != self.snapshot.records || !self.snapshot.synced;
        self.sync_malformed_count();
        self.snapshot.revision = revision;
        self.snapshot.synced = true;
        self.snapshot.stale = false;
        changed
    }

    fn report_malformed(&mut self, key: &str, mod_revision: i64, error: DecodeError) {
        if self.reported.get(key) == Some(&mod_revision) {
            return;
        }
        self.reported.insert(key.to_string(), mod_revision);
        self.metrics.malformed_records.with_label_values(&[error.reason()]).inc();
        tracing::warn!(%key, mod_revision, %error, "skipping malformed value under the mesh prefix");
    }

    fn clear_malformed(&mut self, key: &str) -> bool {
        let had = self.reported.remove(key).is_some();
        self.sync_malformed_count();
        had
    }

    fn sync_malformed_count(&mut self) -> bool {
        let changed = self.snapshot.malformed != self.reported.len();
        self.snapshot.malformed = self.reported.len();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_json(id: &str, port: u16) -> Vec<u8> {
        format!(
            r#"{{"service":"orders","instance_id":"{id}","address":"127.0.0.1:{port}","started_at":"2026-11-27T10:00:00Z"}}"#
        )
        .into_bytes()
    }

    fn key(id: &str) -> String {
        format!("/mesh/v1/services/orders/instances/{id}")
    }

    /// One step of what etcd and the connection between etcd and a watcher can do.
    #[derive(Clone, Debug)]
    enum Op {
        /// A put of a valid (port > 0) or malformed (port 0 / garbage) value.
        Put {
            id: u8,
            port: u16,
            garbage: bool,
        },
        Delete {
            id: u8,
        },
        /// History is compacted: the watcher misses every event until it re-lists.
        Compact,
        /// The connection drops: events are lost until the watcher reconnects and re-lists.
        Disconnect,
        /// The watcher re-lists (after a compaction or a reconnect).
        Relist,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..6, 0u16..4, any::<bool>()).prop_map(|(id, port, garbage)| Op::Put { id, port, garbage }),
            3 => (0u8..6).prop_map(|id| Op::Delete { id }),
            1 => Just(Op::Compact),
            1 => Just(Op::Disconnect),
            1 => Just(Op::Relist),
        ]
    }

    /// What the watcher should hold: every valid record in etcd, nothing else.
    fn expected(store: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, InstanceRecord> {
        store
            .iter()
            .filter_map(|(k, v)| InstanceRecord::decode(&Layout::default(), k, v).ok().map(|r| (k.clone(), r)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any sequence of puts, deletes, compactions and reconnects, followed by a re-list,
        /// ends equal to etcd's final state; while connected, applying events keeps the view
        /// equal to etcd at every step.
        #[test]
        fn relist_converges_to_the_final_state(ops in proptest::collection::vec(op(), 0..64)) {
            let metrics = Arc::new(Metrics::new());
            let mut view = ViewState::new(Layout::default(), metrics.clone());
            let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut revision = 1i64;
            let mut connected = true;
            view.replace(std::iter::empty(), revision);
            for op in ops {
                match op {
                    Op::Put { id, port, garbage } => {
                        revision += 1;
                        let k = key(&format!("i-{id}"));
                        let v = if garbage { b"{not json".to_vec() } else { record_json(&format!("i-{id}"), port) };
                        store.insert(k.clone(), v.clone());
                        if connected { view.put(&k, &v, revision); view.advance(revision); }
                    }
                    Op::Delete { id } => {
                        let k = key(&format!("i-{id}"));
                        if store.remove(&k).is_some() {
                            revision += 1;
                            if connected { view.delete(&k); view.advance(revision); }
                        }
                    }
                    Op::Compact | Op::Disconnect => connected = false,
                    Op::Relist => {
                        view.replace(store.iter().map(|(k, v)| (k.as_str(), v.as_slice(), revision)), revision);
                        connected = true;
                    }
                }
                if connected {
                    prop_assert_eq!(&view.snapshot().records, &expected(&store));
                }
            }
            view.replace(store.iter().map(|(k, v)| (k.as_str(), v.as_slice(), revision)), revision);
            prop_assert_eq!(&view.snapshot().records, &expected(&store));
            prop_assert_eq!(view.snapshot().revision, revision);
            prop_assert_eq!(view.snapshot().malformed, store.len() - expected(&store).len());
        }
    }

    #[test]
    fn a_malformed_value_is_counted_once_and_spares_the_others() {
        let metrics = Arc::new(Metrics::new());
        let mut view = ViewState::new(Layout::default(), metrics.clone());
        view.replace([(key("a").as_str(), record_json("a", 1).as_slice(), 1)], 1);
        assert!(view.put(&key("b"), b"garbage", 2));
        // The same bad value seen again by a re-list is not counted again.
        let good = record_json("a", 1);
        view.replace([(key("a").as_str(), good.as_slice(), 1), (key("b").as_str(), b"garbage".as_slice(), 2)], 3);
        assert_eq!(metrics.malformed_records.with_label_values(&["invalid"]).get(), 1);
        assert_eq!(view.snapshot().records.len(), 1);
        assert_eq!(view.snapshot().malformed, 1);
        // A valid value replacing the bad one clears it.
        assert!(view.put(&key("b"), &record_json("b", 2), 4));
        assert_eq!((view.snapshot().records.len(), view.snapshot().malformed), (2, 0));
    }
}
