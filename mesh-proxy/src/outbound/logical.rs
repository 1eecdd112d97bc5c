//! One outbound call on its way to a service: its deadline, and its attempts. A request that
//! never left (the connection could not be opened, or closed before the request was written) is
//! offered to up to 3 endpoints; the caller's `grpc-timeout` bounds the wait for an endpoint and
//! for the response headers. This is where routes, retries, timeouts and mirrors will sit.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use mesh_registry::ServiceName;
use tokio::time::Instant;

use super::{OutboundBody, fail};
use crate::balance::{Balancer, Empty};
use crate::endpoint::client::{H2Client, SendError};
use crate::headers::grpc_timeout;
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::errors::ProxyError;
use crate::telemetry::events::RetriedElsewhere;
use crate::telemetry::{Recorder, Telemetry};

/// How many endpoints one request may be offered to when it could not be sent.
const MAX_ATTEMPTS: usize = 3;

/// A call to one service.
pub(super) struct Call {
    pub(super) service: ServiceName,
    pub(super) balancer: Arc<Balancer<H2Client>>,
    /// How long to wait for a ready endpoint.
    pub(super) fail_fast: Duration,
    /// Answer failures as gRPC statuses.
    pub(super) grpc: bool,
    pub(super) telemetry: Arc<Telemetry>,
}

impl Call {
    pub(super) async fn send(self, mut req: Request<RequestBody>, mut recorder: Recorder) -> Response<OutboundBody> {
        let Self { service, balancer, fail_fast, grpc, telemetry } = self;
        // Wait for an endpoint no longer than the fail-fast timeout, nor past the caller's deadline.
        let started = Instant::now();
        let caller_timeout = grpc_timeout(&req);
        let call_deadline = caller_timeout.map(|t| started + t);
        let deadline = call_deadline.map_or(started + fail_fast, |d| d.min(started + fail_fast));

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
            match result {
                Ok(response) => {
                    endpoint.observe(sent.elapsed(), balancer.settings.decay);
                    let (parts, body) = response.into_parts();
                    let body = ResponseBody::observed(body, &parts.headers, recorder, picked);
                    return Response::from_parts(parts, body);
                }
                Err(SendError::NotSent(back, cause)) => {
                    endpoint.penalize(balancer.settings.decay);
                    req = *back;
                    if attempt < MAX_ATTEMPTS {
                        let instance = endpoint.record.instance_id.as_str();
                        RetriedElsewhere { service: service.as_str(), instance, cause: &cause, attempt }
                            .emit(&telemetry);
                    }
                }
                Err(SendError::Failed(error)) => {
                    let error = ProxyError::UpstreamFailed {
                        service: service.to_string(),
                        instance: endpoint.record.instance_id.to_string(),
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
