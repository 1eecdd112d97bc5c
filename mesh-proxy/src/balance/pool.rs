//! One service's endpoints, keyed by instance id. A registry snapshot is applied as one O(n)
//! merge: an instance that is still there at the same address keeps its connection, its latency
//! estimate and its in-flight count (its record, weight and labels included, is refreshed); a new,
//! moved or restarted (new `started_at`) instance gets a fresh client from the injected factory
//! and a clean slate (no backoff, no ejection); a departed one is dropped
//! (its connection closes when its last call ends). The pool never knows how to connect.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_common::backoff::Backoff;
use mesh_registry::{InstanceId, InstanceRecord, Snapshot};
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::time::Instant;

use super::ewma::{PeakEwma, RecentFastest};
use super::outlier::{Outlier, Verdict};
use crate::telemetry::Telemetry;
use crate::telemetry::trace::EndpointTag;

/// What a failure counts as in an endpoint's latency estimate.
const FAILURE_COST: Duration = Duration::from_secs(1);

/// Makes the client for a new endpoint (a connection to its address, or a test's fake).
pub(crate) type NewClient<C> = Arc<dyn Fn(&InstanceRecord) -> C + Send + Sync>;

/// What survives a record update at the same address: the connection and the load.
#[derive(Debug)]
struct State<C> {
    client: C,
    load: Mutex<PeakEwma>,
    fastest: Mutex<RecentFastest>,
    in_flight: AtomicUsize,
    failing: Mutex<Failing>,
    outlier: Mutex<Outlier>,
    /// This endpoint's `mesh_balancer_picks_total` series, resolved once.
    picks: IntCounter,
}

/// Connection failures: an endpoint sits out a backoff (1 s doubling to 30 s, jittered).
#[derive(Debug)]
struct Failing {
    backoff: Backoff,
    until: Option<Instant>,
}

/// One instance of the service, with its connection and load.
#[derive(Debug)]
pub(crate) struct Endpoint<C> {
    pub(crate) record: InstanceRecord,
    /// What spans record of it.
    pub(crate) tag: EndpointTag,
    state: Arc<State<C>>,
}

impl<C> Endpoint<C> {
    /// The connection to this endpoint.
    pub(crate) fn client(&self) -> &C {
        &self.state.client
    }

    /// Calls in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// `latency estimate x (in-flight + 1) / weight`.
    pub(crate) fn cost(&self, decay: Duration, now: Instant) -> f64 {
        let rtt = self.state.load.lock().decayed(decay, now);
        let weight = f64::from(self.record.weight.max(1)) / f64::from(mesh_registry::record::DEFAULT_WEIGHT);
        rtt * (self.in_flight() + 1) as f64 / weight
    }

    /// Whether it is sitting out a connection failure's backoff.
    pub(crate) fn is_failing(&self, now: Instant) -> bool {
        self.state.failing.lock().until.is_some_and(|until| until > now)
    }

    /// The connection could not be opened or closed under a request: sit out for a backoff, and
    /// count the failure as a very slow response so the estimate stays high after it returns.
    pub(crate) fn penalize(&self, decay: Duration) {
        let mut failing = self.state.failing.lock();
        failing.until = Some(Instant::now() + failing.backoff.next_delay());
        self.state.load.lock().observe(FAILURE_COST, decay);
    }

    /// The endpoint answered with a failure it made itself (its app unreachable, a call never
    /// processed): the failure counts as a very slow response (failure accrual), so the endpoint
    /// is avoided while it keeps failing, instead of looking fast because it fails fast. Unlike
    /// [`Self::penalize`] it does not sit out: the connection works.
    pub(crate) fn failed(&self, decay: Duration) {
        self.state.load.lock().observe(FAILURE_COST, decay);
    }

