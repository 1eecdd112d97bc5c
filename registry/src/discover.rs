//! Discovery: a live, watch-driven [`View`] of the instances under a key prefix (one service,
//! or every service for the catalog).
//!
//! The watcher lists the prefix, then watches from the next revision. On compaction or on any
//! stream or connection error it re-lists and replaces the view; a periodic anti-entropy re-list
//! guards against events lost any other way. While etcd is unreachable the view keeps serving
//! the last known state (marked stale): a transport error never empties a view.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::layout::Layout;
use crate::metrics::Metrics;
use crate::name::ServiceName;
use crate::view::{Snapshot, ViewState};
use mesh_common::backoff::Backoff;

/// How a view keeps itself correct.
#[derive(Clone, Copy, Debug)]
pub struct ViewConfig {
    /// How often to re-list even when the watch looks healthy (default 5 min).
    pub anti_entropy_interval: Duration,
    /// Longest wait between re-list attempts while etcd is unreachable (default 5 s).
    pub max_backoff: Duration,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self { anti_entropy_interval: Duration::from_secs(300), max_backoff: Duration::from_secs(5) }
    }
}

/// A live view of the records under one prefix. Cheap to read; the watch task stops when the
/// view is dropped.
#[derive(Debug)]
pub struct View {
    rx: watch::Receiver<Arc<Snapshot>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for View {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl View {
    /// A view of one service's instances.
    pub fn service(
        client: Client,
        layout: &Layout,
        service: &ServiceName,
        config: ViewConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::start(client, layout, layout.instances(service), config, metrics, None)
    }

    /// A view of every instance of every service.
    pub fn catalog(client: Client, layout: &Layout, config: ViewConfig, metrics: Arc<Metrics>) -> Self {
        Self::start(client, layout, layout.services(), config, metrics, None)
    }

    /// A view of one service that starts from a state the caller already holds (say, taken from
    /// the catalog) and watches from `snapshot.revision + 1` instead of listing first. If that
    /// revision has been compacted, the view re-lists.
    pub fn service_from(
        client: Client,
        layout: &Layout,
        service: &ServiceName,
        snapshot: Snapshot,
        config: ViewConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::start(client, layout, layout.instances(service), config, metrics, Some(snapshot))
    }

    fn start(
        client: Client,
        layout: &Layout,
        prefix: String,
        config: ViewConfig,
        metrics: Arc<Metrics>,
        bootstrap: Option<Snapshot>,
    ) -> Self {
        let mut state = ViewState::new(layout.clone(), metrics.clone());
        let resume = bootstrap.map(|snapshot| {
            let revision = snapshot.revision;
            let records = snapshot.records.iter().map(|(k, r)| (k.as_str(), r.encode()));
            let records: Vec<_> = records.collect();
            state.replace(records.iter().map(|(k, v)| (*k, v.as_slice(), revision)), revision);
            revision
        });
        let (tx, rx) = watch::channel(Arc::new(state.snapshot().clone()));
        let watcher = Watcher { client, prefix, config, metrics, state, tx, stale: false };
        let task = tokio::spawn(watcher.run(resume));
        Self { rx, task }
    }

    /// The current state.
    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// Waits until the first list has completed.
    pub async fn synced(&self) -> Arc<Snapshot> {
        let mut rx = self.rx.clone();
        match rx.wait_for(|s| s.synced).await {
            Ok(s) => s.clone(),
            Err(_) => self.current(),
        }
    }
}

struct Watcher {
    client: Client,
    prefix: String,
    config: ViewConfig,
    metrics: Arc<Metrics>,
    state: ViewState,
    tx: watch::Sender<Arc<Snapshot>>,
    stale: bool,
}

/// Why a watch stopped and a re-list is due.
enum Relist {
    Compacted,
    Reconnect,
    AntiEntropy,
}

impl Relist {
    fn reason(&self) -> &'static str {
        match self {
            Self::Compacted => "compacted",
            Self::Reconnect => "reconnect",
            Self::AntiEntropy => "anti_entropy",
        }
    }
}

impl Watcher {
    async fn run(mut self, mut resume: Option<i64>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.config.max_backoff);
        let mut reason = "initial";
        loop {
            let revision = match resume.take() {
                Some(revision) => revision,
                None => match self.relist(reason).await {
                    Ok(revision) => revision,
                    Err(error) => {
                        tracing::warn!(prefix = %self.prefix, %error, "cannot list; serving the last known state");
                        self.set_stale(true);
                        tokio::time::sleep(backoff.next_delay()).await;
                        reason = "reconnect";
                        continue;
                    }
                },
            };
            let why = self.watch_from(revision + 1, &mut backoff).await;
            if matches!(why, Relist::Reconnect) {
                self.metrics.watch_errors.inc();
                tokio::time::sleep(backoff.next_delay()).await;
            }
            reason = why.reason();
        }
    }

