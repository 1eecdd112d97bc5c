//! One outbound call on its way to a service: its deadline, its attempts, and its retries.
//!
//! ```text
//! deadline = caller's grpc-timeout, else the policy's timeout_ms (none by default)
//! each attempt:
//!   left < fastest endpoint's recent response?   -> DEADLINE_EXCEEDED at once, not sent
//!   pick an endpoint (waits up to the fail-fast timeout, never past the deadline)
//!   send with grpc-timeout = what is left, waiting up to the per-try timeout
//!   never reached an app (not sent; mesh-not-processed)  -> another endpoint, any method, free
//!   idempotent, and a retry_on status / per-try timeout / failed connection
//!       -> another attempt after a jittered backoff (or the server's pushback), if the
//!          attempts, the deadline, the replay buffer and the service's retry budget allow
//! ```
//!
//! The request body is kept for another attempt while it fits the replay buffer (64 KiB); a
//! larger one is never sent twice. Only trailers-only answers (the status in the headers) are
//! retried: once a response has started it belongs to the caller. An endpoint that fails costs
//! more in the balancer (failure accrual) instead of looking fast because it fails fast.
//! Retries happen here, on the caller's side of a hop only; the inbound side never retries.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use mesh_registry::ServiceName;
use mesh_registry::policy::{CircuitBreaker, MethodSettings, RetryBudget};
use tokio::time::Instant;

use super::breaker::Shed;
use super::budget;
use super::policy::Destination;
use super::{OutboundBody, PeerBody, PeerClient, fail};
use crate::balance::{Balancer, Empty, Failure};
use crate::endpoint::client::SendError;
use crate::headers::{
    GRPC_RETRY_PUSHBACK, GRPC_STATUS, GRPC_TIMEOUT, MESH_ERROR, MESH_NOT_PROCESSED, Pushback, encode_grpc_timeout,
    grpc_timeout, pushback, trailers_only_status,
};
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::errors::ProxyError;
use crate::http::replay::{self, ReplayBody};
use crate::telemetry::events::{Overloaded, Retried, RetryWithheld};
use crate::telemetry::labels::{RetryReason, RetryRefused, code_label};
use crate::telemetry::{Recorder, Telemetry};

/// gRPC's UNAVAILABLE and RESOURCE_EXHAUSTED.
const UNAVAILABLE: u32 = 14;
const RESOURCE_EXHAUSTED: u32 = 8;

/// How many endpoints a call that never reached an app may be offered.
const MAX_NOT_PROCESSED_ATTEMPTS: u32 = 3;

