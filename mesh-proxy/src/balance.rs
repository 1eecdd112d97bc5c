//! Per-request load balancing: power of two choices over peak-EWMA latency, with in-flight
//! requests counted, across one service's endpoints.
//!
//! Each request picks two distinct eligible endpoints at random and takes the one with the
//! lower cost, `latency estimate x (in-flight + 1) / weight`. The latency estimate jumps up at
//! once on a slow response (peak) and decays toward faster ones (EWMA, default decay 1 s). An
//! endpoint whose connection just failed sits out for a backoff (1 s doubling to 30 s) unless no
//! other endpoint is left.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mesh_registry::{InstanceRecord, Snapshot};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::{ClientSettings, H2Client};
use crate::transport::Connector;

/// Costs within this ratio of each other count as equal. Measured on loopback under CPU
/// contention, identical instances' estimates wander by 20-40 % for seconds at a time; a
/// tighter band turned that noise into lasting skew (one of three instances took 43 %),
/// while endpoints that are really slower (2x and more) are still avoided.
const TIE: f64 = 1.25;

/// Balancer tuning.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BalancerSettings {
    /// Peak-EWMA decay time.
    pub(crate) decay: Duration,
    /// Latency assumed for an endpoint with no samples yet.
    pub(crate) default_rtt: Duration,
}

/// A latency estimate that follows peaks at once and otherwise decays: toward each faster
/// sample (EWMA), and toward zero while no samples arrive, so that an endpoint that was slow
/// once and then stopped being picked is tried again (as in tower's and linkerd's peak-EWMA).
#[derive(Debug)]
struct PeakEwma {
    rtt_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// Decays the estimate for the time since it was last touched and returns it.
    fn decayed(&mut self, decay: Duration, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.rtt_ns *= (-elapsed / decay.as_nanos().max(1) as f64).exp();
        self.stamp = now;
        self.rtt_ns
    }

    fn observe(&mut self, rtt: Duration, decay: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        if sample > self.rtt_ns {
            self.rtt_ns = sample;
            self.stamp = now;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            self.rtt_ns = self.rtt_ns * w + sample * (1.0 - w);
            self.stamp = now;
        }
    }
}

/// One instance of the service, with its connection and load.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) record: InstanceRecord,
    pub(crate) client: H2Client,
    load: Mutex<PeakEwma>,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    failing_until: Mutex<Option<Instant>>,
    /// This endpoint's `mesh_balancer_picks_total` series, resolved once.
    picks: Option<prometheus::IntCounter>,
}

impl Endpoint {
    fn new(
        record: InstanceRecord,
        connector: &Connector,
        client: ClientSettings,
        default_rtt: Duration,
        picks: Option<&prometheus::IntCounterVec>,
    ) -> Self {
        Self {
            picks: picks.map(|p| p.with_label_values(&[record.service.as_str(), record.instance_id.as_str()])),
            client: H2Client::new(record.address.clone(), record.service.clone(), connector.clone(), client),
            record,
            load: Mutex::new(PeakEwma { rtt_ns: default_rtt.as_nanos() as f64, stamp: Instant::now() }),
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            failing_until: Mutex::new(None),
        }
    }

    fn cost(&self, decay: Duration, now: Instant) -> f64 {
        let rtt = self.load.lock().unwrap_or_else(|e| e.into_inner()).decayed(decay, now);
        let weight = f64::from(self.record.weight.max(1)) / f64::from(mesh_registry::record::DEFAULT_WEIGHT);
        rtt * (self.in_flight.load(Ordering::Relaxed) + 1) as f64 / weight
    }

    fn is_failing(&self, now: Instant) -> bool {
        self.failing_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|until| until > now)
    }

    /// The connection could not be opened or closed under a request: sit out for a backoff, and
    /// count the failure as a very slow response so the estimate stays high after it returns.
    pub(crate) fn penalize(&self, decay: Duration) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(5);
        let backoff = Duration::from_secs(1) * 2u32.pow(n);
        *self.failing_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + backoff.min(Duration::from_secs(30)));
        self.load.lock().unwrap_or_else(|e| e.into_inner()).observe(Duration::from_secs(1), decay);
    }

    /// A response arrived `rtt` after the request was sent.
    pub(crate) fn observe(&self, rtt: Duration, decay: Duration) {
        self.failures.store(0, Ordering::Relaxed);
        *self.failing_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.load.lock().unwrap_or_else(|e| e.into_inner()).observe(rtt, decay);
    }
}

/// Counts a request in flight on an endpoint until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
pub(crate) struct Balancer {
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    synced: std::sync::atomic::AtomicBool,
    changed: Notify,
    connector: Connector,
    client: ClientSettings,
    pub(crate) settings: BalancerSettings,
    /// `mesh_balancer_picks_total{dst_service, instance}`, if counted.
    picks: Option<prometheus::IntCounterVec>,
}

impl Balancer {
    pub(crate) fn new(connector: Connector, client: ClientSettings, settings: BalancerSettings) -> Self {
        Self {
            endpoints: RwLock::new(Arc::from(Vec::new())),
            synced: false.into(),
            changed: Notify::new(),
            connector,
            client,
            settings,
            picks: None,
        }
    }

