//! Errors the proxy itself answers with. Each is a real gRPC status with a stable reason, so a
//! caller can act on it: the gRPC code in `grpc-status`, a message in `grpc-message` that starts
//! with `mesh:` and names what failed, and the machine-readable reason in `mesh-error`.
//! Non-gRPC callers get the matching HTTP status with the same header and message.

use http::{HeaderValue, Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tonic::Code;

use super::body::ResponseBody;
use crate::headers::{GRPC_MESSAGE, GRPC_RETRY_PUSHBACK, GRPC_STATUS, MESH_ERROR, MESH_ERROR_MESSAGE};
use crate::telemetry::Recorder;
use crate::telemetry::labels::{ErrorReason, code_label};

/// A failure the proxy answers itself.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProxyError {
    /// `:authority` does not name a service.
    #[error(
        "mesh: cannot route: authority {0:?} does not name a service (use <service>, <service>:<port> or <service>.mesh)"
    )]
    BadAuthority(String),
    /// The service has no registered instances (after waiting the fail-fast timeout).
    #[error("mesh: no endpoints for service {0:?}: no instance is registered")]
    NoEndpoints(String),
    /// Instances are registered but none could be reached.
    #[error("mesh: no ready endpoint for service {service:?}: {registered} registered, none reachable")]
    NoReadyEndpoint { service: String, registered: usize },
    /// Discovery has no state for the service (etcd unreachable since the first use).
    #[error("mesh: service discovery unavailable for {0:?}: etcd unreachable and nothing cached")]
    DiscoveryUnavailable(String),
    /// The caller's `grpc-timeout` ran out while the proxy waited (for an endpoint, or for the
    /// response headers).
    #[error("mesh: deadline exceeded waiting for {waiting_for} of {service:?} (after {tries} tries)")]
    DeadlineExceeded { service: String, waiting_for: &'static str, tries: u32 },
    #[error(
        "mesh: deadline exceeded: {left:?} left for {service:?} after {tries} tries, less than its fastest endpoint's recent {fastest:?}; not sent"
    )]
    DeadlineTooShort { service: String, left: std::time::Duration, fastest: std::time::Duration, tries: u32 },
    #[error(
        "mesh: {service:?} instance {instance} sent no response within the per-try timeout of {timeout:?} (try {tries}; {why})"
    )]
    PerTryTimeout { service: String, instance: String, timeout: std::time::Duration, tries: u32, why: &'static str },
    /// The chosen endpoint failed after the request was sent.
    #[error("mesh: upstream {service:?} instance {instance} at {addr} failed: {cause}")]
    UpstreamFailed { service: String, instance: String, addr: String, cause: String },
    /// The local application could not be reached.
    #[error("mesh: local application at {addr} unreachable: {cause}")]
    AppUnavailable { addr: String, cause: String },
    /// The inbound concurrency limit refused the call (the app is queueing, or at its fixed limit).
    #[error(
        "mesh: local application at {addr} is overloaded: {limit} calls in flight, its {kind} concurrency limit; not sent (retry after {pushback_ms} ms)"
    )]
    AppOverloaded { addr: String, limit: u32, kind: &'static str, pushback_ms: u64 },
    /// The caller may not call this method (the message names the caller and the rule).
    #[error("{0}")]
    NotAuthorized(String),
    /// The proxy already tracks as many services as it may.
    #[error(
        "mesh: {service:?} is overloaded in this proxy: {max_in_flight} calls in flight and {why} (circuit breaker, {max_pending} may wait); not sent"
    )]
    Overloaded { service: String, max_in_flight: u32, max_pending: u32, why: &'static str },
    #[error("mesh: too many services in use (limit {0})")]
    TooManyServices(usize),
    /// The route's split names only subsets without instances.
    #[error(
        "mesh: no endpoints for service {service:?} on route {route:?}: none of its split's subsets has an instance"
    )]
    NoSubsetEndpoints { service: String, route: String },
    /// A rate limit of the service's policy refused the call (it was never sent to the app).
    #[error(
        "mesh: {service:?} is rate limited: limit {limit:?} ({per_second:.1}/s per {scope:?}) has no token; not sent (retry after {pushback_ms} ms)"
    )]
    RateLimited {
        service: String,
        limit: String,
        scope: mesh_registry::limits::Scope,
        per_second: f64,
        pushback_ms: u64,
    },
    /// The gateway refused the caller's token on an authenticated route.
    #[error("mesh: gateway: unauthenticated ({reason}): {detail}")]
    Unauthenticated { reason: &'static str, detail: String },
    /// No route of the gateway takes the request.
    #[error("mesh: gateway: no route for host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    /// A rate limit of the gateway's route refused the request (it was never sent).
    #[error(
        "mesh: gateway: route {route:?} is rate limited {per} ({per_second}/s, burst {burst}); not sent (retry after {pushback_ms} ms)"
    )]
    EdgeRateLimited { route: String, per: String, per_second: u32, burst: u32, pushback_ms: u64 },
    /// The request's body is over its gateway route's `max_request_bytes`.
    #[error("mesh: gateway: the request body is over route {route:?}'s limit of {limit} bytes")]
    RequestTooLarge { route: String, limit: u64 },
    /// The route's fault injection aborted the call (it was never sent).
    #[error("mesh: fault injected by route {route:?} of {service:?}'s policy (abort); not sent")]
    FaultInjected { service: String, route: String, code: i32 },
}

