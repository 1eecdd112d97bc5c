//! The concrete level: one service's endpoints and how a call picks one. Per-request load
//! balancing, power of two choices over peak-EWMA latency with in-flight calls counted
//! ([`ewma`]), across the endpoints of a keyed [`pool`] that discovery ([`discovery`]) keeps in
//! step with the registry.
//!
//! Each request picks two distinct eligible endpoints at random and takes the one with the
//! lower cost, `latency estimate x (in-flight + 1) / weight`. The latency estimate jumps up at
//! once on a slow response (peak) and decays toward faster ones (EWMA, default decay 1 s). An
//! endpoint whose connection just failed sits out for a backoff (1 s doubling to 30 s). An endpoint
//! that fails 5 times in a row, or far more often than its peers, is ejected ([`outlier`]) for 30 s
//! x its ejections (at most 300 s, at most half of the endpoints) and comes back through a probe
//! call.

pub(crate) mod discovery;
pub(crate) mod ewma;
pub(crate) mod outlier;
pub(crate) mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_registry::Snapshot;
use mesh_registry::routes::Selector;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;

use self::outlier::{MAX_EJECTED_PERCENT, Verdict};
pub(crate) use self::pool::{Endpoint, InFlight, NewClient};
use self::pool::{Merge, Pool};
use crate::telemetry::Telemetry;
use crate::telemetry::events::{EndpointEjected, EndpointReturned};

/// Costs within this ratio of each other count as equal. Measured on loopback under CPU
/// contention, identical instances' estimates wander by 20-40 % for seconds at a time; a
/// tighter band turned that noise into lasting skew (one of three instances took 43 %),
/// while endpoints that are really slower (2x and more) are still avoided.
const TIE: f64 = 1.25;

/// Balancer tuning.
#[derive(Clone, Copy, Debug)]
pub struct BalancerSettings {
    /// Peak-EWMA decay time.
    pub decay: Duration,
    /// Latency assumed for an endpoint with no samples yet.
    pub default_rtt: Duration,
}

/// What a pick found when it found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Empty {
    /// Discovery has not listed the service yet (etcd unreachable since first use).
    NotSynced,
    /// The service has no instances.
    NoEndpoints,
    /// Instances exist but all are failing or drained (weight 0).
    NoneReady(usize),
}

/// The endpoints of one service and the state to pick among them.
#[derive(Debug)]
pub(crate) struct Balancer<C> {
    /// What picks read: replaced whole on each update.
    endpoints: RwLock<Arc<[Arc<Endpoint<C>>]>>,
    pool: Mutex<Pool<C>>,
    synced: AtomicBool,
    changed: Notify,
    pub(crate) settings: BalancerSettings,
    telemetry: Arc<Telemetry>,
    /// When success rates are next compared.
    next_rate_check: Mutex<Instant>,
}

/// A failure the caller saw from an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be opened or closed before the call was written: the endpoint
    /// sits out a backoff.
    NotConnected,
    /// Its proxy answered UNAVAILABLE itself, its connection broke mid-call, or an attempt
    /// timed out: counted as a 1 s response (failure accrual).
    Failed,
}

impl<C> Balancer<C> {
    /// A balancer whose endpoints get their clients from `new_client`.
    pub(crate) fn new(new_client: NewClient<C>, settings: BalancerSettings, telemetry: Arc<Telemetry>) -> Self {
        Self {
            endpoints: RwLock::new(Arc::from(Vec::new())),
            pool: Mutex::new(Pool::new(new_client, settings.default_rtt, telemetry.clone())),
            synced: AtomicBool::new(false),
            changed: Notify::new(),
            settings,
            telemetry,
            next_rate_check: Mutex::new(Instant::now() + outlier::RATE_INTERVAL),
        }
    }

    /// Applies a discovery snapshot: unchanged endpoints keep their connection and load.
    pub(crate) fn update(&self, snapshot: &Snapshot) -> Merge {
        let (endpoints, merge) = self.pool.lock().apply(snapshot);
        *self.endpoints.write() = Arc::from(endpoints);
        self.synced.store(snapshot.synced, Ordering::Release);
        self.changed.notify_waiters();
        merge
    }

