//! The outbound request path: a call from the local app to another service.
//!
//! ```text
//! app --h2c--> outbound listener -> target service (authority.rs: from :authority)
//!            -> policy.rs: the destination's policy (timeouts, retries, limits), its retry budget
//!               (budget.rs) and circuit breaker (breaker.rs)
//!            -> route.rs: the policy's route for the call: its subset, settings and faults
//!            -> logical.rs: the call's deadline, attempts, retries and hedges (latency.rs: the
//!               hedge delay)
//!            -> balance: P2C over peak-EWMA, waits up to the fail-fast timeout
//!            -> endpoint: one multiplexed HTTP/2 connection per instance
//!            -> the instance's inbound listener
//! ```

mod authority;
pub(crate) mod breaker;
pub(crate) mod budget;
mod latency;
mod logical;
mod mirror;
pub(crate) mod policy;
pub(crate) mod report;
mod route;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use mesh_registry::ServiceName;
use mesh_registry::routes::Selector;

use crate::balance::InFlight;
use crate::balance::discovery::Discovery;
use crate::endpoint::client::H2Client;
use crate::headers::{CLIENT_SERVICE, is_grpc, strip_hop_by_hop};
use crate::http::body::{RequestBody, ResponseBody, Source};
use crate::http::errors::ProxyError;
use crate::http::replay::ReplayBody;
use crate::telemetry::trace::{SpanKind, Tracer};
use crate::telemetry::{Direction, Recorder, Telemetry};

/// A request body on its way to a peer: replayable, so a call that was not processed can go to
/// another endpoint.
pub(crate) type PeerBody = ReplayBody<RequestBody>;
/// The connection to a peer's proxy.
pub(crate) type PeerClient = H2Client<PeerBody>;
/// The outbound response body: holds the call's place in its endpoint's in-flight count and its
/// slot in the destination's circuit breaker until the response ends.
pub(crate) type OutboundBody = ResponseBody<(InFlight<PeerClient>, tokio::sync::OwnedSemaphorePermit)>;

/// The outbound side of the proxy.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) discovery: Arc<Discovery<PeerClient>>,
    pub(crate) telemetry: Arc<Telemetry>,
    /// Present when spans are exported.
    pub(crate) tracer: Option<Arc<Tracer>>,
    pub(crate) local: ServiceName,
    /// How long a call waits for a ready endpoint.
    pub(crate) fail_fast: Duration,
    /// The destinations' policies and retry budgets.
    pub(crate) policies: Arc<policy::Policies>,
}

impl Outbound {
    /// Takes a call from the local app. Everything up to the first wait (which service, its
    /// balancer, the call's telemetry and headers) happens here, synchronously; what is returned is
    /// only the call's own future (`logical.rs`), not one nested in another: hyper moves each
    /// stream's future around, and its size is per-call cost.
    pub(crate) fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Either<Ready<Response<OutboundBody>>, impl Future<Output = Response<OutboundBody>> + Send + use<>> {
        let target = authority::target(&req);
        self.forward(target, None, req.map(Source::Plain))
    }

    /// Sends a call to `target` (or fails it, naming the raw authority that named no service),
    /// only to the instances of `subset` if given (over any subset the service's policy draws):
    /// the local app's calls, and the gateway's.
    pub(crate) fn forward(
        self: &Arc<Self>,
        target: Result<ServiceName, String>,
        subset: Option<Selector>,
        req: Request<Source>,
    ) -> Either<Ready<Response<OutboundBody>>, impl Future<Output = Response<OutboundBody>> + Send + use<>> {
        let grpc = is_grpc(&req);
        let method = self.telemetry.method_label(req.uri().path());
        let dst = target.as_ref().map_or("unknown", |s| s.as_str());
        let mut recorder = self.telemetry.start(Direction::Outbound, self.local.as_str(), dst, method);
        let (mut parts, body) = req.into_parts();
        // The peer sees this hop's span as its parent in `traceparent`.
        if let Some(tracer) = &self.tracer {
            recorder.trace(tracer.start(SpanKind::Client, &mut parts.headers));
        }
        let service = match target {
            Ok(service) => service,
            Err(raw) => return Either::Left(ready(fail(ProxyError::BadAuthority(raw), grpc, recorder))),
        };

        // Why here: the app's headers are cleaned once, before any attempt.
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(local) = HeaderValue::from_str(self.local.as_str()) {
            parts.headers.insert(CLIENT_SERVICE, local);
        }
        let req = Request::from_parts(parts, RequestBody::new(body, &recorder));

        let balancer = match self.discovery.balancer(&service) {
            Ok(balancer) => balancer,
            Err(error) => return Either::Left(ready(fail(error, grpc, recorder))),
        };
        let rules = self.policies.rules(&service);
        let (mut routed, budget_policy, limits) = match &rules.policy {
            Some(policy) => match route::route(policy, req.uri().path(), req.headers(), &balancer, service.as_str()) {
                Ok(routed) => (routed, policy.budget(), policy.breaker()),
                Err(error) => return Either::Left(ready(fail(error, grpc, recorder))),
            },
            None => Default::default(),
        };
        if let Some(subset) = subset {
            (routed.subset, routed.pending) = (Some(subset), None);
        }
        if let Some((route, subset)) = routed.labels {
            recorder.route(route, subset);
        }
        let mirror = routed.mirror.and_then(|to| {
            let (balancer, subset, service) = match to {
                route::MirrorTo::Subset(subset) => (balancer.clone(), Some(subset), service.to_string()),
                route::MirrorTo::Service(other) => (self.discovery.balancer(&other).ok()?, None, other.to_string()),
            };
            let slots = rules.destination.mirrors.clone();
            Some(mirror::Mirror { balancer, subset, service, slots, telemetry: self.telemetry.clone() })
        });
        let call = logical::Call {
            service,
            balancer,
            fail_fast: self.fail_fast,
            grpc,
            telemetry: self.telemetry.clone(),
            settings: routed.settings,
            subset: routed.subset,
            pending: routed.pending,
            delay: routed.delay,
            mirror,
            destination: rules.destination,
            budget_policy,
            limits,
        };
        Either::Right(call.send(req, recorder))
    }
}

/// Answers a call the proxy failed itself.
fn fail(error: ProxyError, grpc: bool, recorder: Recorder) -> Response<OutboundBody> {
    tracing::debug!(%error, trace_id = recorder.trace_id().unwrap_or_default(), "outbound call failed in the proxy");
    error.respond(grpc, recorder)
}
