//! Which services the proxy routes to: one discovery subscription and one balancer per service in
//! use, created on first use and dropped after it has been idle for a while (default 5 min).
//!
//! How a service is watched is injected ([`Subscribe`]): in the proxy, a registry [`View`] on
//! etcd; in tests, a channel the test feeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_registry::{Layout, Metrics as RegistryMetrics, ServiceName, Snapshot, View, ViewConfig};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Balancer;
use crate::http::errors::ProxyError;
use crate::telemetry::Telemetry;
use crate::telemetry::events::{EndpointsKnown, ServiceIdle, ServiceLimitReached, ServiceTracked};

/// Most services one proxy tracks at once.
pub(crate) const MAX_SERVICES: usize = 1024;

/// A service's snapshots, and whatever keeps them coming (dropped with the entry).
pub(crate) struct Subscription {
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(crate) keep: Box<dyn Send + Sync>,
}

/// Starts watching a service.
pub(crate) type Subscribe = Box<dyn Fn(&ServiceName) -> Subscription + Send + Sync>;

/// Watches services in etcd through the registry's views.
pub(crate) fn etcd(client: etcd_client::Client, layout: Layout, metrics: Arc<RegistryMetrics>) -> Subscribe {
    Box::new(move |service| {
        let view = View::service(client.clone(), &layout, service, ViewConfig::default(), metrics.clone());
        Subscription { snapshots: view.subscribe(), keep: Box::new(view) }
    })
}

/// Builds a new service's balancer.
pub(crate) type NewBalancer<C> = Box<dyn Fn() -> Balancer<C> + Send + Sync>;

struct Entry<C> {
    balancer: Arc<Balancer<C>>,
    last_used_ms: AtomicU64,
    _subscription: Box<dyn Send + Sync>,
    feeder: tokio::task::JoinHandle<()>,
}

impl<C> Drop for Entry<C> {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

/// The per-service discovery cache.
pub(crate) struct Discovery<C> {
    subscribe: Subscribe,
    new_balancer: NewBalancer<C>,
    telemetry: Arc<Telemetry>,
    services: Mutex<HashMap<ServiceName, Arc<Entry<C>>>>,
    idle_timeout: Duration,
    epoch: Instant,
}

impl<C> std::fmt::Debug for Discovery<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("idle_timeout", &self.idle_timeout).finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> Discovery<C> {
    pub(crate) fn new(
        subscribe: Subscribe,
        new_balancer: NewBalancer<C>,
        telemetry: Arc<Telemetry>,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let discovery = Arc::new(Self {
            subscribe,
            new_balancer,
            telemetry,
            services: Mutex::new(HashMap::new()),
            idle_timeout,
            epoch: Instant::now(),
        });
        let weak = Arc::downgrade(&discovery);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(discovery) => discovery.evict_idle(),
                    None => return,
                }
            }
        });
        discovery
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The balancer for `service`, starting its subscription if this is its first use.
    pub(crate) fn balancer(&self, service: &ServiceName) -> Result<Arc<Balancer<C>>, ProxyError> {
        let now = self.now_ms();
        let mut services = self.services.lock();
        if let Some(entry) = services.get(service) {
            entry.last_used_ms.store(now, Ordering::Relaxed);
            return Ok(entry.balancer.clone());
        }
        if services.len() >= MAX_SERVICES {
            ServiceLimitReached { service: service.as_str(), limit: MAX_SERVICES }.emit(&self.telemetry);
            return Err(ProxyError::TooManyServices(MAX_SERVICES));
        }
        let Subscription { snapshots, keep } = (self.subscribe)(service);
        let balancer = Arc::new((self.new_balancer)());
        let feeder = tokio::spawn(feed(snapshots, balancer.clone(), self.telemetry.clone(), service.clone()));
        ServiceTracked { service: service.as_str() }.emit(&self.telemetry);
        let entry = Arc::new(Entry {
            balancer: balancer.clone(),
            last_used_ms: AtomicU64::new(now),
            _subscription: keep,
            feeder,
        });
        services.insert(service.clone(), entry);
        Ok(balancer)
    }

    fn evict_idle(&self) {
        let now = self.now_ms();
        let idle_ms = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.services.lock().retain(|service, entry| {
            let keep = now.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed)) < idle_ms;
            if !keep {
                ServiceIdle { service: service.as_str() }.emit(&self.telemetry);
            }
            keep
        });
    }

    /// Services tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.services.lock().len()
    }
}