    /// Picks an endpoint now, if any is eligible.
    #[cfg(test)]
    pub(crate) fn try_pick(&self) -> Result<InFlight<C>, Empty> {
        self.try_pick_in(None)
    }

    /// Whether discovery has listed the service (or given it endpoints).
    pub(crate) fn is_listed(&self) -> bool {
        self.synced.load(Ordering::Acquire) || !self.endpoints.read().is_empty()
    }

    /// Waits until discovery has listed the service, or `until`.
    pub(crate) async fn listed(&self, until: Instant) {
        loop {
            let changed = self.changed.notified();
            if self.is_listed() || Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Whether any endpoint (eligible now or not) belongs to `subset`.
    pub(crate) fn serves(&self, subset: &Selector) -> bool {
        self.endpoints.read().iter().any(|e| subset.matches(&e.record.labels))
    }

    /// Picks an endpoint of `subset` (all endpoints if `None`) now, if any is eligible.
    pub(crate) fn try_pick_in(&self, subset: Option<&Selector>) -> Result<InFlight<C>, Empty> {
        let endpoints = self.endpoints.read().clone();
        if endpoints.is_empty() {
            return Err(if self.synced.load(Ordering::Acquire) { Empty::NoEndpoints } else { Empty::NotSynced });
        }
        let now = Instant::now();
        let in_subset = |e: &&Arc<Endpoint<C>>| subset.is_none_or(|s| s.matches(&e.record.labels));
        // Two distinct eligible endpoints, drawn uniformly in one pass (reservoir sampling): no
        // list is built per call.
        let mut drawn: [Option<&Arc<Endpoint<C>>>; 2] = [None, None];
        for (seen, endpoint) in endpoints.iter().filter(in_subset).filter(|e| e.is_eligible(now)).enumerate() {
            let slot = if seen < 2 { seen } else { fastrand::usize(..=seen) };
            if let Some(slot) = drawn.get_mut(slot) {
                *slot = Some(endpoint);
            }
        }
        let chosen = match drawn {
            [None, _] if subset.is_some() && !endpoints.iter().any(|e| in_subset(&e)) => {
                return Err(Empty::NoEndpoints);
            }
            [None, _] => return Err(Empty::NoneReady(endpoints.len())),
            [Some(only), None] => only,
            [Some(first), Some(second)] => {
                // The draw fills the slots in list order: which one is `a` is a coin toss.
                let (a, b) = if fastrand::bool() { (first, second) } else { (second, first) };
                let decay = self.settings.decay;
                let (cost_a, cost_b) = (a.cost(decay, now), b.cost(decay, now));
                // Near-equal costs are a tie, so noise and estimates that differ only by when
                // they were last touched never turn into a fixed ranking. Ties go either way
                // (`a` is a random choice).
                if cost_a <= cost_b * TIE { a } else { b }
            }
        };
        Ok(InFlight::start(chosen))
    }

    /// Picks an endpoint, waiting until `deadline` for one to become eligible.
    #[cfg(test)]
    pub(crate) async fn pick(&self, deadline: Instant) -> Result<InFlight<C>, Empty> {
        self.pick_in(deadline, None).await
    }

    /// Picks an endpoint of `subset` (all if `None`), waiting until `deadline` for one to become
    /// eligible.
    pub(crate) async fn pick_in(&self, deadline: Instant, subset: Option<&Selector>) -> Result<InFlight<C>, Empty> {
        loop {
            let changed = self.changed.notified();
            let empty = match self.try_pick_in(subset) {
                Ok(picked) => return Ok(picked),
                Err(empty) => empty,
            };
            // Failing endpoints come back on their own: look again at least every 100 ms.
            let retry = (Instant::now() + Duration::from_millis(100)).min(deadline);
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(retry) => {}
            }
            if Instant::now() >= deadline {
                return self.try_pick_in(subset).map_err(|_| empty);
            }
        }
    }

    /// The fastest recent response among the endpoints a call could go to, if every one of them
    /// answered lately (an endpoint without samples might be faster, so nothing is claimed).
    pub(crate) fn fastest(&self, now: Instant) -> Option<Duration> {
        let endpoints = self.endpoints.read().clone();
        let mut eligible = endpoints.iter().filter(|e| e.is_eligible(now)).peekable();
        eligible.peek()?;
        eligible.map(|e| e.fastest(now)).try_fold(Duration::MAX, |min, f| f.map(|f| min.min(f)))
    }

    /// `endpoint` failed a call: it costs more, and a run of failures ejects it.
    pub(crate) fn failed(&self, endpoint: &Endpoint<C>, failure: Failure) {
        match failure {
            Failure::NotConnected => endpoint.penalize(self.settings.decay),
            Failure::Failed => endpoint.failed(self.settings.decay),
        }
        self.outlier_failure(endpoint);
    }

    /// `endpoint` answered after `rtt`; `unavailable` if the answer was UNAVAILABLE (its app's),
    /// which counts toward ejection without raising the latency estimate.
    pub(crate) fn answered(&self, endpoint: &Endpoint<C>, rtt: std::time::Duration, unavailable: bool) {
        endpoint.observe(rtt, self.settings.decay);
        if unavailable {
            self.outlier_failure(endpoint);
            return;
        }
        let now = Instant::now();
        self.check_success_rates(now);
        if endpoint.outlier_success(now) == Verdict::Returned {
            EndpointReturned {
                service: endpoint.record.service.as_str(),
                instance: endpoint.record.instance_id.as_str(),
            }
            .emit(&self.telemetry);
            self.changed.notify_waiters();
        }
    }

    /// `endpoint` shed the call (RESOURCE_EXHAUSTED, or asked for a pushback): it costs more for
    /// a while, so less load goes its way, but it is not ejected for being busy.
    pub(crate) fn shed(&self, endpoint: &Endpoint<C>) {
        endpoint.failed(self.settings.decay);
    }

    fn outlier_failure(&self, endpoint: &Endpoint<C>) {
        let now = Instant::now();
        let endpoints = self.endpoints.read().clone();
        let verdict = endpoint.outlier_failure(now, may_eject(&endpoints, now));
        self.ejected(endpoint, verdict, "consecutive failures");
        self.check_success_rates(now);
    }

    fn ejected(&self, endpoint: &Endpoint<C>, verdict: Verdict, why: &'static str) {
        if let Verdict::Ejected(length) = verdict {
            let (service, instance) = (endpoint.record.service.as_str(), endpoint.record.instance_id.as_str());
            EndpointEjected { service, instance, length, why }.emit(&self.telemetry);
        }
    }

    /// Every interval, ejects the endpoints whose success rates are outliers.
    fn check_success_rates(&self, now: Instant) {
        {
            let Some(mut next) = self.next_rate_check.try_lock() else { return };
            if now < *next {
                return;
            }
            *next = now + outlier::RATE_INTERVAL;
        }
        let endpoints = self.endpoints.read().clone();
        let counts: Vec<(u32, u32)> = endpoints.iter().map(|e| e.take_outlier_interval()).collect();
        for i in outlier::rate_outliers(&counts) {
            if may_eject(&endpoints, now) {
                self.ejected(&endpoints[i], endpoints[i].rate_outlier(now), "a success rate far below its peers'");
            }
        }
    }

    /// Endpoints known.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.read().len()
    }
}

