//! What happens to an OTLP export once received: spans go to the trace store and the service
//! graph, metric points to the series store, and both, if configured, on to the next hop. The
//! stores sit behind short-held locks; nothing here waits on the network.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::forward::{Forwardable, Forwarder};
use crate::graph::ServiceGraph;
use crate::health::Health;
use crate::series::{Ingested, SeriesStore, points};
use crate::traces::{StoreLimits, StoredSpan, TraceStore};

/// The collector's state.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) traces: Mutex<TraceStore>,
    pub(crate) series: Mutex<SeriesStore>,
    graph: Mutex<ServiceGraph>,
    pub(crate) health: Health,
    forward: Option<Forwarder>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipeline {
    pub(crate) fn new(
        store: StoreLimits,
        max_series: usize,
        series_ttl: Duration,
        graph: ServiceGraph,
        health: Health,
        forward: Option<Forwarder>,
    ) -> Self {
        Self {
            traces: Mutex::new(TraceStore::new(store)),
            series: Mutex::new(SeriesStore::new(max_series, series_ttl)),
            graph: Mutex::new(graph),
            health,
            forward,
        }
    }

    /// Takes an export of spans; returns how many were rejected (invalid or too large).
    pub(crate) fn accept_spans(&self, request: ExportTraceServiceRequest) -> u64 {
        let now = Instant::now();
        let mut converted = Vec::new();
        let mut received = 0u64;
        let mut invalid = 0u64;
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().map_or(&[][..], |r| r.attributes.as_slice());
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                received += 1;
                match StoredSpan::from_otlp(resource, span) {
                    Some(s) => converted.push(s),
                    None => invalid += 1,
                }
            }
        }
        let h = &self.health;
        h.received.with_label_values(&["spans"]).inc_by(received);
        if invalid > 0 {
            h.dropped.with_label_values(&["spans", "invalid"]).inc_by(invalid);
        }
        {
            let mut graph = lock(&self.graph);
            for span in &converted {
                graph.observe(span, now);
            }
        }
        let mut too_large = 0u64;
        {
            let mut traces = lock(&self.traces);
            for span in converted {
                match traces.insert(span) {
                    Some(evicted) => h.evicted.inc_by(evicted as u64),
                    None => too_large += 1,
                }
            }
            h.stored.with_label_values(&["spans"]).set(gauge(traces.spans()));
            h.stored.with_label_values(&["traces"]).set(gauge(traces.traces()));
            h.stored.with_label_values(&["bytes"]).set(gauge(traces.bytes()));
        }
        if too_large > 0 {
            h.dropped.with_label_values(&["spans", "too_large"]).inc_by(too_large);
        }
        if let Some(forward) = &self.forward {
            forward.forward(Forwardable::Traces(request, received));
        }
        invalid + too_large
    }

    /// Takes an export of metrics; returns how many data points were rejected.
    pub(crate) fn accept_metrics(&self, request: ExportMetricsServiceRequest) -> u64 {
        let now = Instant::now();
        let mut out = Ingested::default();
        let mut received = 0u64;
        {
            let mut series = lock(&self.series);
            for rm in &request.resource_metrics {
                let resource = rm.resource.as_ref().map_or(&[][..], |r| r.attributes.as_slice());
                for sm in &rm.scope_metrics {
                    received += sm.metrics.iter().map(points).sum::<u64>();
                    series.ingest(resource, &sm.metrics, now, &mut out);
                }
            }
            self.health.series.set(gauge(series.len()));
        }
        let h = &self.health;
        h.received.with_label_values(&["metric_points"]).inc_by(received);
        let mut rejected = 0;
        for (why, n) in &out.rejected {
            h.dropped.with_label_values(&["metric_points", why.as_str()]).inc_by(*n);
            rejected += n;
        }
        if let Some(forward) = &self.forward {
            forward.forward(Forwardable::Metrics(request, received));
        }
        rejected
    }

    /// Periodic upkeep: expire quiet series and unpaired graph spans.
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        let mut series = lock(&self.series);
        let gone = series.expire(now);
        self.health.series_expired.inc_by(gone as u64);
        self.health.series.set(gauge(series.len()));
        drop(series);
        lock(&self.graph).expire(now);
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
