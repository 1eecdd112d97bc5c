//! Trace context propagation, the one thing a meshed app must do for traces to join up across
//! services: copy the W3C headers (`traceparent`, `tracestate`) from the call being served onto
//! the calls it makes. The proxies do the rest.

use tonic::metadata::MetadataMap;

/// The headers that carry trace context.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// `outgoing`, with the trace context of the call being served (`incoming`).
pub(crate) fn propagate<T>(incoming: &MetadataMap, mut outgoing: tonic::Request<T>) -> tonic::Request<T> {
    for name in TRACE_HEADERS {
        if let Some(value) = incoming.get(name) {
            outgoing.metadata_mut().insert(name, value.clone());
        }
    }
    outgoing
}