/// Whether one more endpoint may go out: never more than half of them, and never all.
fn may_eject<C>(endpoints: &[Arc<Endpoint<C>>], now: Instant) -> bool {
    let out = endpoints.iter().filter(|e| e.is_out(now)).count();
    (out + 1) * 100 <= endpoints.len() * MAX_EJECTED_PERCENT && out + 1 < endpoints.len()
}

#[cfg(test)]
mod tests {
    use mesh_registry::{InstanceRecord, Layout};

    use super::*;

    fn balancer(ports: &[u16]) -> Balancer<u16> {
        let settings = BalancerSettings { decay: Duration::from_secs(10), default_rtt: Duration::from_millis(30) };
        let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"));
        // Fake clients: the port each endpoint was made for. No sockets.
        let b = Balancer::new(Arc::new(|r: &InstanceRecord| r.address.port()), settings, telemetry);
        let layout = Layout::default();
        let records = ports.iter().map(|p| {
            let r = InstanceRecord::new(
                "svc".parse().unwrap_or_else(|_| unreachable!()),
                format!("i{p}").parse().unwrap_or_else(|_| unreachable!()),
                format!("127.0.0.1:{p}").parse().unwrap_or_else(|_| unreachable!()),
            );
            (layout.instance(&r.service, &r.instance_id), r)
        });
        b.update(&Snapshot { records: records.collect(), synced: true, ..Snapshot::default() });
        b
    }

