//! The service policies (timeouts, retries, retry budgets) this proxy's calls follow, one per
//! destination service, read live from etcd (`<prefix>/v1/policies/<service>`). A document that
//! cannot be parsed leaves the last good one of that service in force (counted as
//! `mesh_limit_hits_total{limit="invalid_policy"}` and logged); a deleted one means the built-in
//! defaults again. Each destination also has its retry [`Budget`] and its circuit [`Breaker`],
//! kept across policy changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_registry::policy::{CircuitBreaker, ServicePolicy};
use mesh_registry::status::Running;
use mesh_registry::watch_prefix::Values;
use mesh_registry::{Layout, ServiceName};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::breaker::Breaker;
use super::budget::Budget;
use super::latency::Latencies;
use crate::balance::discovery::MAX_SERVICES;
use crate::telemetry::Telemetry;
use crate::telemetry::events::PolicyRejected;

/// The documents in force, parsed from one set of watched values.
#[derive(Debug, Default)]
struct Parsed {
    from: Values,
    by_service: HashMap<String, Arc<ServicePolicy>>,
    /// Which revision of each service's document is in force (and which was rejected).
    running: Arc<BTreeMap<String, Running>>,
}

/// What this proxy keeps per destination service.
#[derive(Debug)]
pub(crate) struct Destination {
    pub(crate) budget: Budget,
    pub(crate) breaker: Breaker,
    /// Recent latency of hedged calls (their hedge delay).
    pub(crate) latencies: Latencies,
    /// Slots for mirrored calls in flight.
    pub(crate) mirrors: Arc<tokio::sync::Semaphore>,
}

/// What calls to one service follow.
#[derive(Debug, Clone)]
pub(crate) struct ServiceRules {
    /// The service's document; `None` means the built-in defaults.
    pub(crate) policy: Option<Arc<ServicePolicy>>,
    pub(crate) destination: Arc<Destination>,
}

/// Every destination's policy and budget.
#[derive(Debug)]
pub(crate) struct Policies {
    values: watch::Receiver<Values>,
    layout: Layout,
    parsed: Mutex<Arc<Parsed>>,
    destinations: Mutex<HashMap<ServiceName, Arc<Destination>>>,
    telemetry: Arc<Telemetry>,
}

impl Policies {
    /// Follows the policies under `layout` in etcd.
    pub(crate) fn follow(etcd: etcd_client::Client, layout: Layout, telemetry: Arc<Telemetry>) -> Self {
        let values = mesh_registry::watch_prefix::watch_prefix(etcd, layout.policies());
        Self::new(values, layout, telemetry)
    }

    pub(crate) fn new(values: watch::Receiver<Values>, layout: Layout, telemetry: Arc<Telemetry>) -> Self {
        Self { values, layout, parsed: Mutex::new(Arc::default()), destinations: Mutex::new(HashMap::new()), telemetry }
    }

    /// The document in force for `service`, if any.
    pub(crate) fn policy(&self, service: &ServiceName) -> Option<Arc<ServicePolicy>> {
        self.parsed().by_service.get(service.as_str()).cloned()
    }

    /// The rules for calls to `service`.
    pub(crate) fn rules(&self, service: &ServiceName) -> ServiceRules {
        let policy = self.parsed().by_service.get(service.as_str()).cloned();
        ServiceRules { policy, destination: self.destination(service) }
    }

    fn parsed(&self) -> Arc<Parsed> {
        let values = self.values.borrow().clone();
        let mut parsed = self.parsed.lock();
        if !Arc::ptr_eq(&parsed.from, &values) {
            *parsed = Arc::new(self.parse(values, &parsed));
        }
        parsed.clone()
    }

    /// Parses the watched documents now if they changed, so that a version is in force (and
    /// becomes the last good one) even if no call has looked it up before the next one came.
    pub(crate) fn refresh(&self) {
        self.parsed();
    }

    /// Which revision of each destination's policy is in force, and which was rejected.
    pub(crate) fn running(&self) -> Arc<BTreeMap<String, Running>> {
        self.parsed().running.clone()
    }

