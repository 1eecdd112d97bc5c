//! The trace store: recent spans, bounded by count and by bytes, oldest evicted first, indexed
//! by trace for the Zipkin read API.
//!
//! Spans arrive as OTLP and are kept in the shape Zipkin v2 serves (service, name, kind,
//! microsecond timestamp and duration, string tags), so a query only filters and serializes.

use std::collections::{BTreeSet, HashMap, VecDeque};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{self as otlp, span::SpanKind, status::StatusCode};
use serde::Serialize;

use crate::series::{attribute, truncate, value_string};

/// Most tags kept per span.
const MAX_TAGS: usize = 64;
/// Longest span or service name kept.
const MAX_NAME: usize = 256;

/// A trace id.
pub(crate) type TraceId = [u8; 16];

/// One span as stored.
#[derive(Debug, Clone)]
pub(crate) struct StoredSpan {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_id: Option<[u8; 8]>,
    pub(crate) name: String,
    pub(crate) kind: Option<&'static str>,
    pub(crate) service: String,
    pub(crate) remote_service: Option<String>,
    /// Microseconds since the Unix epoch.
    pub(crate) timestamp: u64,
    /// Microseconds.
    pub(crate) duration: u64,
    pub(crate) error: bool,
    pub(crate) tags: Vec<(String, String)>,
}

impl StoredSpan {
    /// Converts an OTLP span; `None` when its ids are not valid.
    pub(crate) fn from_otlp(resource: &[KeyValue], span: &otlp::Span) -> Option<Self> {
        let trace_id: TraceId = span.trace_id.as_slice().try_into().ok()?;
        let span_id: [u8; 8] = span.span_id.as_slice().try_into().ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let parent_id = span.parent_span_id.as_slice().try_into().ok().filter(|p: &[u8; 8]| *p != [0; 8]);
        let service = attribute(resource, "service.name")
            .map(|v| value_string(Some(v)))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown_service".to_string());
        let kind = match SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified) {
            SpanKind::Server => Some("SERVER"),
            SpanKind::Client => Some("CLIENT"),
            SpanKind::Producer => Some("PRODUCER"),
            SpanKind::Consumer => Some("CONSUMER"),
            _ => None,
        };
        let mut tags: Vec<(String, String)> = span
            .attributes
            .iter()
            .take(MAX_TAGS)
            .map(|kv| (truncate(&kv.key, MAX_NAME), value_string(kv.value.as_ref())))
            .collect();
        let status = span.status.as_ref();
        let error = status.is_some_and(|s| s.code == StatusCode::Error as i32);
        if error {
            let message = status.map(|s| s.message.as_str()).filter(|m| !m.is_empty()).unwrap_or("ERROR");
            tags.push(("error".to_string(), truncate(message, 1024)));
            tags.push(("otel.status_code".to_string(), "ERROR".to_string()));
        }
        let remote_service =
            attribute(&span.attributes, "peer.service").map(|v| truncate(&value_string(Some(v)), MAX_NAME));
        Some(Self {
            trace_id,
            span_id,
            parent_id,
            name: truncate(&span.name, MAX_NAME),
            kind,
            service: truncate(&service, MAX_NAME),
            remote_service,
            timestamp: span.start_time_unix_nano / 1000,
            duration: (span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1000).max(1),
            error,
            tags,
        })
    }

    /// What this span costs the store in bytes: the struct, its queue and index entries, and
    /// each heap allocation with the allocator's own overhead (about 16 bytes each).
    pub(crate) fn size(&self) -> usize {
        const FIXED: usize = std::mem::size_of::<StoredSpan>() + 64;
        const PER_STRING: usize = 16;
        const PER_TAG: usize = std::mem::size_of::<(String, String)>() + 2 * PER_STRING;
        FIXED
            + self.name.len()
            + self.service.len()
            + 2 * PER_STRING
            + self.remote_service.as_ref().map_or(0, |r| r.len() + PER_STRING)
            + self.tags.capacity() * PER_TAG
            + self.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// Store bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoreLimits {
    pub(crate) max_spans: usize,
    pub(crate) max_bytes: usize,
}

/// The bounded store.
#[derive(Debug)]
pub(crate) struct TraceStore {
    limits: StoreLimits,
    traces: HashMap<TraceId, VecDeque<StoredSpan>>,
    /// Arrival order, one entry per stored span.
    order: VecDeque<TraceId>,
    bytes: usize,
}