/// A call to one service.
pub(super) struct Call {
    pub(super) service: ServiceName,
    pub(super) balancer: Arc<Balancer<PeerClient>>,
    /// How long to wait for a ready endpoint.
    pub(super) fail_fast: Duration,
    /// Answer failures as gRPC statuses.
    pub(super) grpc: bool,
    pub(super) telemetry: Arc<Telemetry>,
    /// What the service's policy says for this method.
    pub(super) settings: MethodSettings,
    /// The destination's retry budget and circuit breaker.
    pub(super) destination: Arc<Destination>,
    pub(super) budget_policy: RetryBudget,
    pub(super) limits: CircuitBreaker,
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

/// Why an attempt did not give the caller its answer, when it may be retried.
enum Retry {
    /// It never reached an app.
    NotProcessed(String),
    /// A failure an idempotent call may be retried on, and the server's word on it.
    Failed(RetryReason, String, Pushback),
}

impl Call {
    pub(super) async fn send(self, req: Request<RequestBody>, mut recorder: Recorder) -> Response<OutboundBody> {
        let started = Instant::now();
        let caller_timeout = grpc_timeout(&req);
        let deadline = caller_timeout.or(self.settings.timeout).map(|t| started + t);
        // Wait for an endpoint no longer than the fail-fast timeout, nor past the deadline.
        let pick_until = deadline.map_or(started + self.fail_fast, |d| d.min(started + self.fail_fast));
        self.destination.budget.call(started);
        // A slot in the destination's circuit breaker, held until the response ends.
        let slot = match self.destination.breaker.admit(&self.limits, pick_until).await {
            Ok(slot) => slot,
            Err(shed) => {
                Overloaded { service: self.service.as_str() }.emit(&self.telemetry);
                let error = ProxyError::Overloaded {
                    service: self.service.to_string(),
                    max_in_flight: self.limits.max_in_flight,
                    max_pending: self.limits.max_pending,
                    why: match shed {
                        Shed::QueueFull => "the waiting line is full",
                        Shed::WaitedOut => "no slot freed up in time",
                    },
                };
                return fail(error, self.grpc, recorder);
            }
        };

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
        // The next attempt's request, replaying the body, while it fits the replay buffer.
        let replayed = || spare.as_ref().and_then(ReplayBody::replay).map(|body| head.request(body));
        let service = self.service.as_str();

        for attempt in 1.. {
            let now = Instant::now();
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(now);
                let fastest = self.balancer.fastest(now).unwrap_or_default();
                if left.is_zero() || left < fastest {
                    let error = ProxyError::DeadlineTooShort {
                        service: service.to_string(),
                        left,
                        fastest,
                        tries: attempt - 1,
                    };
                    return fail(error, self.grpc, recorder);
                }
                // What is left, not what the caller had: the time spent here is spent.
                req.headers_mut().insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
            }
            let picked = match self.balancer.pick(pick_until).await {
                Ok(picked) => picked,
                Err(empty) => {
                    return fail(self.no_endpoint(empty, deadline, caller_timeout, attempt), self.grpc, recorder);
                }
            };
            let endpoint = picked.endpoint().clone();
            if let Some(span) = recorder.span_mut() {
                span.set_endpoint(&endpoint.tag);
            }
            let instance = endpoint.record.instance_id.as_str();

            // The deadline and the per-try timeout bound the wait for response headers; dropping
            // the send cancels the attempt upstream (RST_STREAM).
            let sent = Instant::now();
            let per_try_until = self.settings.per_try_timeout.map(|t| sent + t);
            let until = match (deadline, per_try_until) {
                (Some(d), Some(p)) => Some(d.min(p)),
                (d, p) => d.or(p),
            };
            let send = endpoint.client().send(req);
            let result = match until {
                Some(at) => tokio::time::timeout_at(at, send).await.ok(),
                None => Some(send.await),
            };
            let retry: Request<PeerBody> = match result {
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    // The caller's patience ran out, which says nothing against the endpoint.
                    let error = ProxyError::DeadlineExceeded {
                        service: service.to_string(),
                        waiting_for: "a response",
                        tries: attempt,
                    };
                    return fail(error, self.grpc, recorder);
                }
                None => {
                    self.balancer.failed(&endpoint, Failure::Failed);
                    let timeout = self.settings.per_try_timeout.unwrap_or_default();
                    let cause = format!("no response within the per-try timeout of {timeout:?}");
                    let retry = Retry::Failed(RetryReason::PerTryTimeout, cause, Pushback::None);
                    match self.next_attempt(retry, attempt, deadline, instance, &mut recorder, replayed).await {
                        Ok(next) => next,
                        Err(why) => {
                            let instance = instance.to_string();
                            let error = ProxyError::PerTryTimeout {
                                service: service.to_string(),
                                instance,
                                timeout,
                                tries: attempt,
                                why,
                            };
                            return fail(error, self.grpc, recorder);
                        }
                    }
                }
                Some(Ok(response)) if response.headers().contains_key(MESH_NOT_PROCESSED) => {
                    // The endpoint's app never saw the call.
                    self.balancer.failed(&endpoint, Failure::Failed);
                    let retry = Retry::NotProcessed("the instance's app never received it".into());
                    match self.next_attempt(retry, attempt, deadline, instance, &mut recorder, replayed).await {
                        Ok(next) => next,
                        Err(_) => return respond(response, recorder, (picked, slot)),
                    }
                }
                Some(Ok(response)) => {
                    let status = trailers_only_status(response.headers());
                    if made_by_proxy_unavailable(response.headers()) {
                        self.balancer.failed(&endpoint, Failure::Failed);
                    } else if status == Some(RESOURCE_EXHAUSTED) || response.headers().contains_key(GRPC_RETRY_PUSHBACK)
                    {
                        self.balancer.shed(&endpoint);
                    } else {
                        self.balancer.answered(&endpoint, sent.elapsed(), status == Some(UNAVAILABLE));
                    }
                    let retryable = status.filter(|&code| self.settings.retries_on(code));
                    let Some(code) = retryable else { return respond(response, recorder, (picked, slot)) };
                    let cause = format!("answered {}", code_label(tonic::Code::from(code as i32)));
                    let retry = Retry::Failed(RetryReason::Status, cause, pushback(response.headers()));
                    match self.next_attempt(retry, attempt, deadline, instance, &mut recorder, replayed).await {
                        Ok(next) => next,
                        Err(_) => return respond(response, recorder, (picked, slot)),
                    }
                }
                Some(Err(SendError::NotSent(back, cause))) => {
                    self.balancer.failed(&endpoint, Failure::NotConnected);
                    let retry = Retry::NotProcessed(cause);
                    // The request came back whole: no replay needed.
                    match self.next_attempt(retry, attempt, deadline, instance, &mut recorder, || Some(*back)).await {
                        Ok(next) => next,
                        Err(_) => {
                            let registered = self.balancer.len();
                            let error = ProxyError::NoReadyEndpoint { service: service.to_string(), registered };
                            return fail(error, self.grpc, recorder);
                        }
                    }
                }
                Some(Err(SendError::Failed(error))) => {
                    self.balancer.failed(&endpoint, Failure::Failed);
                    let cause = error.to_string();
                    let retry = Retry::Failed(RetryReason::ConnectionFailed, cause.clone(), Pushback::None);
                    match self.next_attempt(retry, attempt, deadline, instance, &mut recorder, replayed).await {
                        Ok(next) => next,
                        Err(_) => {
                            let error = ProxyError::UpstreamFailed {
                                service: service.to_string(),
                                instance: instance.to_string(),
                                addr: endpoint.client().addr().to_string(),
                                cause,
                            };
                            return fail(error, self.grpc, recorder);
                        }
                    }
                }
            };
            req = retry;
        }
        unreachable!("the attempt loop only ends by returning")
    }

    /// The error of a pick that found no endpoint.
    fn no_endpoint(
        &self,
        empty: Empty,
        deadline: Option<Instant>,
        caller: Option<Duration>,
        attempt: u32,
    ) -> ProxyError {
        let service = self.service.to_string();
        match empty {
            _ if deadline.is_some_and(|d| Instant::now() >= d) || caller.is_some_and(|t| t < self.fail_fast) => {
                ProxyError::DeadlineExceeded { service, waiting_for: "an endpoint", tries: attempt - 1 }
            }
            Empty::NotSynced => ProxyError::DiscoveryUnavailable(service),
            Empty::NoEndpoints => ProxyError::NoEndpoints(service),
            Empty::NoneReady(registered) => ProxyError::NoReadyEndpoint { service, registered },
        }
    }

    /// Whether the call gets another attempt: `Ok` with its request (made by `next`: the request
    /// that came back whole, or one replaying the buffered body; `None` if the body outgrew the
    /// buffer), or `Err` with why not. Waits out the backoff.
    async fn next_attempt(
        &self,
        retry: Retry,
        attempt: u32,
        deadline: Option<Instant>,
        instance: &str,
        recorder: &mut Recorder,
        next: impl FnOnce() -> Option<Request<PeerBody>>,
    ) -> Result<Request<PeerBody>, &'static str> {
        let service = self.service.as_str();
        let withheld = |reason: RetryRefused| {
            RetryWithheld { service, reason }.emit(&self.telemetry);
            Err(reason.description())
        };
        let (reason, cause, delay) = match retry {
            Retry::NotProcessed(cause) => {
                if attempt >= MAX_NOT_PROCESSED_ATTEMPTS {
                    return withheld(RetryRefused::Attempts);
                }
                (RetryReason::NotProcessed, cause, Duration::ZERO)
            }
            // Anything that may have reached an app is sent again only for an idempotent method.
            Retry::Failed(..) if !self.settings.idempotent => return Err("the method is not idempotent"),
            Retry::Failed(reason, cause, pushback) => {
                if attempt >= self.settings.max_attempts {
                    return withheld(RetryRefused::Attempts);
                }
                let delay = match pushback {
                    Pushback::Stop => return withheld(RetryRefused::Pushback),
                    Pushback::After(delay) => delay,
                    Pushback::None => budget::backoff(attempt),
                };
                (reason, cause, delay)
            }
        };
        let Some(req) = next() else { return withheld(RetryRefused::BodyTooLarge) };
        if let Some(deadline) = deadline {
            let fastest = self.balancer.fastest(Instant::now()).unwrap_or_default();
            if Instant::now() + delay + fastest >= deadline {
                return withheld(RetryRefused::Deadline);
            }
        }
        if reason != RetryReason::NotProcessed
            && !self.destination.budget.try_retry(&self.budget_policy, Instant::now())
        {
            return withheld(RetryRefused::Budget);
        }
        Retried { service, instance, reason, cause: &cause, attempt }.emit(&self.telemetry);
        if let Some(span) = recorder.span_mut() {
            span.retried_for(reason.as_str());
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(req)
    }
}

/// The caller gets the endpoint's response, observed, holding the endpoint's in-flight count
/// until it ends; the hop-level `mesh-not-processed` does not go further.
fn respond(
    response: Response<hyper::body::Incoming>,
    recorder: Recorder,
    guard: (crate::balance::InFlight<PeerClient>, tokio::sync::OwnedSemaphorePermit),
) -> Response<OutboundBody> {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(MESH_NOT_PROCESSED);
    let body = ResponseBody::observed(body, &parts.headers, recorder, guard);
    Response::from_parts(parts, body)
}

/// A trailers-only UNAVAILABLE the endpoint's proxy made itself (its app unreachable, say): a
/// failure of that endpoint, not of the service.
fn made_by_proxy_unavailable(headers: &HeaderMap) -> bool {
    headers.contains_key(MESH_ERROR) && headers.get(GRPC_STATUS).is_some_and(|s| s == "14")
}