    /// Counts picks per endpoint in `picks`; an endpoint's series goes when the endpoint does.
    pub(crate) fn counting_picks(mut self, picks: prometheus::IntCounterVec) -> Self {
        self.picks = Some(picks);
        self
    }

    /// Replaces the endpoint set with a discovery snapshot, keeping the connection and load of
    /// every endpoint whose record did not change.
    pub(crate) fn update(&self, snapshot: &Snapshot) -> usize {
        let current = self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone();
        let next: Vec<Arc<Endpoint>> = snapshot
            .instances()
            .map(|record| {
                current.iter().find(|e| &e.record == record).cloned().unwrap_or_else(|| {
                    Arc::new(Endpoint::new(
                        record.clone(),
                        &self.connector,
                        self.client,
                        self.settings.default_rtt,
                        self.picks.as_ref(),
                    ))
                })
            })
            .collect();
        if let Some(picks) = &self.picks {
            for gone in current.iter().filter(|e| !next.iter().any(|n| n.record.instance_id == e.record.instance_id)) {
                let _ = picks.remove_label_values(&[gone.record.service.as_str(), gone.record.instance_id.as_str()]);
            }
        }
        let n = next.len();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(next);
        self.synced.store(snapshot.synced, Ordering::Release);
        self.changed.notify_waiters();
        n
    }

    /// Picks an endpoint now, if any is eligible.
    pub(crate) fn try_pick(&self) -> Result<InFlight, Empty> {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone();
        if endpoints.is_empty() {
            return Err(if self.synced.load(Ordering::Acquire) { Empty::NoEndpoints } else { Empty::NotSynced });
        }
        let now = Instant::now();
        let eligible: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.record.weight > 0 && !e.is_failing(now)).collect();
        let chosen = match eligible.len() {
            0 => return Err(Empty::NoneReady(endpoints.len())),
            1 => eligible[0],
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let decay = self.settings.decay;
                let (cost_a, cost_b) = (eligible[a].cost(decay, now), eligible[b].cost(decay, now));
                // Near-equal costs are a tie, so noise and estimates that differ only by when
                // they were last touched never turn into a fixed ranking. Ties go either way
                // (`a` is already a random choice).
                if cost_a <= cost_b * TIE { eligible[a] } else { eligible[b] }
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(picks) = &chosen.picks {
            picks.inc();
        }
        Ok(InFlight(chosen.clone()))
    }

    /// Picks an endpoint, waiting until `deadline` for one to become eligible.
    pub(crate) async fn pick(&self, deadline: Instant) -> Result<InFlight, Empty> {
        loop {
            let changed = self.changed.notified();
            let empty = match self.try_pick() {
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
                return self.try_pick().map_err(|_| empty);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_registry::Layout;

    fn balancer(ports: &[u16]) -> Balancer {
        let client = ClientSettings {
            connection_window: 1 << 20,
            stream_window: 1 << 18,
            max_header_list_size: 16 << 10,
            keepalive: Duration::from_secs(10),
        };
        let settings = BalancerSettings { decay: Duration::from_secs(10), default_rtt: Duration::from_millis(30) };
        let b = Balancer::new(Connector::plaintext(Duration::from_secs(1)), client, settings);
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

    #[tokio::test]
    async fn spreads_requests_and_prefers_the_less_loaded() {
        let b = balancer(&[1, 2, 3]);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let picked = b.try_pick().unwrap_or_else(|e| panic!("{e:?}"));
            counts[usize::from(picked.endpoint().record.address.port()) - 1] += 1;
        }
        assert!(counts.iter().all(|&c| (750..=1250).contains(&c)), "{counts:?}");

        // Endpoint 1 becomes slow: it is picked far less.
        let slow = b.try_pick().unwrap_or_else(|e| panic!("{e:?}"));
        let _ = slow; // (dropped: in-flight back to 0)
        let eps = b.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone();
        eps[0].observe(Duration::from_secs(1), Duration::from_secs(10));
        let mut slow_picks = 0;
        for _ in 0..3000 {
            if b.try_pick().unwrap_or_else(|e| panic!("{e:?}")).endpoint().record.address.port() == 1 {
                slow_picks += 1;
            }
        }
        assert!(slow_picks < 100, "a slow endpoint is avoided: {slow_picks}");
    }

    #[tokio::test]
    async fn failing_endpoints_sit_out_their_backoff() {
        let b = balancer(&[1, 2]);
        let eps = b.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone();
        eps[0].penalize(Duration::from_secs(10));
        for _ in 0..100 {
            assert_eq!(b.try_pick().unwrap_or_else(|e| panic!("{e:?}")).endpoint().record.address.port(), 2);
        }
        eps[1].penalize(Duration::from_secs(10));
        assert_eq!(b.try_pick().err(), Some(Empty::NoneReady(2)));
        let empty = balancer(&[]);
        assert_eq!(empty.try_pick().err(), Some(Empty::NoEndpoints));
    }
}
