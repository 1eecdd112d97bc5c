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
//!   hedged (idempotent, opt-in): no answer within the delay (configured, or the p95)
//!       -> a second attempt to another endpoint, budget allowing; the first answer wins
//! ```
//!
//! The request body is kept for another attempt while it fits the replay buffer (64 KiB); a
//! larger one is never sent twice. Only trailers-only answers (the status in the headers) are
//! retried: once a response has started it belongs to the caller. An endpoint that fails costs
//! more in the balancer (failure accrual) instead of looking fast because it fails fast.
//! Retries happen here, on the caller's side of a hop only; the inbound side never retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use mesh_registry::ServiceName;
use mesh_registry::policy::{CircuitBreaker, HedgeDelay, MethodSettings, RetryBudget};
use mesh_registry::routes::Selector;
use tokio::time::Instant;

use super::breaker::Shed;
use super::budget;
use super::policy::Destination;
use super::{OutboundBody, PeerBody, PeerClient, fail};
use crate::balance::{Balancer, Empty, Endpoint, Failure, InFlight};
use crate::endpoint::client::SendError;
use crate::headers::{
    GRPC_RETRY_PUSHBACK, GRPC_STATUS, GRPC_TIMEOUT, MESH_ERROR, MESH_NOT_PROCESSED, Pushback, encode_grpc_timeout,
    grpc_timeout, pushback, trailers_only_status,
};
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::errors::ProxyError;
use crate::http::replay::{self, ReplayBody};
use crate::telemetry::events::{HedgeWon, Hedged, Overloaded, Retried, RetryWithheld};
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
    /// What the service's policy says for this method (and route).
    pub(super) settings: MethodSettings,
    /// The route's subset: the instances the call may go to (`None`: all).
    pub(super) subset: Option<Selector>,
    /// The route's split, to draw once discovery has listed the service.
    pub(super) pending: Option<super::route::Pending>,
    /// A delay injected before the call is sent.
    pub(super) delay: Option<Duration>,
    /// Where a copy of the call goes.
    pub(super) mirror: Option<super::mirror::Mirror>,
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
    pub(super) async fn send(mut self, req: Request<RequestBody>, mut recorder: Recorder) -> Response<OutboundBody> {
        let started = Instant::now();
        let caller_timeout = grpc_timeout(&req);
        let deadline = caller_timeout.or(self.settings.timeout).map(|t| started + t);
        if let Some(delay) = self.delay {
            // Fault injection: held first, within the deadline.
            let until = started + delay;
            tokio::time::sleep_until(deadline.map_or(until, |d| d.min(until))).await;
            if deadline.is_some_and(|d| d <= until) {
                let service = self.service.to_string();
                let error = ProxyError::DeadlineExceeded { service, waiting_for: "an injected delay", tries: 0 };
                return fail(error, self.grpc, recorder);
            }
        }
        // Wait for an endpoint no longer than the fail-fast timeout, nor past the deadline.
        let now = Instant::now();
        let pick_until = deadline.map_or(now + self.fail_fast, |d| d.min(now + self.fail_fast));
        if let Some(pending) = self.pending.take() {
            // The service's first calls: which subsets have instances is known once it is listed.
            self.balancer.listed(pick_until).await;
            match pending.draw(&self.balancer, self.service.as_str()) {
                Ok((subset, name)) => {
                    self.subset = subset;
                    recorder.route_subset(name);
                }
                Err(error) => return fail(error, self.grpc, recorder),
            }
        }
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
        if let Some(mirror) = self.mirror.take()
            && let Some(copy) = body.replay()
        {
            mirror.spawn(head.request(copy));
        }
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
            let picked = match self.balancer.pick_in(pick_until, self.subset.as_ref()).await {
                Ok(picked) => picked,
                Err(empty) => {
                    return fail(self.no_endpoint(empty, deadline, caller_timeout, attempt), self.grpc, recorder);
                }
            };

            // The deadline and the per-try timeout bound the wait for response headers; dropping
            // the send cancels the attempt upstream (RST_STREAM).
            let per_try_until = self.settings.per_try_timeout.map(|t| Instant::now() + t);
            let until = match (deadline, per_try_until) {
                (Some(d), Some(p)) => Some(d.min(p)),
                (d, p) => d.or(p),
            };
            let (picked, sent, result) = self.exchange(req, picked, until, &replayed, &mut recorder).await;
            // The endpoint whose answer counts (a hedge's, if it won).
            let endpoint = picked.endpoint().clone();
            if let Some(span) = recorder.span_mut() {
                span.set_endpoint(&endpoint.tag);
            }
            let instance = endpoint.record.instance_id.as_str();
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
                    if self.settings.hedge.is_some() {
                        self.destination.latencies.record(sent.elapsed(), Instant::now());
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

    /// Sends one attempt to `picked` and waits for its response headers until `until`. For a
    /// hedged method, once the attempt is late (the configured delay, or the service's recent
    /// p95) a second one goes to another endpoint, if the replay buffer and the retry budget
    /// allow: the first answer wins and the other attempt is dropped, which cancels it upstream
    /// (RST_STREAM); an attempt that fails leaves the race to the other. Returns the endpoint
    /// whose answer counts, when that attempt was sent, and what came back (`None`: `until`
    /// passed).
    async fn exchange(
        &self,
        req: Request<PeerBody>,
        picked: InFlight<PeerClient>,
        until: Option<Instant>,
        replayed: &impl Fn() -> Option<Request<PeerBody>>,
        recorder: &mut Recorder,
    ) -> (InFlight<PeerClient>, Instant, Attempted) {
        let sent = Instant::now();
        let endpoint = picked.endpoint().clone();
        let first = bounded(endpoint.client().send(req), until);
        let delay = match self.settings.hedge {
            None => None,
            Some(HedgeDelay::After(delay)) => Some(delay),
            Some(HedgeDelay::P95) => self.destination.latencies.p95(sent),
        };
        let Some(delay) = delay else { return (picked, sent, first.await) };
        tokio::pin!(first);
        tokio::select! {
            biased;
            result = &mut first => return (picked, sent, result),
            () = tokio::time::sleep(delay) => {}
        }
        let Some((hedge, req)) = self.hedge(&endpoint, delay, replayed) else { return (picked, sent, first.await) };
        if let Some(span) = recorder.span_mut() {
            span.retried_for("hedge");
        }
        let hedged = Instant::now();
        let other = hedge.endpoint().clone();
        let second = bounded(other.client().send(req), until);
        tokio::pin!(second);
        let (mut first_failed, mut second_failed) = (None, None);
        loop {
            tokio::select! {
                result = &mut first, if first_failed.is_none() => {
                    if matches!(result, Some(Ok(_))) {
                        return (picked, sent, result);
                    }
                    first_failed = Some(result);
                }
                result = &mut second, if second_failed.is_none() => {
                    if matches!(result, Some(Ok(_))) {
                        HedgeWon { service: self.service.as_str() }.emit(&self.telemetry);
                        return (hedge, hedged, result);
                    }
                    second_failed = Some(result);
                }
            }
            // Both failed: the first attempt's outcome decides what happens next.
            match (first_failed.take(), second_failed.take()) {
                (Some(result), Some(_)) => return (picked, sent, result),
                (a, b) => (first_failed, second_failed) = (a, b),
            }
        }
    }

    /// A hedge for a call late at `first`: another endpoint, a replay of the request, and the
    /// budget's leave; `None` if any is missing.
    fn hedge(
        &self,
        first: &Arc<Endpoint<PeerClient>>,
        after: Duration,
        replayed: &impl Fn() -> Option<Request<PeerBody>>,
    ) -> Option<(InFlight<PeerClient>, Request<PeerBody>)> {
        let service = self.service.as_str();
        // A few picks, so that another endpoint is found even when P2C favours the late one.
        let other = (0..4)
            .filter_map(|_| self.balancer.try_pick_in(self.subset.as_ref()).ok())
            .find(|p| !Arc::ptr_eq(p.endpoint(), first))?;
        let Some(req) = replayed() else {
            RetryWithheld { service, reason: RetryRefused::BodyTooLarge }.emit(&self.telemetry);
            return None;
        };
        if !self.destination.budget.try_retry(&self.budget_policy, Instant::now()) {
            RetryWithheld { service, reason: RetryRefused::Budget }.emit(&self.telemetry);
            return None;
        }
        Hedged { service, instance: first.record.instance_id.as_str(), after }.emit(&self.telemetry);
        Some((other, req))
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

/// What one attempt's send came to: `None` if its time ran out.
type Attempted = Option<Result<Response<hyper::body::Incoming>, SendError<PeerBody>>>;

/// `send`, given up at `until`. Not an `async fn`: one would hold `send` twice (as its argument
/// and as what it awaits), and an attempt's future is part of every call's.
fn bounded<F: Future>(send: F, until: Option<Instant>) -> impl Future<Output = Option<F::Output>> {
    match until {
        Some(at) => Either::Left(tokio::time::timeout_at(at, send).map(Result::ok)),
        None => Either::Right(send.map(Some)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bounded_attempt_holds_its_send_once() {
        // An `async fn` here held the send future twice (docs/performance.md): every call's
        // future carries two of these, and tokio copies it several times per call.
        let send = async {
            let buffer = [0u8; 512];
            tokio::task::yield_now().await;
            buffer.len()
        };
        let alone = std::mem::size_of_val(&send);
        let bounded = bounded(send, Some(Instant::now()));
        assert!(
            std::mem::size_of_val(&bounded) < alone + 256,
            "{} for a {alone}-byte send",
            std::mem::size_of_val(&bounded)
        );
    }
}