    /// Whether a call may go to it now: not drained (weight 0), not sitting out a connection
    /// failure, not ejected, and not on probation with its one probe call in flight.
    pub(crate) fn is_eligible(&self, now: Instant) -> bool {
        if self.record.weight == 0 || self.is_failing(now) {
            return false;
        }
        let outlier = self.state.outlier.lock();
        let probing = outlier.on_probation(now) && self.in_flight() > 0;
        !outlier.is_ejected(now) && !probing
    }

    /// Ejected or on probation (counts toward the service's share out).
    pub(crate) fn is_out(&self, now: Instant) -> bool {
        self.state.outlier.lock().is_out(now)
    }

    /// Tells the outlier state of a gateway-class failure.
    pub(crate) fn outlier_failure(&self, now: Instant, may_eject: bool) -> Verdict {
        self.state.outlier.lock().failure(now, may_eject)
    }

    /// Its success-rate counts of the interval that ends now.
    pub(crate) fn take_outlier_interval(&self) -> (u32, u32) {
        self.state.outlier.lock().take_interval()
    }

    /// Ejects it for its success rate (unless it is out already).
    pub(crate) fn rate_outlier(&self, now: Instant) -> Verdict {
        self.state.outlier.lock().rate_outlier(now)
    }

    /// Tells the outlier state of a success.
    pub(crate) fn outlier_success(&self, now: Instant) -> Verdict {
        self.state.outlier.lock().success(now)
    }

    /// Its fastest response of about the last 10 s.
    pub(crate) fn fastest(&self, now: Instant) -> Option<Duration> {
        self.state.fastest.lock().get(now)
    }

    /// A response arrived `rtt` after the request was sent.
    pub(crate) fn observe(&self, rtt: Duration, decay: Duration) {
        self.state.fastest.lock().observe(rtt, Instant::now());
        {
            let mut failing = self.state.failing.lock();
            failing.backoff.reset();
            failing.until = None;
        }
        self.state.load.lock().observe(rtt, decay);
    }
}

/// Counts a call in flight on an endpoint until dropped (held by the response body).
#[derive(Debug)]
pub(crate) struct InFlight<C>(Arc<Endpoint<C>>);

impl<C> InFlight<C> {
    /// Takes `endpoint` for one call.
    pub(crate) fn start(endpoint: &Arc<Endpoint<C>>) -> Self {
        endpoint.state.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.state.picks.inc();
        Self(endpoint.clone())
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint<C>> {
        &self.0
    }
}

impl<C> Drop for InFlight<C> {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a snapshot changed the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Merge {
    /// New instances (or instances at a new address, or restarted): fresh clients and state.
    pub(crate) added: usize,
    /// Instances kept with their connection and load (records refreshed).
    pub(crate) kept: usize,
    /// Instances gone.
    pub(crate) removed: usize,
}

/// One service's endpoints by instance id.
pub(crate) struct Pool<C> {
    by_id: HashMap<InstanceId, Arc<Endpoint<C>>>,
    new_client: NewClient<C>,
    default_rtt: Duration,
    telemetry: Arc<Telemetry>,
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("endpoints", &self.by_id.len()).finish_non_exhaustive()
    }
}

impl<C> Pool<C> {
    pub(crate) fn new(new_client: NewClient<C>, default_rtt: Duration, telemetry: Arc<Telemetry>) -> Self {
        Self { by_id: HashMap::new(), new_client, default_rtt, telemetry }
    }

