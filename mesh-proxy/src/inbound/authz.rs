//! Authorization on inbound: every call's verified caller and method are checked against this
//! service's rules (or the mesh default), followed live from etcd: the `authorization` of its
//! service policy if that has one, else the rules `meshctl policy` keeps. A document that cannot
//! be parsed leaves the last valid one in force.

use std::sync::Arc;

use mesh_registry::authz::{Decision, DefaultMode, MeshDefault, Policy, decide};
use mesh_registry::identity::Identity;
use mesh_registry::policy::ServicePolicy;
use mesh_registry::watch_prefix::Values;
use mesh_registry::{Layout, ServiceName};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::telemetry::Telemetry;
use crate::telemetry::events::{AuthzDecided, PolicyRejected};
use crate::telemetry::labels::AuthzResult;

/// The policy in force, parsed from a given set of watched values.
#[derive(Debug)]
struct InForce {
    from: Values,
    policy: Option<Policy>,
    default: DefaultMode,
}

/// Decides inbound calls.
#[derive(Debug)]
pub(crate) struct Authorizer {
    values: watch::Receiver<Values>,
    policy_key: String,
    default_key: String,
    service: ServiceName,
    in_force: Mutex<Arc<InForce>>,
    telemetry: Arc<Telemetry>,
}

impl Authorizer {
    pub(crate) fn new(
        etcd: etcd_client::Client,
        layout: &Layout,
        service: ServiceName,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let values = mesh_registry::watch_prefix::watch_prefix(etcd, layout.authz());
        let in_force = InForce { from: Values::default(), policy: None, default: DefaultMode::default() };
        Self {
            values,
            policy_key: layout.authz_policy(&service),
            default_key: layout.authz_default(),
            service,
            in_force: Mutex::new(Arc::new(in_force)),
            telemetry,
        }
    }

    /// Allows or denies a call from `caller` to `path`; the rules of `service_policy` (the local
    /// service's policy in force), if it has any, take precedence.
    pub(crate) fn decide(
        &self,
        caller: Option<&Identity>,
        path: &str,
        service_policy: Option<&ServicePolicy>,
    ) -> Decision {
        let in_force = self.current();
        let rules = service_policy.and_then(|p| p.authorization.as_ref()).or(in_force.policy.as_ref());
        let decision = decide(rules, in_force.default, &self.service, caller, path);
        let result = if matches!(decision, Decision::Allow(_)) { AuthzResult::Allow } else { AuthzResult::Deny };
        AuthzDecided { result }.emit(&self.telemetry);
        decision
    }

    fn current(&self) -> Arc<InForce> {
        let values = self.values.borrow().clone();
        let mut in_force = self.in_force.lock();
        if !Arc::ptr_eq(&in_force.from, &values) {
            *in_force = Arc::new(self.parse(values, &in_force));
        }
        in_force.clone()
    }

    fn parse(&self, values: Values, previous: &InForce) -> InForce {
        let policy = match values.get(&self.policy_key).map(|v| Policy::parse(&v.value)) {
            None => None,
            Some(Ok(policy)) => Some(policy),
            Some(Err(error)) => {
                PolicyRejected { key: &self.policy_key, error: &error }.emit(&self.telemetry);
                previous.policy.clone()
            }
        };
        let default = match values.get(&self.default_key).map(|v| serde_json::from_slice::<MeshDefault>(&v.value)) {
            None => DefaultMode::default(),
            Some(Ok(d)) => d.default,
            Some(Err(error)) => {
                tracing::warn!(key = %self.default_key, %error, "ignoring an invalid mesh default; the previous one stays in force");
                previous.default
            }
        };
        tracing::info!(service = %self.service, has_policy = policy.is_some(), ?default, "authorization policy in force");
        InForce { from: values, policy, default }
    }
}