    fn picked(b: &Balancer<u16>) -> u16 {
        *b.try_pick().unwrap_or_else(|e| panic!("{e:?}")).endpoint().client()
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_ejects_at_most_a_share_and_a_probe_brings_it_back() {
        let b = balancer(&[1, 2, 3]);
        let eps = b.endpoints.read().clone();
        for _ in 0..outlier::CONSECUTIVE_FAILURES {
            b.failed(&eps[0], Failure::Failed);
        }
        assert!((0..300).all(|_| picked(&b) != 1), "ejected: never picked");
        // A second of three may not go: that would be more than half out.
        for _ in 0..outlier::CONSECUTIVE_FAILURES * 3 {
            b.failed(&eps[1], Failure::Failed);
        }
        let now = Instant::now();
        assert!(eps[1].is_eligible(now) && !eps[1].is_out(now), "the service cannot spare a second endpoint");
        b.answered(&eps[1], Duration::from_millis(1), false);

        // After 30 s, on probation: one call at a time, and a success brings it back fully.
        tokio::time::advance(outlier::BASE_EJECTION).await;
        let probe = (0..300).map(|_| b.try_pick()).find_map(|p| p.ok().filter(|p| *p.endpoint().client() == 1));
        let probe = probe.unwrap_or_else(|| panic!("the ejected endpoint gets a probe"));
        assert!((0..300).all(|_| picked(&b) != 1), "nothing else while its probe is in flight");
        b.answered(&eps[0], Duration::from_millis(1), false);
        let now = Instant::now();
        assert!(!eps[0].is_out(now) && eps[0].is_eligible(now), "back to full load, its probe still in flight");
        drop(probe);

        // Two endpoints: one may go, never both.
        let two = balancer(&[1, 2]);
        let eps = two.endpoints.read().clone();
        for _ in 0..outlier::CONSECUTIVE_FAILURES {
            two.failed(&eps[0], Failure::Failed);
            two.failed(&eps[1], Failure::Failed);
        }
        assert!(two.try_pick().is_ok(), "never all ejected");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_failing_often_but_never_five_in_a_row_is_ejected_by_its_success_rate() {
        let b = balancer(&[1, 2, 3]);
        let eps = b.endpoints.read().clone();
        for i in 0..40 {
            b.answered(&eps[0], Duration::from_millis(1), false);
            b.answered(&eps[1], Duration::from_millis(1), false);
            // Every other call fails: never a run of 5.
            b.answered(&eps[2], Duration::from_millis(1), i % 2 == 0);
        }
        tokio::time::advance(outlier::RATE_INTERVAL).await;
        b.answered(&eps[0], Duration::from_millis(1), false); // the check runs with the traffic
        assert!(eps[2].is_out(Instant::now()), "50 % against 100 %: ejected");
        assert!(!eps[0].is_out(Instant::now()) && !eps[1].is_out(Instant::now()));

        // A service whose endpoints all fail alike has no outlier.
        let b = balancer(&[1, 2, 3]);
        let eps = b.endpoints.read().clone();
        for i in 0..40 {
            for e in eps.iter() {
                b.answered(e, Duration::from_millis(1), i % 2 == 0);
            }
        }
        tokio::time::advance(outlier::RATE_INTERVAL).await;
        b.answered(&eps[0], Duration::from_millis(1), false);
        assert!(eps.iter().all(|e| !e.is_out(Instant::now())));
    }

    /// What happens to one endpoint in the property test below.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        Failed(usize),
        NotConnected(usize),
        Unavailable(usize),
        Succeeded(usize),
        Wait(u64),
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..6usize).prop_map(Event::Failed),
            1 => (0..6usize).prop_map(Event::NotConnected),
            2 => (0..6usize).prop_map(Event::Unavailable),
            2 => (0..6usize).prop_map(Event::Succeeded),
            1 => (0..400u64).prop_map(Event::Wait),
        ]
    }

    proptest::proptest! {
        /// Whatever the endpoints do, in whatever order and timing: never more than half of a
        /// service out, never all of it, and no ejection longer than the maximum.
        #[test]
        fn ejection_never_takes_more_than_half_nor_all(n in 1..=6usize, events in proptest::collection::vec(event(), 1..300)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
            runtime.block_on(async {
                let ports: Vec<u16> = (1..=n).map(|p| u16::try_from(p).unwrap_or(1)).collect();
                let b = balancer(&ports);
                let eps = b.endpoints.read().clone();
                for event in events {
                    match event {
                        Event::Failed(i) => b.failed(&eps[i % n], Failure::Failed),
                        Event::NotConnected(i) => b.failed(&eps[i % n], Failure::NotConnected),
                        Event::Unavailable(i) => b.answered(&eps[i % n], Duration::from_millis(1), true),
                        Event::Succeeded(i) => b.answered(&eps[i % n], Duration::from_millis(1), false),
                        Event::Wait(s) => tokio::time::advance(Duration::from_secs(s)).await,
                    }
                    let now = Instant::now();
                    let out = eps.iter().filter(|e| e.is_out(now)).count();
                    proptest::prop_assert!(out * 100 <= n * MAX_EJECTED_PERCENT, "{out} of {n} out");
                    proptest::prop_assert!(out < n || n == 0, "all {n} out");
                    let later = now + outlier::MAX_EJECTION;
                    proptest::prop_assert!(eps.iter().all(|e| e.is_eligible(later)), "out beyond the longest ejection");
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn spreads_requests_and_prefers_the_less_loaded() {
        let b = balancer(&[1, 2, 3]);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[usize::from(picked(&b)) - 1] += 1;
        }
        assert!(counts.iter().all(|&c| (750..=1250).contains(&c)), "{counts:?}");

        // Endpoint 1 becomes slow: it is picked far less.
        let eps = b.endpoints.read().clone();
        eps[0].observe(Duration::from_secs(1), Duration::from_secs(10));
        let slow_picks = (0..3000).filter(|_| picked(&b) == 1).count();
        assert!(slow_picks < 100, "a slow endpoint is avoided: {slow_picks}");

        // Endpoint 2 has calls in flight: against endpoint 3 it loses, so it only wins against the
        // slow endpoint 1 (about a third of the picks, against half without the load).
        let held: Vec<_> = (0..20).map(|_| InFlight::start(&eps[1])).collect();
        let (mut two, mut three) = (0, 0);
        for _ in 0..3000 {
            match picked(&b) {
                2 => two += 1,
                3 => three += 1,
                _ => {}
            }
        }
        assert!(two * 3 < three * 2, "in-flight calls count as load: {two} vs {three}");
        drop(held);
    }

    #[tokio::test]
    async fn failing_endpoints_sit_out_their_backoff() {
        let b = balancer(&[1, 2]);
        let eps = b.endpoints.read().clone();
        eps[0].penalize(Duration::from_secs(10));
        for _ in 0..100 {
            assert_eq!(picked(&b), 2);
        }
        eps[1].penalize(Duration::from_secs(10));
        assert_eq!(b.try_pick().err(), Some(Empty::NoneReady(2)));
        let empty = balancer(&[]);
        assert_eq!(empty.try_pick().err(), Some(Empty::NoEndpoints));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pick_waits_for_an_endpoint_until_its_deadline() {
        let b = Arc::new(balancer(&[1]));
        let eps = b.endpoints.read().clone();
        eps[0].penalize(Duration::from_secs(10));
        let started = Instant::now();
        // The only endpoint sits out at most 1 s: a pick that may wait 3 s gets it back.
        let waiting = b.pick(started + Duration::from_secs(3)).await;
        assert_eq!(waiting.map(|p| *p.endpoint().client()), Ok(1));
        assert!(started.elapsed() <= Duration::from_millis(1100), "{:?}", started.elapsed());
        // One that may wait 100 ms does not.
        eps[0].penalize(Duration::from_secs(10));
        let started = Instant::now();
        assert_eq!(b.pick(started + Duration::from_millis(100)).await.err(), Some(Empty::NoneReady(1)));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
