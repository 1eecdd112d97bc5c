//! One outbound call on its way to a service: its deadline, and its attempts.
//!
//! A call is offered to up to 3 endpoints when it was not processed: it never left (the connection
//! could not be opened, or closed before the request was written), or the endpoint's proxy says
//! its app never received it (`mesh-not-processed`, e.g. the app is dead). Either is safe to send
//! elsewhere whatever the method; the request body is kept for that while it fits the replay
//! buffer (64 KiB). The caller's `grpc-timeout` bounds the wait for an endpoint and for the
//! response headers. An endpoint that fails this way costs more in the balancer (failure
//! accrual) instead of looking fast because it fails fast. This is where routes, status-based
//! retries, timeouts and mirrors will sit.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use mesh_registry::ServiceName;
use tokio::time::Instant;

use super::{OutboundBody, PeerBody, PeerClient, fail};
use crate::balance::{Balancer, Empty};
use crate::endpoint::client::SendError;
use crate::headers::{GRPC_STATUS, MESH_ERROR, MESH_NOT_PROCESSED, grpc_timeout};
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::errors::ProxyError;
use crate::http::replay::{self, ReplayBody};
use crate::telemetry::events::RetriedElsewhere;
use crate::telemetry::{Recorder, Telemetry};

/// How many endpoints one request may be offered to when it was not processed.
const MAX_ATTEMPTS: usize = 3;

/// A call to one service.
pub(super) struct Call {
    pub(super) service: ServiceName,
    pub(super) balancer: Arc<Balancer<PeerClient>>,
    /// How long to wait for a ready endpoint.
    pub(super) fail_fast: Duration,
    /// Answer failures as gRPC statuses.
    pub(super) grpc: bool,
    pub(super) telemetry: Arc<Telemetry>,
}

/// What another attempt needs besides the body.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: PeerBody) -> Request<PeerBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl Call {
    pub(super) async fn send(self, req: Request<RequestBody>, mut recorder: Recorder) -> Response<OutboundBody> {
        let Self { service, balancer, fail_fast, grpc, telemetry } = self;
        // Wait for an endpoint no longer than the fail-fast timeout, nor past the caller's deadline.
        let started = Instant::now();
        let caller_timeout = grpc_timeout(&req);
        let call_deadline = caller_timeout.map(|t| started + t);
        let deadline = call_deadline.map_or(started + fail_fast, |d| d.min(started + fail_fast));

        let (parts, body) = req.into_parts();
        let head = Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        };
        let body = ReplayBody::new(body, replay::DEFAULT_CAP);
        // Unpolled: the source of replays.
        let spare = body.replay();
        let mut req = Request::from_parts(parts, body);

        for attempt in 1..=MAX_ATTEMPTS {
            let picked = match balancer.pick(deadline).await {
                Ok(picked) => picked,
                Err(empty) => {
                    let error = match empty {
                        _ if caller_timeout.is_some_and(|t| t < fail_fast) => {
                            ProxyError::DeadlineExceeded { service: service.to_string(), waiting_for: "an endpoint" }
                        }
                        Empty::NotSynced => ProxyError::DiscoveryUnavailable(service.to_string()),
                        Empty::NoEndpoints => ProxyError::NoEndpoints(service.to_string()),
                        Empty::NoneReady(registered) => {
                            ProxyError::NoReadyEndpoint { service: service.to_string(), registered }
                        }
                    };
                    return fail(error, grpc, recorder);
                }
            };
            let endpoint = picked.endpoint().clone();
            if let Some(span) = recorder.span_mut() {
                span.set_endpoint(&endpoint.tag);
            }
            let sent = Instant::now();
            // The caller's deadline bounds the wait for response headers; dropping the send
            // cancels the call upstream (RST_STREAM).
            let send = endpoint.client().send(req);
            let result = match call_deadline {
                Some(at) => match tokio::time::timeout_at(at, send).await {
                    Ok(result) => result,
                    Err(_) => {
                        let error =
                            ProxyError::DeadlineExceeded { service: service.to_string(), waiting_for: "a response" };
                        return fail(error, grpc, recorder);
                    }
                },
                None => send.await,
            };
            let decay = balancer.settings.decay;
            let instance = endpoint.record.instance_id.as_str();
            match result {
                Ok(response) if response.headers().contains_key(MESH_NOT_PROCESSED) => {
                    // The endpoint's app never saw the call.
                    endpoint.failed(decay);
                    let replay = spare.as_ref().and_then(ReplayBody::replay);
                    match replay {
                        Some(body) if attempt < MAX_ATTEMPTS => {
                            let cause = "the instance's app never received it";
                            RetriedElsewhere { service: service.as_str(), instance, cause, attempt }.emit(&telemetry);
                            req = head.request(body);
                        }
                        // Out of attempts, or the body outgrew the replay buffer: the caller gets
                        // the endpoint's answer.
                        _ => return respond(response, recorder, picked),
                    }
                }
                Ok(response) => {
                    if made_by_proxy_unavailable(response.headers()) {
                        endpoint.failed(decay);
                    } else {
                        endpoint.observe(sent.elapsed(), decay);
                    }
                    return respond(response, recorder, picked);
                }
                Err(SendError::NotSent(back, cause)) => {
                    endpoint.penalize(decay);
                    req = *back;
                    if attempt < MAX_ATTEMPTS {
                        RetriedElsewhere { service: service.as_str(), instance, cause: &cause, attempt }
                            .emit(&telemetry);
                    }
                }
                Err(SendError::Failed(error)) => {
                    endpoint.failed(decay);
                    let error = ProxyError::UpstreamFailed {
                        service: service.to_string(),
                        instance: instance.to_string(),
                        addr: endpoint.client().addr().to_string(),
                        cause: error.to_string(),
                    };
                    return fail(error, grpc, recorder);
                }
            }
        }
        let registered = balancer.len();
        fail(ProxyError::NoReadyEndpoint { service: service.to_string(), registered }, grpc, recorder)
    }
}

/// The caller gets the endpoint's response, observed, holding the endpoint's in-flight count
/// until it ends; the hop-level `mesh-not-processed` does not go further.
fn respond(
    response: Response<hyper::body::Incoming>,
    recorder: Recorder,
    picked: crate::balance::InFlight<PeerClient>,
) -> Response<OutboundBody> {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(MESH_NOT_PROCESSED);
    let body = ResponseBody::observed(body, &parts.headers, recorder, picked);
    Response::from_parts(parts, body)
}

/// A trailers-only UNAVAILABLE the endpoint's proxy made itself (its app unreachable, say): a
/// failure of that endpoint, not of the service.
fn made_by_proxy_unavailable(headers: &HeaderMap) -> bool {
    headers.contains_key(MESH_ERROR) && headers.get(GRPC_STATUS).is_some_and(|s| s == "14")
}