    /// Applies a discovery snapshot (O(n) in the endpoints) and returns the endpoints in the
    /// snapshot's order, and what changed.
    pub(crate) fn apply(&mut self, snapshot: &Snapshot) -> (Vec<Arc<Endpoint<C>>>, Merge) {
        let mut merge = Merge::default();
        let mut next = HashMap::with_capacity(self.by_id.len());
        let mut ordered = Vec::with_capacity(self.by_id.len());
        for record in snapshot.instances() {
            let endpoint = match self.by_id.remove(&record.instance_id) {
                Some(current) if current.record == *record => {
                    merge.kept += 1;
                    current
                }
                // Same instance, same address, same process: new record (weight, labels), same
                // connection and load.
                Some(current)
                    if current.record.address == record.address && current.record.started_at == record.started_at =>
                {
                    merge.kept += 1;
                    Arc::new(Endpoint {
                        record: record.clone(),
                        tag: current.tag.clone(),
                        state: current.state.clone(),
                    })
                }
                // New, moved, or restarted (its failures and ejection were the old process's): a
                // fresh endpoint. Its picks series (by service and instance) carries on.
                _ => {
                    merge.added += 1;
                    Arc::new(self.endpoint(record))
                }
            };
            ordered.push(endpoint.clone());
            next.insert(record.instance_id.clone(), endpoint);
        }
        for gone in self.by_id.values() {
            merge.removed += 1;
            self.telemetry.forget_endpoint(gone.record.service.as_str(), gone.record.instance_id.as_str());
        }
        self.by_id = next;
        (ordered, merge)
    }

