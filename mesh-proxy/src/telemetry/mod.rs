//! The proxy's telemetry: the bottom layer, which uses nothing else in the crate.
//!
//! - [`Telemetry`] holds the metric families (private to this module: `families`) and is the
//!   only way to record into them, through
//! - [`events`]: each thing worth knowing is one type whose `emit` both logs it and counts it,
//!   with label values from the closed vocabularies in [`labels`];
//! - [`Recorder`] (`recorder`): one call's golden signals and span, recorded once when it ends;
//! - [`edge`]: one outside request at the gateway (by route and host), and its access log;
//! - [`trace`]: W3C trace context and one span per hop; [`export`]: OTLP to the collector,
//!   bounded, never blocking traffic; [`runtime`]: tokio runtime and task metrics.

pub(crate) mod edge;
pub(crate) mod events;
pub(crate) mod export;
mod families;
pub(crate) mod labels;
mod recorder;
pub(crate) mod runtime;
pub(crate) mod trace;

use std::collections::HashSet;
use std::sync::Arc;

use mesh_common::metrics::Declare;
#[cfg(test)]
use mesh_common::metrics::Declared;
use parking_lot::Mutex;
use prometheus::{IntCounter, Registry};

pub(crate) use self::labels::Direction;
pub(crate) use self::recorder::Recorder;
use families::Families;

/// Most distinct `grpc_method` label values.
pub(crate) const MAX_METHODS: usize = 256;
/// Most service names kept shared for the recorders (beyond: one allocation per call, as before).
const MAX_NAMES: usize = 1024;

/// The proxy's metrics and the per-call recorders that feed them.
#[derive(Debug)]
pub(crate) struct Telemetry {
    families: Families,
    runtime: runtime::RuntimeFamilies,
    /// The `grpc_method` values seen so far (at most [`MAX_METHODS`]), shared by the calls that
    /// record them (a call's label costs a reference count, not an allocation).
    methods: Mutex<HashSet<Arc<str>>>,
    /// `other`, the label of every method beyond them.
    other: Arc<str>,
    /// Service names the recorders hold, shared likewise (at most [`MAX_NAMES`]).
    names: Mutex<HashSet<Arc<str>>>,
    /// Log every call (target `access`).
    access_log: bool,
    /// What was declared, for the documentation check.
    #[cfg(test)]
    declared: Vec<Declared>,
}

impl Telemetry {
    /// Declares the proxy's families into `registry`.
    pub(crate) fn new(registry: &Registry, access_log: bool) -> prometheus::Result<Arc<Self>> {
        let mut declare = Declare::new(registry);
        let families = Families::declare(&mut declare)?;
        let runtime = runtime::RuntimeFamilies::declare(&mut declare)?;
        Ok(Arc::new(Self {
            families,
            runtime,
            methods: Mutex::new(HashSet::new()),
            other: Arc::from("other"),
            names: Mutex::new(HashSet::new()),
            access_log,
            #[cfg(test)]
            declared: declare.declared().to_vec(),
        }))
    }

    /// The families this proxy declared (for the documentation check).
    #[cfg(test)]
    pub(crate) fn declared(&self) -> &[Declared] {
        &self.declared
    }

    /// The `grpc_method` label for a request path: `/pkg.Service/Method` for gRPC paths while
    /// under the limit, `other` beyond it or for anything else.
    pub(crate) fn method_label(&self, path: &str) -> Arc<str> {
        let grpc_like = path.len() <= 128
            && path.starts_with('/')
            && path[1..].split('/').count() == 2
            && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
        if !grpc_like {
            return self.other.clone();
        }
        let mut methods = self.methods.lock();
        if let Some(known) = methods.get(path) {
            return known.clone();
        }
        if methods.len() < MAX_METHODS {
            let label: Arc<str> = Arc::from(path);
            methods.insert(label.clone());
            return label;
        }
        self.families.label_overflow.inc();
        self.other.clone()
    }

    /// A service name as the recorders hold it: shared with every other call naming it.
    pub(crate) fn shared_name(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock();
        if let Some(known) = names.get(name) {
            return known.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        if names.len() < MAX_NAMES {
            names.insert(shared.clone());
        }
        shared
    }

    /// The counter of calls the balancer sends to one endpoint, resolved once per endpoint.
    pub(crate) fn endpoint_picks(&self, service: &str, instance: &str) -> IntCounter {
        self.families.balancer_picks.with_label_values(&[service, instance])
    }

    /// Counts a call refused by rate limit `limit` (names come from one document: at most 32).
    pub(crate) fn rate_limited(&self, limit: &str) {
        self.families.rate_limited.with_label_values(&[limit]).inc();
    }

    /// Counts a mirrored call.
    pub(crate) fn mirrored(&self, service: &str, outcome: labels::MirrorOutcome) {
        self.families.mirrored.with_label_values(&[service, outcome.as_str()]).inc();
    }

    /// Reports the policies in force (series of services without a policy go).
    pub(crate) fn policies_in_force(
        &self,
        running: &std::collections::BTreeMap<String, mesh_registry::status::Running>,
    ) {
        let family = &self.families.policy_revision;
        family.reset();
        for (service, r) in running.iter().take(mesh_registry::status::MAX_REPORTED) {
            family.with_label_values(&[service.as_str(), "in_force"]).set(r.revision);
            if let Some(rejected) = r.rejected {
                family.with_label_values(&[service.as_str(), "rejected"]).set(rejected);
            }
        }
    }

    /// Removes an endpoint's series when the endpoint goes.
    pub(crate) fn forget_endpoint(&self, service: &str, instance: &str) {
        let _ = self.families.balancer_picks.remove_label_values(&[service, instance]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_capped() -> prometheus::Result<()> {
        let t = Telemetry::new(&Registry::new(), false)?;
        assert_eq!(&*t.method_label("/pkg.Svc/Method"), "/pkg.Svc/Method");
        assert!(Arc::ptr_eq(&t.method_label("/pkg.Svc/Method"), &t.method_label("/pkg.Svc/Method")), "shared");
        assert_eq!(&*t.method_label("/not grpc"), "other");
        assert_eq!(&*t.method_label("/a/b/c"), "other");
        for i in 1..MAX_METHODS {
            t.method_label(&format!("/s/m{i}"));
        }
        assert_eq!(&*t.method_label("/s/one-too-many"), "other");
        assert_eq!(t.families.label_overflow.get(), 1);
        Ok(())
    }

    #[test]
    fn the_readme_documents_every_proxy_metric() -> prometheus::Result<()> {
        let t = Telemetry::new(&Registry::new(), false)?;
        let readme = include_str!("../../../README.md");
        let documented =
            mesh_common::metrics::documented(readme, "### Metrics reference").unwrap_or_else(|e| panic!("README: {e}"));
        if let Err(differences) = mesh_common::metrics::compare(t.declared(), &documented) {
            panic!("the README's proxy metrics table and the code differ:\n{differences}");
        }
        Ok(())
    }
}
