//! The inbound request path: a call from a peer's proxy to the local app.
//!
//! ```text
//! peer proxy --(mTLS, or plaintext without identities)--> inbound listener
//!            -> authz.rs: the verified caller may call this method (or the call is denied)
//!            -> ratelimit.rs: a token in every rate limit of the service's policy that fits the
//!               call (or RESOURCE_EXHAUSTED + pushback)
//!            -> limit.rs: room in the app's concurrency limit (or RESOURCE_EXHAUSTED + pushback)
//!            -> local app (one multiplexed h2c connection; app.rs: is it there?)
//! ```

pub(crate) mod app;
pub(crate) mod authz;
pub(crate) mod limit;
pub(crate) mod ratelimit;

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use mesh_registry::ServiceName;
use mesh_registry::policy::ServicePolicy;

use crate::endpoint::client::{H2Client, SendError};
use crate::endpoint::transport::PeerInfo;
use crate::headers::{CLIENT_SERVICE, MESH_NOT_PROCESSED, is_grpc, strip_hop_by_hop};
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::errors::ProxyError;
use crate::telemetry::trace::{SpanKind, Tracer};
use crate::telemetry::{Direction, Telemetry};

/// The inbound side of the proxy.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) app: H2Client,
    /// Present when callers have verified identities (mTLS).
    pub(crate) authorizer: Option<authz::Authorizer>,
    pub(crate) telemetry: Arc<Telemetry>,
    /// Present when spans are exported.
    pub(crate) tracer: Option<Arc<Tracer>>,
    pub(crate) local: ServiceName,
    /// Present unless turned off.
    pub(crate) limit: Option<Arc<limit::ConcurrencyLimit>>,
    /// The local service's policy in force: its authorization rules and rate limits.
    pub(crate) service_policy: ServicePolicyFn,
    /// The service policy's rate limits.
    pub(crate) rate_limits: ratelimit::RateLimiter,
}

/// The local service's policy in force (injected: the proxy follows policies on its outbound side).
pub(crate) struct ServicePolicyFn(pub(crate) Box<dyn Fn() -> Option<Arc<ServicePolicy>> + Send + Sync>);

impl std::fmt::Debug for ServicePolicyFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServicePolicyFn")
    }
}

impl Inbound {
    /// Takes a call from `peer`, a caller's proxy.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: Arc<PeerInfo>,
    ) -> Response<ResponseBody> {
        let grpc = is_grpc(&req);
        let method = self.telemetry.method_label(req.uri().path());
        // The caller: its verified identity under mTLS; otherwise what its proxy says.
        let caller = peer.identity.as_ref();
        // Shared with the other calls from the same caller: no allocation per call.
        let source = match caller {
            Some(identity) => self.telemetry.shared_name(identity.service().as_str()),
            None => {
                let said = req.headers().get(CLIENT_SERVICE).and_then(|v| v.to_str().ok());
                self.telemetry.shared_name(said.filter(|s| ServiceName::is_valid(s)).unwrap_or("unknown"))
            }
        };
        let mut recorder = self.telemetry.start(Direction::Inbound, &source, self.local.as_str(), method);
        strip_hop_by_hop(req.headers_mut());
        // The app sees this hop's span as its parent in `traceparent`.
        if let Some(tracer) = &self.tracer {
            let mut span = tracer.start(SpanKind::Server, req.headers_mut());
            span.set_peer(peer.addr);
            recorder.trace(span);
        }

        // Looked up once: authorization and the rate limits both read it.
        let service_policy = (self.service_policy.0)();

        // Why here: after the caller is known, before anything reaches the app.
        if let Some(authorizer) = &self.authorizer
            && let mesh_registry::authz::Decision::Deny(message) =
                authorizer.decide(caller, req.uri().path(), service_policy.as_deref())
        {
            tracing::info!(%message, trace_id = recorder.trace_id().unwrap_or_default(), "denied an inbound call");
            return ProxyError::NotAuthorized(message).respond(grpc, recorder);
        }

        // Why here: a call over a rate limit costs the app nothing and takes no concurrency slot.
        if let Err(limited) = self.rate_limits.admit(service_policy.as_ref(), req.uri().path(), req.headers(), &source)
        {
            self.telemetry.rate_limited(&limited.limit);
            let error = ProxyError::RateLimited {
                service: self.local.to_string(),
                limit: limited.limit,
                scope: limited.scope,
                per_second: limited.per_second,
                pushback_ms: u64::try_from(limited.pushback.as_millis()).unwrap_or(u64::MAX).max(1),
            };
            tracing::debug!(%error, "inbound call refused");
            return error.respond(grpc, recorder);
        }

        // Why here: a refused call costs the app nothing, and a denied one takes no slot.
        let slot = match self.limit.as_ref().map(limit::ConcurrencyLimit::admit) {
            Some(Err(refused)) => {
                let error = ProxyError::AppOverloaded {
                    addr: self.app.addr().to_string(),
                    limit: refused.limit,
                    kind: if refused.adaptive { "adaptive" } else { "fixed" },
                    pushback_ms: u64::try_from(refused.pushback.as_millis()).unwrap_or(u64::MAX),
                };
                tracing::debug!(%error, "inbound call refused");
                return error.respond(grpc, recorder);
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };

        let req = req.map(|body| RequestBody::new(body, &recorder));
        let sent = self.app.send(req).await;
        let (cause, processed) = match sent {
            Ok(response) => {
                if let Some(slot) = slot {
                    slot.answered();
                }
                let (mut parts, body) = response.into_parts();
                // Only this proxy says whether its app saw a call.
                parts.headers.remove(MESH_NOT_PROCESSED);
                let body = ResponseBody::observed(body, &parts.headers, recorder, ());
                return Response::from_parts(parts, body);
            }
            Err(SendError::NotSent(_, cause)) => (cause, false),
            Err(SendError::Failed(error)) => (error.to_string(), true),
        };
        let error = ProxyError::AppUnavailable { addr: self.app.addr().to_string(), cause };
        tracing::warn!(%error, trace_id = recorder.trace_id().unwrap_or_default(), "inbound call failed in the proxy");
        let mut response = error.respond(grpc, recorder);
        if !processed {
            // The app never saw it: the caller's proxy may send it elsewhere, whatever the method.
            response.headers_mut().insert(MESH_NOT_PROCESSED, HeaderValue::from_static("1"));
        }
        response
    }
}