    fn endpoint(&self, record: &InstanceRecord) -> Endpoint<C> {
        let (service, instance) = (record.service.as_str(), record.instance_id.as_str());
        Endpoint {
            tag: EndpointTag { instance: Arc::from(instance), addr: Arc::from(record.address.to_string()) },
            state: Arc::new(State {
                client: (self.new_client)(record),
                load: Mutex::new(PeakEwma::new(self.default_rtt)),
                fastest: Mutex::default(),
                in_flight: AtomicUsize::new(0),
                failing: Mutex::new(Failing {
                    backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                    until: None,
                }),
                outlier: Mutex::default(),
                picks: self.telemetry.endpoint_picks(service, instance),
            }),
            record: record.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use mesh_registry::Layout;

    use super::*;

    /// A fake client: which record it was made for, and a serial number.
    #[derive(Debug)]
    struct Fake {
        addr: String,
        serial: u32,
    }

    fn record(id: &str, addr: &str, weight: u32) -> InstanceRecord {
        let mut r = InstanceRecord::new(
            "svc".parse().unwrap_or_else(|_| unreachable!()),
            id.parse().unwrap_or_else(|_| unreachable!()),
            addr.parse().unwrap_or_else(|_| unreachable!()),
        );
        r.weight = weight;
        // Pinned: `new` stamps the wall clock to the millisecond, and two snapshots built a millisecond
        // apart would otherwise describe a restarted instance.
        r.started_at = "2026-12-01T00:00:00Z".to_string();
        r
    }

    fn snapshot(records: &[InstanceRecord]) -> Snapshot {
        let layout = Layout::default();
        let records = records.iter().map(|r| (layout.instance(&r.service, &r.instance_id), r.clone())).collect();
        Snapshot { records, synced: true, ..Snapshot::default() }
    }

    fn pool() -> (Pool<Fake>, Arc<AtomicU32>) {
        let made = Arc::new(AtomicU32::new(0));
        let counter = made.clone();
        let new_client: NewClient<Fake> = Arc::new(move |r: &InstanceRecord| Fake {
            addr: r.address.to_string(),
            serial: counter.fetch_add(1, Ordering::Relaxed),
        });
        let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"));
        (Pool::new(new_client, Duration::from_millis(30), telemetry), made)
    }

    fn serials(endpoints: &[Arc<Endpoint<Fake>>]) -> Vec<(String, u32)> {
        endpoints.iter().map(|e| (e.record.instance_id.to_string(), e.client().serial)).collect()
    }

    #[test]
    fn a_snapshot_keeps_unchanged_endpoints_and_their_load() {
        let (mut pool, made) = pool();
        let (first, merge) = pool.apply(&snapshot(&[record("a", "10.0.0.1:1", 100), record("b", "10.0.0.2:1", 100)]));
        assert_eq!(merge, Merge { added: 2, kept: 0, removed: 0 });
        let _busy = InFlight::start(&first[0]);

        // b leaves, c joins, a stays (with a new weight).
        let (next, merge) = pool.apply(&snapshot(&[record("a", "10.0.0.1:1", 50), record("c", "10.0.0.3:1", 100)]));
        assert_eq!(merge, Merge { added: 1, kept: 1, removed: 1 });
        assert_eq!(serials(&next), [("a".to_string(), 0), ("c".to_string(), 2)], "a kept its client");
        assert_eq!(next[0].in_flight(), 1, "and its in-flight count");
        assert_eq!(next[0].record.weight, 50, "with its new record");
        assert_eq!(made.load(Ordering::Relaxed), 3, "one client made per new endpoint, none for a kept one");
    }

    #[test]
    fn an_instance_at_a_new_address_gets_a_new_client() {
        let (mut pool, _) = pool();
        pool.apply(&snapshot(&[record("a", "10.0.0.1:1", 100)]));
        let (next, merge) = pool.apply(&snapshot(&[record("a", "10.0.0.9:1", 100)]));
        assert_eq!(merge, Merge { added: 1, kept: 0, removed: 0 });
        assert_eq!(next[0].client().addr, "10.0.0.9:1");
        assert_eq!(next[0].client().serial, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_instance_starts_afresh_not_ejected_nor_backing_off() {
        let (mut pool, _) = pool();
        let (first, _) = pool.apply(&snapshot(&[record("a", "10.0.0.1:1", 100), record("b", "10.0.0.2:1", 100)]));
        let now = Instant::now();
        for _ in 0..super::super::outlier::CONSECUTIVE_FAILURES {
            first[0].penalize(Duration::from_secs(1));
            first[0].outlier_failure(now, true);
        }
        assert!(first[0].is_failing(now) && first[0].is_out(now), "a is backing off and ejected");

        // Its proxy was killed and came back at the same address: a new `started_at`.
        let mut restarted = record("a", "10.0.0.1:1", 100);
        restarted.started_at = "2026-12-03T07:00:00Z".to_string();
        let (next, merge) = pool.apply(&snapshot(&[restarted, record("b", "10.0.0.2:1", 100)]));
        assert_eq!(merge, Merge { added: 1, kept: 1, removed: 0 });
        assert_eq!(next[0].client().serial, 2, "a new client for the new process");
        assert!(!next[0].is_failing(now) && !next[0].is_out(now), "and none of the old one's failures");
    }

    #[test]
    fn a_large_snapshot_merges_in_linear_time() {
        let (mut pool, _) = pool();
        let records: Vec<_> =
            (0..20_000).map(|i| record(&format!("i{i}"), &format!("10.1.{}.{}:1", i / 250, i % 250), 100)).collect();
        pool.apply(&snapshot(&records));
        let started = std::time::Instant::now();
        let (_, merge) = pool.apply(&snapshot(&records));
        assert_eq!(merge.kept, 20_000);
        // A quadratic merge of 20 000 endpoints takes seconds; a linear one, milliseconds.
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_endpoint_sits_out_a_growing_jittered_backoff() {
        let (mut pool, _) = pool();
        let (endpoints, _) = pool.apply(&snapshot(&[record("a", "10.0.0.1:1", 100)]));
        let a = &endpoints[0];
        let decay = Duration::from_secs(1);
        a.penalize(decay);
        assert!(a.is_failing(Instant::now()));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!a.is_failing(Instant::now()), "the first backoff is at most 1 s");
        a.penalize(decay);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(a.is_failing(Instant::now()), "the second is at least 1 s (2 s less half at most)");
        tokio::time::advance(Duration::from_millis(1002)).await;
        assert!(!a.is_failing(Instant::now()), "and at most 2 s");
        a.penalize(decay);
        a.observe(Duration::from_millis(1), decay);
        assert!(!a.is_failing(Instant::now()), "a response ends the backoff");
        a.penalize(decay);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!a.is_failing(Instant::now()), "and resets it to 1 s");
    }
}
