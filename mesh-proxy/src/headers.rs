//! Header rules applied at every hop (RFC 9113 section 8.2.2): connection-specific headers never
//! cross HTTP/2, `te` may only say `trailers`, and the mesh's own headers are set by the proxy,
//! never trusted from the application.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};

/// The header in which an outbound proxy names the calling service for the inbound proxy.
/// (Until mutual TLS carries the caller's identity, this is informational only.)
pub(crate) const CLIENT_SERVICE: HeaderName = HeaderName::from_static("mesh-client-service");

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
}