    /// Lists the prefix and replaces the view; returns the revision of the listing.
    async fn relist(&mut self, reason: &'static str) -> Result<i64, etcd_client::Error> {
        self.metrics.relists.with_label_values(&[reason]).inc();
        let resp = self.client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let keys: Vec<_> = resp.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key())).collect();
        let kvs = resp.kvs().iter().zip(&keys).map(|(kv, key)| (key.as_ref(), kv.value(), kv.mod_revision()));
        let changed = self.state.replace(kvs, revision);
        tracing::debug!(prefix = %self.prefix, revision, reason, changed, "listed");
        if changed || self.stale {
            self.set_stale(false);
            self.publish();
        }
        Ok(revision)
    }

    /// Applies watch events from `start` until the watch must be replaced by a re-list.
    async fn watch_from(&mut self, start: i64, backoff: &mut Backoff) -> Relist {
        let options = WatchOptions::new().with_prefix().with_start_revision(start).with_progress_notify();
        let mut stream = match self.client.watch(self.prefix.as_str(), Some(options)).await {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(prefix = %self.prefix, %error, "cannot watch; serving the last known state");
                self.set_stale(true);
                return Relist::Reconnect;
            }
        };
        let mut anti_entropy = tokio::time::interval(self.config.anti_entropy_interval);
        anti_entropy.set_missed_tick_behavior(MissedTickBehavior::Delay);
        anti_entropy.tick().await;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = anti_entropy.tick() => return Relist::AntiEntropy,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "watch stream ended; re-listing");
                    self.set_stale(true);
                    return Relist::Reconnect;
                }
                Err(error) => {
                    tracing::warn!(prefix = %self.prefix, %error, "watch failed; serving the last known state");
                    self.set_stale(true);
                    return Relist::Reconnect;
                }
            };
            if resp.compact_revision() > 0 {
                tracing::info!(prefix = %self.prefix, start, compacted = resp.compact_revision(), "watch start compacted; re-listing");
                return Relist::Compacted;
            }
            if resp.canceled() {
                tracing::warn!(prefix = %self.prefix, reason = resp.cancel_reason(), "watch cancelled by etcd; re-listing");
                return Relist::Reconnect;
            }
            backoff.reset();
            let mut changed = false;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                changed |= match event.event_type() {
                    EventType::Put => self.state.put(&key, kv.value(), kv.mod_revision()),
                    EventType::Delete => self.state.delete(&key),
                };
            }
            if let Some(header) = resp.header() {
                self.state.advance(header.revision());
            }
            if changed {
                self.publish();
            }
        }
    }

    fn set_stale(&mut self, stale: bool) {
        if stale != self.stale {
            self.stale = stale;
            if stale { self.metrics.views_stale.inc() } else { self.metrics.views_stale.dec() }
        }
        if self.state.set_stale(stale) {
            self.publish();
        }
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.state.snapshot().clone()));
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.stale {
            self.metrics.views_stale.dec();
        }
    }
}
