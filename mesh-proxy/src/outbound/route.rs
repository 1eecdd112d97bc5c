//! Where a call goes inside its service, decided once before any attempt: the first route of the
//! service's policy that fits the call (method and headers), the subset its split draws (by chance,
//! or by the hash of a sticky header), the route's settings over the method's, and the faults it
//! injects. A subset that has no instances right now is left out of the draw; a split none of
//! whose subsets has instances fails the call at once (`no_endpoints`, naming the route). A call
//! made before discovery has listed the service draws once it has (`Pending`, in `logical.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use mesh_registry::ServiceName;
use mesh_registry::policy::{MethodSettings, ServicePolicy};
use mesh_registry::routes::{Selector, TOTAL_WEIGHT, sticky_hash};

use super::PeerClient;
use crate::balance::Balancer;
use crate::http::errors::ProxyError;

/// The decision for one call.
#[derive(Debug, Default)]
pub(super) struct Routed {
    /// Timeouts, retries and hedging.
    pub(super) settings: MethodSettings,
    /// The instances it may go to (`None`: all of them).
    pub(super) subset: Option<Selector>,
    /// An injected delay before it is sent.
    pub(super) delay: Option<Duration>,
    /// Where a copy goes, if this call is mirrored.
    pub(super) mirror: Option<MirrorTo>,
    /// The route's name and the subset drawn (`None`: all instances), for telemetry.
    pub(super) labels: Option<(Arc<str>, Option<Arc<str>>)>,
    /// The split, when it could not be drawn yet.
    pub(super) pending: Option<Pending>,
}

/// A mirrored call's shadow.
#[derive(Debug)]
pub(super) enum MirrorTo {
    /// A subset of the same service.
    Subset(Selector),
    /// Another service.
    Service(ServiceName),
}

/// Routes a call to `path` with `headers` under `policy`.
pub(super) fn route(
    policy: &Arc<ServicePolicy>,
    path: &str,
    headers: &HeaderMap,
    balancer: &Balancer<PeerClient>,
    service: &str,
) -> Result<Routed, ProxyError> {
    let found = policy.route(path, |name| headers.get(name).map(http::HeaderValue::as_bytes));
    let settings = policy.settings_on(path, found.map(|(_, route)| route));
    let Some((index, route)) = found else { return Ok(Routed { settings, ..Routed::default() }) };
    if let Some(abort) = route.fault.and_then(|f| f.abort)
        && roll(abort.percent)
    {
        return Err(ProxyError::FaultInjected {
            service: service.to_string(),
            route: route.name.to_string(),
            code: abort.code as i32,
        });
    }
    let delay = route.fault.and_then(|f| f.delay).filter(|d| roll(d.percent)).map(|d| Duration::from_millis(d.ms));
    let sticky = route.sticky.as_ref().and_then(|s| headers.get(s.header.name())).map(|v| sticky_hash(v.as_bytes()));
    let (subset, subset_name, pending) = if route.split.is_empty() {
        (None, None, None)
    } else if balancer.is_listed() {
        let (subset, name) = draw(policy, index, sticky, balancer, service)?;
        (subset, name, None)
    } else {
        (None, None, Some(Pending { policy: policy.clone(), route: index, sticky }))
    };
    let mirror = route.mirror.as_ref().filter(|m| roll(m.percent)).and_then(|m| match (&m.subset, &m.service) {
        (Some(name), _) => policy.subsets.get(name).cloned().map(MirrorTo::Subset),
        (None, Some(other)) => Some(MirrorTo::Service(other.clone())),
        (None, None) => None,
    });
    let labels = Some((route.name.clone(), subset_name));
    Ok(Routed { settings, subset, delay, mirror, labels, pending })
}

/// A split still to draw: the service's instances are not listed yet (its first calls), so which
/// subsets have instances is not known. The call draws once discovery has listed them.
#[derive(Debug)]
pub(super) struct Pending {
    policy: Arc<ServicePolicy>,
    route: usize,
    sticky: Option<u64>,
}

impl Pending {
    /// Draws the split now, and the subset's name for telemetry.
    pub(super) fn draw(
        &self,
        balancer: &Balancer<PeerClient>,
        service: &str,
    ) -> Result<(Option<Selector>, Option<Arc<str>>), ProxyError> {
        draw(&self.policy, self.route, self.sticky, balancer, service)
    }
}

/// Draws the split of `policy`'s route `index` over the subsets that have instances now: the
/// subset (`None`: all instances) and its name for telemetry.
fn draw(
    policy: &ServicePolicy,
    index: usize,
    sticky: Option<u64>,
    balancer: &Balancer<PeerClient>,
    service: &str,
) -> Result<(Option<Selector>, Option<Arc<str>>), ProxyError> {
    let route = &policy.routes[index];
    let selector = |name: &Option<Arc<str>>| name.as_ref().and_then(|n| policy.subsets.get(&**n));
    let serves = |b: &mesh_registry::routes::Backend| selector(&b.subset).is_none_or(|s| balancer.serves(s));
    match route.pick(sticky, fastrand::u32(..TOTAL_WEIGHT), serves) {
        Some(backend) => Ok((selector(&backend.subset).cloned(), backend.subset.clone())),
        // The service has no instance at all: the balancer's pick says so.
        None if balancer.len() == 0 => Ok((None, None)),
        None => Err(ProxyError::NoSubsetEndpoints { service: service.to_string(), route: route.name.to_string() }),
    }
}

/// True for `percent` % of calls.
fn roll(percent: u32) -> bool {
    percent > 0 && fastrand::u32(..100) < percent
}
