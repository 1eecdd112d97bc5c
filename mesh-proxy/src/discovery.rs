//! Which services the proxy routes to: one discovery watch and one balancer per service in use,
//! created on first use and dropped after it has been idle for a while (default 5 min).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use mesh_registry::{Layout, Metrics as RegistryMetrics, ServiceName, View, ViewConfig};
use tokio::time::Instant;

use crate::balance::Balancer;
use crate::errors::ProxyError;
use crate::metrics::ProxyMetrics;

/// Most services one proxy tracks at once.
pub(crate) const MAX_SERVICES: usize = 1024;

/// Builds a new service's balancer.
pub(crate) type NewBalancer = Box<dyn Fn() -> Balancer + Send + Sync>;

struct Entry {
    balancer: Arc<Balancer>,
    last_used_ms: AtomicU64,
    _view: View,
    feeder: tokio::task::JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

/// The per-service discovery cache.
pub(crate) struct Discovery {
    client: Client,
    layout: Layout,
    registry_metrics: Arc<RegistryMetrics>,
    metrics: Arc<ProxyMetrics>,
    new_balancer: NewBalancer,
    services: Mutex<HashMap<ServiceName, Arc<Entry>>>,
    idle_timeout: Duration,
    epoch: Instant,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("layout", &self.layout).finish_non_exhaustive()
    }
}

impl Discovery {
    pub(crate) fn new(
        client: Client,
        layout: Layout,
        registry_metrics: Arc<RegistryMetrics>,
        metrics: Arc<ProxyMetrics>,
        new_balancer: NewBalancer,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let discovery = Arc::new(Self {
            client,
            layout,
            registry_metrics,
            metrics,
            new_balancer,
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

    /// The balancer for `service`, starting its discovery watch if this is its first use.
    pub(crate) fn balancer(&self, service: &ServiceName) -> Result<Arc<Balancer>, ProxyError> {
        let now = self.now_ms();
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = services.get(service) {
            entry.last_used_ms.store(now, Ordering::Relaxed);
            return Ok(entry.balancer.clone());
        }
        if services.len() >= MAX_SERVICES {
            self.metrics.limit_hits.with_label_values(&["max_services"]).inc();
            return Err(ProxyError::TooManyServices(MAX_SERVICES));
        }
        let view = View::service(
            self.client.clone(),
            &self.layout,
            service,
            ViewConfig::default(),
            self.registry_metrics.clone(),
        );
        let balancer = Arc::new((self.new_balancer)());
        let feeder = tokio::spawn(feed(view.subscribe(), balancer.clone(), self.metrics.clone(), service.clone()));
        tracing::debug!(%service, "watching a new service");
        let entry =
            Arc::new(Entry { balancer: balancer.clone(), last_used_ms: AtomicU64::new(now), _view: view, feeder });
        services.insert(service.clone(), entry);
        Ok(balancer)
    }

    fn evict_idle(&self) {
        let now = self.now_ms();
        let idle_ms = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.retain(|service, entry| {
            let keep = now.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed)) < idle_ms;
            if !keep {
                tracing::debug!(%service, "dropping the watch of an idle service");
                let _ = self.metrics.endpoints.remove_label_values(&[service.as_str()]);
            }
            keep
        });
    }
}

/// Applies every discovery snapshot to the balancer.
async fn feed(
    mut snapshots: tokio::sync::watch::Receiver<Arc<mesh_registry::Snapshot>>,
    balancer: Arc<Balancer>,
    metrics: Arc<ProxyMetrics>,
    service: ServiceName,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let n = balancer.update(&snapshot);
        metrics.endpoints.with_label_values(&[service.as_str()]).set(i64::try_from(n).unwrap_or(i64::MAX));
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