/// A trace search (the Zipkin `/api/v2/traces` parameters).
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub(crate) service: Option<String>,
    pub(crate) remote_service: Option<String>,
    pub(crate) span_name: Option<String>,
    /// `key=value` and bare `key` terms, all of which one span must match.
    pub(crate) annotations: Vec<(String, Option<String>)>,
    /// Microseconds.
    pub(crate) min_duration: Option<u64>,
    pub(crate) max_duration: Option<u64>,
    /// Milliseconds since the epoch.
    pub(crate) end_ts: u64,
    pub(crate) lookback: u64,
    pub(crate) limit: usize,
}

impl TraceStore {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        Self { limits, traces: HashMap::new(), order: VecDeque::new(), bytes: 0 }
    }

    pub(crate) fn spans(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn traces(&self) -> usize {
        self.traces.len()
    }

    /// Stores a span, evicting the oldest as needed; returns how many were evicted, or `None` if
    /// the span alone is over the byte bound.
    pub(crate) fn insert(&mut self, span: StoredSpan) -> Option<usize> {
        let size = span.size();
        if size > self.limits.max_bytes || self.limits.max_spans == 0 {
            return None;
        }
        let mut evicted = 0;
        while !self.order.is_empty()
            && (self.order.len() >= self.limits.max_spans || self.bytes + size > self.limits.max_bytes)
        {
            self.evict_oldest();
            evicted += 1;
        }
        self.bytes += size;
        self.order.push_back(span.trace_id);
        self.traces.entry(span.trace_id).or_default().push_back(span);
        Some(evicted)
    }

    fn evict_oldest(&mut self) {
        let Some(trace_id) = self.order.pop_front() else { return };
        if let Some(spans) = self.traces.get_mut(&trace_id) {
            if let Some(span) = spans.pop_front() {
                self.bytes -= span.size();
            }
            if spans.is_empty() {
                self.traces.remove(&trace_id);
            }
        }
    }

    /// One trace's spans, by start time.
    pub(crate) fn trace(&self, id: &TraceId) -> Option<Vec<&StoredSpan>> {
        let mut spans: Vec<&StoredSpan> = self.traces.get(id)?.iter().collect();
        spans.sort_by_key(|s| (s.timestamp, std::cmp::Reverse(s.duration)));
        Some(spans)
    }

    /// Service names, sorted.
    pub(crate) fn services(&self) -> Vec<String> {
        self.all().map(|s| s.service.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// Span names of a service, sorted.
    pub(crate) fn span_names(&self, service: &str) -> Vec<String> {
        self.all()
            .filter(|s| s.service == service)
            .map(|s| s.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Services a service called, sorted.
    pub(crate) fn remote_services(&self, service: &str) -> Vec<String> {
        self.all()
            .filter(|s| s.service == service)
            .filter_map(|s| s.remote_service.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn all(&self) -> impl Iterator<Item = &StoredSpan> {
        self.traces.values().flatten()
    }

    /// Traces with at least one span matching `query`, newest first.
    pub(crate) fn search(&self, query: &Query) -> Vec<Vec<&StoredSpan>> {
        let end_us = query.end_ts.saturating_mul(1000);
        let start_us = end_us.saturating_sub(query.lookback.saturating_mul(1000));
        let mut found: Vec<(u64, &TraceId)> = self
            .traces
            .iter()
            .filter(|(_, spans)| spans.iter().any(|s| matches(s, query, start_us, end_us)))
            .map(|(id, spans)| (spans.iter().map(|s| s.timestamp).min().unwrap_or(0), id))
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found.into_iter().take(query.limit).filter_map(|(_, id)| self.trace(id)).collect()
    }
}

fn matches(s: &StoredSpan, q: &Query, start_us: u64, end_us: u64) -> bool {
    if s.timestamp < start_us || s.timestamp > end_us {
        return false;
    }
    if q.service.as_ref().is_some_and(|svc| !s.service.eq_ignore_ascii_case(svc)) {
        return false;
    }
    if q.remote_service.as_ref().is_some_and(|r| s.remote_service.as_ref().is_none_or(|rs| !rs.eq_ignore_ascii_case(r)))
    {
        return false;
    }
    if q.span_name.as_ref().is_some_and(|n| !s.name.eq_ignore_ascii_case(n)) {
        return false;
    }
    if q.min_duration.is_some_and(|min| s.duration < min) || q.max_duration.is_some_and(|max| s.duration > max) {
        return false;
    }
    q.annotations.iter().all(|(key, value)| {
        s.tags.iter().any(|(k, v)| k == key && value.as_ref().is_none_or(|want| v == want))
            || (key == "error" && value.is_none() && s.error)
    })
}

/// A span in Zipkin v2 JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ZipkinSpan<'a> {
    trace_id: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    timestamp: u64,
    duration: u64,
    local_endpoint: Endpoint<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_endpoint: Option<Endpoint<'a>>,
    tags: std::collections::BTreeMap<&'a str, &'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint<'a> {
    service_name: &'a str,
}

impl<'a> From<&'a StoredSpan> for ZipkinSpan<'a> {
    fn from(s: &'a StoredSpan) -> Self {
        Self {
            trace_id: hex::encode(s.trace_id),
            id: hex::encode(s.span_id),
            parent_id: s.parent_id.map(hex::encode),
            name: &s.name,
            kind: s.kind,
            timestamp: s.timestamp,
            duration: s.duration,
            local_endpoint: Endpoint { service_name: &s.service },
            remote_endpoint: s.remote_service.as_deref().map(|service_name| Endpoint { service_name }),
            tags: s.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }
    }
}

/// Parses a trace id in hex: 32 digits, or 16 (a 64-bit id, zero-extended).
pub(crate) fn parse_trace_id(s: &str) -> Option<TraceId> {
    if !(s.len() == 32 || s.len() == 16) {
        return None;
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(format!("{s:0>32}"), &mut id).ok()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, id: u8, ts: u64) -> StoredSpan {
        StoredSpan {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_id: None,
            name: "pkg.Svc/Call".into(),
            kind: Some("SERVER"),
            service: format!("svc{trace}"),
            remote_service: None,
            timestamp: ts,
            duration: 10,
            error: false,
            tags: vec![("rpc.grpc.status_code".into(), "0".into())],
        }
    }

    #[test]
    fn the_oldest_spans_go_first_when_full() {
        let one = span(1, 1, 0).size();
        let mut store = TraceStore::new(StoreLimits { max_spans: 3, max_bytes: one * 10 });
        for i in 1..=4 {
            store.insert(span(i, i, u64::from(i)));
        }
        assert_eq!(store.spans(), 3);
        assert!(store.trace(&[1; 16]).is_none(), "the oldest trace was evicted");
        assert!(store.trace(&[4; 16]).is_some());

        let mut by_bytes = TraceStore::new(StoreLimits { max_spans: 100, max_bytes: one * 2 });
        for i in 1..=5 {
            by_bytes.insert(span(1, i, u64::from(i)));
        }
        assert_eq!(by_bytes.spans(), 2);
        assert!(by_bytes.bytes() <= one * 2);
        let kept: Vec<u8> = by_bytes.trace(&[1; 16]).unwrap().iter().map(|s| s.span_id[0]).collect();
        assert_eq!(kept, [4, 5]);
    }

    #[test]
    fn search_filters_by_service_name_duration_time_and_tags() {
        let mut store = TraceStore::new(StoreLimits { max_spans: 100, max_bytes: 1 << 20 });
        for i in 1..=5u8 {
            store.insert(span(i, i, u64::from(i) * 1_000_000));
        }
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query { end_ts: 10_000, lookback: 10_000, limit: 10, ..Default::default() };
            f(&mut q);
            store.search(&q).len()
        };
        assert_eq!(q(&|_| {}), 5);
        assert_eq!(q(&|q| q.service = Some("svc2".into())), 1);
        assert_eq!(q(&|q| q.span_name = Some("pkg.svc/call".into())), 5);
        assert_eq!(q(&|q| q.min_duration = Some(11)), 0);
        assert_eq!(q(&|q| q.limit = 2), 2);
        assert_eq!(q(&|q| (q.end_ts, q.lookback) = (5_000, 2_500)), 3, "spans at 3, 4 and 5 s");
        assert_eq!(q(&|q| q.annotations = vec![("rpc.grpc.status_code".into(), Some("0".into()))]), 5);
        assert_eq!(q(&|q| q.annotations = vec![("error".into(), None)]), 0);
        let newest = store.search(&Query { end_ts: 10_000, lookback: 10_000, limit: 1, ..Default::default() });
        assert_eq!(newest[0][0].trace_id, [5; 16]);
    }

    #[test]
    fn trace_ids_parse_in_both_lengths() {
        assert_eq!(parse_trace_id("0102030405060708090a0b0c0d0e0f10").unwrap()[15], 0x10);
        assert_eq!(parse_trace_id("0102030405060708").unwrap()[..8], [0; 8]);
        assert!(parse_trace_id("xyz").is_none());
        assert!(parse_trace_id("0102030405060708090a0b0c0d0e0f1").is_none());
    }
}
