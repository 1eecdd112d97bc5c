//! Every header name the proxy reads or writes, in one place (a leaf module: anything may use
//! it), and the rules applied at every hop (RFC 9113 section 8.2.2): connection-specific headers
//! never cross HTTP/2, `te` may only say `trailers`, and the mesh's own headers are set by the
//! proxy, never trusted from the application.

use std::time::Duration;

use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Request};

/// The header in which an outbound proxy names the calling service for the inbound proxy. Under
/// mutual TLS the caller's verified identity is used instead; without it, this is informational.
pub(crate) const CLIENT_SERVICE: HeaderName = HeaderName::from_static("mesh-client-service");
/// The stable reason of an error the proxy made itself.
pub(crate) const MESH_ERROR: HeaderName = HeaderName::from_static("mesh-error");
/// The message of such an error, for callers that are not gRPC.
pub(crate) const MESH_ERROR_MESSAGE: HeaderName = HeaderName::from_static("mesh-error-message");
/// Set by an inbound proxy on an error it made because the call never reached its app (the app
/// could not be connected to): the call was not processed, so the calling proxy may send it to
/// another instance whatever the method. Stripped from what apps send.
pub(crate) const MESH_NOT_PROCESSED: HeaderName = HeaderName::from_static("mesh-not-processed");
/// W3C trace context.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C trace context: vendors' trace state, which goes with `traceparent`.
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// gRPC's status code (in trailers, or in headers for a trailers-only response).
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC's status message.
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC's deadline.
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// A server's word on retries: wait this many milliseconds first, or (negative) do not retry.
pub(crate) const GRPC_RETRY_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Whether a request is gRPC (so errors are answered as gRPC statuses).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The caller's deadline from `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n).
pub(crate) fn grpc_timeout<B>(req: &Request<B>) -> Option<Duration> {
    mesh_common::deadline::parse(req.headers().get(GRPC_TIMEOUT)?.to_str().ok()?)
}

/// `grpc-timeout` for `left`, in the finest unit that fits its 8 digits (rounded down, so a
/// forwarded deadline never grows).
pub(crate) fn encode_grpc_timeout(left: Duration) -> HeaderValue {
    HeaderValue::from_str(&mesh_common::deadline::encode(left)).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// The gRPC status of a trailers-only response (the status in the headers: nothing was sent
/// yet, so the call can still be sent again).
pub(crate) fn trailers_only_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// What a response says about retrying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Nothing: the caller's own backoff applies.
    None,
    /// Wait this long first.
    After(Duration),
    /// Do not retry (a negative or malformed value).
    Stop,
}

/// The response's `grpc-retry-pushback-ms`.
pub(crate) fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(value) = headers.get(GRPC_RETRY_PUSHBACK) else { return Pushback::None };
    match value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()) {
        Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms.unsigned_abs())),
        _ => Pushback::Stop,
    }
}

/// Removes connection-specific headers and any `te` other than `trailers`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(CONNECTION).and_then(|v| v.to_str().ok()).map(str::to_owned) {
        for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            headers.remove(name);
        }
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "x-private".parse().unwrap_or_else(|_| unreachable!()));
        h.insert("x-private", "1".parse().unwrap_or_else(|_| unreachable!()));
        h.insert("keep-alive", "5".parse().unwrap_or_else(|_| unreachable!()));
        h.insert(TE, "gzip".parse().unwrap_or_else(|_| unreachable!()));
        h.insert("grpc-timeout", "1S".parse().unwrap_or_else(|_| unreachable!()));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("grpc-timeout"));

        let mut h = HeaderMap::new();
        h.insert(TE, "trailers".parse().unwrap_or_else(|_| unreachable!()));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(TE));
    }

    #[test]
    fn a_forwarded_timeout_reads_back_from_the_header() {
        let value = encode_grpc_timeout(Duration::from_micros(98_765_432));
        let req = Request::builder().header("grpc-timeout", value).body(()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(grpc_timeout(&req), Some(Duration::from_micros(98_765_432)));
    }

    #[test]
    fn pushback_says_wait_or_stop() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_RETRY_PUSHBACK, v.parse().unwrap_or_else(|_| unreachable!()));
            pushback(&h)
        };
        assert_eq!(pushback(&HeaderMap::new()), Pushback::None);
        assert_eq!(with("250"), Pushback::After(Duration::from_millis(250)));
        assert_eq!(with("-1"), Pushback::Stop);
        assert_eq!(with("soon"), Pushback::Stop);
    }
}
