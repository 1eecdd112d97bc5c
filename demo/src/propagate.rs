//! What a meshed app passes on from the call it serves to the calls it makes: the trace context
//! (W3C `traceparent`, `tracestate`), so traces join up across services, and the deadline
//! (`grpc-timeout`, less the time already spent), so a chain never works past its caller's
//! patience. The proxies do the rest.

use std::time::Instant;

use tonic::metadata::MetadataMap;

/// The headers that carry trace context.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// `outgoing`, with the trace context and the remaining deadline of the call being served
/// (`incoming`, received at `started`).
pub(crate) fn propagate<T>(
    incoming: &MetadataMap,
    started: Instant,
    mut outgoing: tonic::Request<T>,
) -> tonic::Request<T> {
    for name in TRACE_HEADERS {
        if let Some(value) = incoming.get(name) {
            outgoing.metadata_mut().insert(name, value.clone());
        }
    }
    if let Some(timeout) =
        incoming.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(mesh_common::deadline::parse)
    {
        outgoing.set_timeout(timeout.saturating_sub(started.elapsed()));
    }
    outgoing
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_deadline_goes_on_less_what_was_spent() {
        let mut incoming = MetadataMap::new();
        incoming.insert("grpc-timeout", "100m".parse().unwrap_or_else(|_| unreachable!()));
        incoming.insert("traceparent", "00-x".parse().unwrap_or_else(|_| unreachable!()));
        let started = Instant::now() - Duration::from_millis(30);
        let out = propagate(&incoming, started, tonic::Request::new(()));
        assert!(out.metadata().contains_key("traceparent"));
        let sent =
            out.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(mesh_common::deadline::parse);
        assert!(sent.is_some_and(|t| t <= Duration::from_millis(70) && t > Duration::from_millis(50)), "{sent:?}");
    }
}