    /// A receiver of the watched documents, to wait for changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Values> {
        self.values.clone()
    }

    fn parse(&self, values: Values, previous: &Parsed) -> Parsed {
        let mut by_service = HashMap::new();
        let mut running = BTreeMap::new();
        for (key, entry) in values.iter() {
            let Some(service) = self.layout.parse_policy_key(key) else { continue };
            match ServicePolicy::parse(&entry.value) {
                Ok(policy) => {
                    let unchanged = previous.by_service.get(service).filter(|p| ***p == policy);
                    by_service.insert(service.to_string(), unchanged.cloned().unwrap_or_else(|| Arc::new(policy)));
                    running.insert(service.to_string(), Running { revision: entry.revision, rejected: None });
                }
                Err(error) => {
                    PolicyRejected { key, error: &error }.emit(&self.telemetry);
                    let kept = previous.running.get(service).map_or(0, |r| r.revision);
                    if let Some(last_good) = previous.by_service.get(service) {
                        by_service.insert(service.to_string(), last_good.clone());
                    }
                    running.insert(service.to_string(), Running { revision: kept, rejected: Some(entry.revision) });
                }
            }
        }
        self.telemetry.policies_in_force(&running);
        Parsed { from: values, by_service, running: Arc::new(running) }
    }

    fn destination(&self, service: &ServiceName) -> Arc<Destination> {
        let mut destinations = self.destinations.lock();
        if let Some(destination) = destinations.get(service) {
            return destination.clone();
        }
        if destinations.len() >= MAX_SERVICES {
            // Bounded like discovery: forget the destinations no call holds.
            destinations.retain(|_, d| Arc::strong_count(d) > 1);
        }
        let destination = Arc::new(Destination {
            budget: Budget::new(Instant::now()),
            breaker: Breaker::new(&CircuitBreaker::default()),
            latencies: Latencies::new(Instant::now()),
            mirrors: Arc::new(tokio::sync::Semaphore::new(super::mirror::MAX_IN_FLIGHT)),
        });
        destinations.insert(service.clone(), destination.clone());
        destination
    }
}

#[cfg(test)]
mod tests {
    use mesh_registry::watch_prefix::Entry;

    use super::*;

    fn svc(s: &str) -> ServiceName {
        s.parse().unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn a_bad_document_leaves_the_last_good_one_in_force() {
        let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = watch::channel(Values::default());
        let policies = Policies::new(rx, Layout::default(), telemetry);
        assert!(policies.rules(&svc("orders")).policy.is_none(), "no document: built-in defaults");

        let put = |doc: &str, revision: i64| {
            let mut values = BTreeMap::new();
            let entry = |v: &[u8]| Entry { revision, value: v.to_vec() };
            values.insert("/mesh/v1/policies/orders".to_string(), entry(doc.as_bytes()));
            values.insert("/mesh/v1/policies/bad/nested".to_string(), entry(b"ignored"));
            tx.send_replace(Arc::new(values));
        };
        put(r#"{"version":"v1","defaults":{"idempotent":true}}"#, 7);
        let rules = policies.rules(&svc("orders"));
        assert!(rules.policy.as_ref().is_some_and(|p| p.settings("/a.B/C").idempotent));
        assert_eq!(policies.running()["orders"], Running { revision: 7, rejected: None });
        put(r#"{"version":"v1","defaults":{"idempotent":"yes"}}"#, 9);
        assert!(
            policies.rules(&svc("orders")).policy.is_some_and(|p| p.settings("/a.B/C").idempotent),
            "the last good document stays"
        );
        assert_eq!(policies.running()["orders"], Running { revision: 7, rejected: Some(9) }, "and is reported");
        tx.send_replace(Arc::default());
        assert!(policies.rules(&svc("orders")).policy.is_none(), "deleted: built-in defaults again");
        assert!(Arc::ptr_eq(&rules.destination, &policies.rules(&svc("orders")).destination), "one per service");
    }
}