impl ProxyError {
    /// The stable reason, also the `reason` label of `mesh_proxy_errors_total`.
    pub(crate) fn reason(&self) -> ErrorReason {
        match self {
            Self::BadAuthority(_) => ErrorReason::BadAuthority,
            Self::NoRoute { .. } => ErrorReason::NoRoute,
            Self::Unauthenticated { .. } => ErrorReason::Unauthenticated,
            Self::NoEndpoints(_) | Self::NoSubsetEndpoints { .. } => ErrorReason::NoEndpoints,
            Self::FaultInjected { .. } => ErrorReason::FaultInjected,
            Self::RateLimited { .. } | Self::EdgeRateLimited { .. } => ErrorReason::RateLimited,
            Self::RequestTooLarge { .. } => ErrorReason::RequestTooLarge,
            Self::NoReadyEndpoint { .. } => ErrorReason::NoReadyEndpoint,
            Self::DiscoveryUnavailable(_) => ErrorReason::DiscoveryUnavailable,
            Self::DeadlineExceeded { .. } | Self::DeadlineTooShort { .. } => ErrorReason::DeadlineExceeded,
            Self::PerTryTimeout { .. } => ErrorReason::PerTryTimeout,
            Self::UpstreamFailed { .. } => ErrorReason::UpstreamFailed,
            Self::AppUnavailable { .. } => ErrorReason::AppUnavailable,
            Self::AppOverloaded { .. } => ErrorReason::AppOverloaded,
            Self::TooManyServices(_) => ErrorReason::TooManyServices,
            Self::Overloaded { .. } => ErrorReason::Overloaded,
            Self::NotAuthorized(_) => ErrorReason::NotAuthorized,
        }
    }

    /// The gRPC status code.
    pub(crate) fn code(&self) -> Code {
        match self {
            Self::BadAuthority(_) => Code::InvalidArgument,
            Self::DeadlineExceeded { .. } | Self::DeadlineTooShort { .. } | Self::PerTryTimeout { .. } => {
                Code::DeadlineExceeded
            }
            Self::TooManyServices(_)
            | Self::AppOverloaded { .. }
            | Self::RateLimited { .. }
            | Self::EdgeRateLimited { .. }
            | Self::RequestTooLarge { .. } => Code::ResourceExhausted,
            Self::NotAuthorized(_) => Code::PermissionDenied,
            Self::NoRoute { .. } => Code::Unimplemented,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::FaultInjected { code, .. } => Code::from_i32(*code),
            _ => Code::Unavailable,
        }
    }

    fn http_status(&self) -> StatusCode {
        if let Self::RequestTooLarge { .. } = self {
            return StatusCode::PAYLOAD_TOO_LARGE;
        }
        match self.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unimplemented => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Counts this error, records the call with its status, and answers it: what both request
    /// paths do when the proxy fails a call itself.
    pub(crate) fn respond<G>(self, grpc: bool, mut recorder: Recorder) -> Response<ResponseBody<G>> {
        recorder.proxy_error(self.reason());
        recorder.finish(code_label(self.code()), 0);
        self.into_response(grpc)
    }

    /// When the caller may try again, for a refusal that says so.
    fn pushback_ms(&self) -> Option<u64> {
        match self {
            Self::AppOverloaded { pushback_ms, .. }
            | Self::RateLimited { pushback_ms, .. }
            | Self::EdgeRateLimited { pushback_ms, .. } => Some(*pushback_ms),
            _ => None,
        }
    }

    /// The response: trailers-only gRPC for gRPC callers, an HTTP status otherwise.
    pub(crate) fn into_response<G>(self, grpc: bool) -> Response<ResponseBody<G>> {
        /// Characters percent-encoded in `grpc-message` (the gRPC spec's set).
        const ESCAPED: &AsciiSet = &CONTROLS.add(b'%');
        let message = self.to_string();
        let mut response = Response::new(ResponseBody::empty());
        if !grpc {
            *response.status_mut() = self.http_status();
        }
        let headers = response.headers_mut();
        headers.insert(MESH_ERROR, HeaderValue::from_static(self.reason().as_str()));
        if grpc {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(GRPC_STATUS, HeaderValue::from(self.code() as i32));
            let encoded = utf8_percent_encode(&message, ESCAPED).to_string();
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                headers.insert(GRPC_MESSAGE, v);
            }
            if let Some(pushback_ms) = self.pushback_ms() {
                // When the caller may try again (gRPC's retry design; the calling proxy honours it).
                headers.insert(GRPC_RETRY_PUSHBACK, HeaderValue::from(pushback_ms));
            }
        } else {
            if let Ok(v) = HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
                headers.insert(MESH_ERROR_MESSAGE, v);
            }
            if let Some(pushback_ms) = self.pushback_ms() {
                // HTTP's hint is in whole seconds.
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(pushback_ms.div_ceil(1000).max(1)));
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_with_a_stable_reason() {
        let resp = ProxyError::NoEndpoints("orders".into()).into_response::<()>(true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["mesh-error"], "no_endpoints");
        let message = resp.headers()["grpc-message"].to_str().unwrap_or_default();
        assert!(message.contains("orders"), "{message}");
        assert!(http_body::Body::is_end_stream(resp.body()));

        let resp = ProxyError::DeadlineExceeded { service: "orders".into(), waiting_for: "an endpoint", tries: 0 }
            .into_response::<()>(false);
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