/// Applies every discovery snapshot to the balancer.
async fn feed<C>(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    balancer: Arc<Balancer<C>>,
    telemetry: Arc<Telemetry>,
    service: ServiceName,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        balancer.update(&snapshot);
        EndpointsKnown { service: service.as_str(), count: balancer.len() }.emit(&telemetry);
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use mesh_registry::InstanceRecord;

    use super::super::BalancerSettings;
    use super::*;

    /// The senders of every subscription made, in order.
    type Feeds = Arc<Mutex<Vec<watch::Sender<Arc<Snapshot>>>>>;

    /// A discovery whose subscriptions are channels the test holds (and counts), with fake clients.
    fn discovery(idle: Duration) -> (Arc<Discovery<u16>>, Feeds, Arc<AtomicUsize>) {
        let senders = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(AtomicUsize::new(0));
        let (tx_list, live_count) = (senders.clone(), live.clone());
        let subscribe: Subscribe = Box::new(move |_| {
            let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
            tx_list.lock().push(tx);
            live_count.fetch_add(1, Ordering::Relaxed);
            /// Counts live subscriptions.
            struct Live(Arc<AtomicUsize>);
            impl Drop for Live {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Subscription { snapshots: rx, keep: Box::new(Live(live_count.clone())) }
        });
        let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"));
        let settings = BalancerSettings { decay: Duration::from_secs(1), default_rtt: Duration::from_millis(30) };
        let balancer_telemetry = telemetry.clone();
        let new_balancer: NewBalancer<u16> = Box::new(move || {
            Balancer::new(Arc::new(|r: &InstanceRecord| r.address.port()), settings, balancer_telemetry.clone())
        });
        (Discovery::new(subscribe, new_balancer, telemetry, idle), senders, live)
    }

    fn name(s: &str) -> ServiceName {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_service_is_dropped_after_the_idle_timeout() {
        let idle = Duration::from_secs(300);
        let (discovery, _senders, live) = discovery(idle);
        discovery.balancer(&name("orders")).unwrap_or_else(|e| panic!("{e}"));
        discovery.balancer(&name("users")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((discovery.tracked(), live.load(Ordering::Relaxed)), (2, 2));
        // `orders` stays in use; `users` does not.
        for _ in 0..5 {
            tokio::time::sleep(idle / 4).await;
            discovery.balancer(&name("orders")).unwrap_or_else(|e| panic!("{e}"));
        }
        tokio::time::sleep(idle / 4).await;
        assert_eq!(discovery.tracked(), 1, "users was idle for over 5 min");
        assert_eq!(live.load(Ordering::Relaxed), 1, "and its watch is gone");
        // Using it again starts a new watch.
        discovery.balancer(&name("users")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(live.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_reach_the_balancer_and_the_service_limit_holds() {
        let (discovery, senders, _) = discovery(Duration::from_secs(300));
        let balancer = discovery.balancer(&name("orders")).unwrap_or_else(|e| panic!("{e}"));
        let layout = Layout::default();
        let record = InstanceRecord::new(
            name("orders"),
            "o-1".parse().unwrap_or_else(|_| unreachable!()),
            "127.0.0.1:7".parse().unwrap_or_else(|_| unreachable!()),
        );
        let records = [(layout.instance(&record.service, &record.instance_id), record)].into_iter().collect();
        senders.lock()[0].send_replace(Arc::new(Snapshot { records, synced: true, ..Snapshot::default() }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(balancer.try_pick().map(|p| *p.endpoint().client()).ok(), Some(7));

        for i in 1..MAX_SERVICES {
            discovery.balancer(&name(&format!("s{i}"))).unwrap_or_else(|e| panic!("{e}"));
        }
        let refused = discovery.balancer(&name("one-too-many"));
        assert!(matches!(refused, Err(ProxyError::TooManyServices(MAX_SERVICES))));
    }
}
