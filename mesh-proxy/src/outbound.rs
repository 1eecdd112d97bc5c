//! The outbound request path: a call from the local app to another service.
//!
//! ```text
//! app --h2c--> outbound listener -> target service (from :authority)
//!            -> balancer (P2C over peak-EWMA, waits up to the fail-fast timeout)
//!            -> endpoint connection (one multiplexed HTTP/2 connection per instance)
//!            -> the instance's inbound listener
//! ```

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use mesh_registry::ServiceName;
use tokio::time::Instant;

use crate::authority;
use crate::balance::Empty;
use crate::body::{RequestBody, ResponseBody};
use crate::client::SendError;
use crate::discovery::Discovery;
use crate::errors::{ProxyError, is_grpc};
use crate::headers::{CLIENT_SERVICE, strip_hop_by_hop};
use crate::metrics::{Direction, ProxyMetrics, Recorder};
use crate::trace::{SpanKind, Tracer};

/// How many endpoints one request may be offered to when it could not be sent.
const MAX_ATTEMPTS: usize = 3;

/// The outbound side of the proxy.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) discovery: Arc<Discovery>,
    pub(crate) metrics: Arc<ProxyMetrics>,
    /// Present when spans are exported.
    pub(crate) tracer: Option<Arc<Tracer>>,
    pub(crate) local: ServiceName,
    pub(crate) fail_fast: Duration,
}

impl Outbound {
    pub(crate) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ResponseBody> {
        let grpc = is_grpc(&req);
        let method = self.metrics.method_label(req.uri().path());
        let target = authority::target(&req);
        let dst = target.as_ref().map_or("unknown", |s| s.as_str());
        let mut recorder = self.metrics.start(Direction::Outbound, self.local.as_str(), dst, method);
        let (mut parts, body) = req.into_parts();
        // The peer sees this hop's span as its parent in `traceparent`.
        if let Some(tracer) = &self.tracer {
            recorder.trace(tracer.start(SpanKind::Client, &mut parts.headers));
        }
        let service = match target {
            Ok(service) => service,
            Err(raw) => return self.fail(ProxyError::BadAuthority(raw), grpc, recorder),
        };

        // Why here: the app's headers are cleaned once, before any attempt.
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(local) = HeaderValue::from_str(self.local.as_str()) {
            parts.headers.insert(CLIENT_SERVICE, local);
        }
        let mut req = Request::from_parts(parts, RequestBody::new(body, &recorder));

        let balancer = match self.discovery.balancer(&service) {
            Ok(balancer) => balancer,
            Err(error) => return self.fail(error, grpc, recorder),
        };
        // Wait for an endpoint no longer than the fail-fast timeout, nor past the caller's deadline.
        let started = Instant::now();
        let caller_timeout = authority::grpc_timeout(&req);
        let call_deadline = caller_timeout.map(|t| started + t);
        let deadline = call_deadline.map_or(started + self.fail_fast, |d| d.min(started + self.fail_fast));

        for attempt in 1..=MAX_ATTEMPTS {
            let picked = match balancer.pick(deadline).await {
                Ok(picked) => picked,
                Err(empty) => {
                    let error = match empty {
                        _ if caller_timeout.is_some_and(|t| t < self.fail_fast) => {
                            ProxyError::DeadlineExceeded { service: service.to_string(), waiting_for: "an endpoint" }
                        }
                        Empty::NotSynced => ProxyError::DiscoveryUnavailable(service.to_string()),
                        Empty::NoEndpoints => ProxyError::NoEndpoints(service.to_string()),
                        Empty::NoneReady(registered) => {
                            ProxyError::NoReadyEndpoint { service: service.to_string(), registered }
                        }
                    };
                    return self.fail(error, grpc, recorder);
                }
            };
            let endpoint = picked.endpoint().clone();
            if let Some(span) = recorder.span_mut() {
                span.set_endpoint(&endpoint);
            }
            let sent = Instant::now();
            // The caller's deadline bounds the wait for response headers; dropping the send
            // cancels the call upstream (RST_STREAM).
            let send = endpoint.client.send(req);
            let result = match call_deadline {
                Some(at) => match tokio::time::timeout_at(at, send).await {
                    Ok(result) => result,
                    Err(_) => {
                        let error =
                            ProxyError::DeadlineExceeded { service: service.to_string(), waiting_for: "a response" };
                        return self.fail(error, grpc, recorder);
                    }
                },
                None => send.await,
            };
            match result {
                Ok(response) => {
                    endpoint.observe(sent.elapsed(), balancer.settings.decay);
                    let (parts, body) = response.into_parts();
                    let body = ResponseBody::observed(body, &parts.headers, recorder).holding(picked);
                    return Response::from_parts(parts, body);
                }
                Err(SendError::NotSent(back, cause)) => {
                    tracing::debug!(%service, instance = %endpoint.record.instance_id, %cause, attempt, "not sent; trying another endpoint");
                    endpoint.penalize(balancer.settings.decay);
                    req = *back;
                    if attempt < MAX_ATTEMPTS {
                        self.metrics.retries.with_label_values(&[service.as_str()]).inc();
                    }
                }
                Err(SendError::Failed(error)) => {
                    let error = ProxyError::UpstreamFailed {
                        service: service.to_string(),
                        instance: endpoint.record.instance_id.to_string(),
                        addr: endpoint.client.addr().to_string(),
                        cause: error.to_string(),
                    };
                    return self.fail(error, grpc, recorder);
                }
            }
        }
        let registered = balancer.len();
        self.fail(ProxyError::NoReadyEndpoint { service: service.to_string(), registered }, grpc, recorder)
    }

    fn fail(&self, error: ProxyError, grpc: bool, recorder: Recorder) -> Response<ResponseBody> {
        tracing::debug!(%error, trace_id = recorder.trace_id().unwrap_or_default(), "outbound call failed in the proxy");
        error.respond(Direction::Outbound, grpc, recorder, &self.metrics)
    }
}
