//! What happens to an OTLP export once received: spans go to the trace store and the service
//! graph, metric points to the series store, and both, if configured, on to the next hop. The
//! stores sit behind short-held locks; nothing here waits on the network.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::forward::{Forwardable, Forwarder};
use crate::graph::ServiceGraph;
use crate::health::{Dropped, Health, Signal};
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
        h.received(Signal::Spans, received);
        h.dropped(Signal::Spans, Dropped::Invalid, invalid);
        {
            let mut graph = self.graph.lock();
            for span in &converted {
                graph.observe(span, now);
            }
        }
        let (mut too_large, mut evicted) = (0u64, 0usize);
        {
            let mut traces = self.traces.lock();
            for span in converted {
                match traces.insert(span) {
                    Some(n) => evicted += n,
                    None => too_large += 1,
                }
            }
            h.stored(traces.spans(), traces.traces(), traces.bytes(), evicted);
        }
        h.dropped(Signal::Spans, Dropped::TooLarge, too_large);
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
            let mut series = self.series.lock();
            for rm in &request.resource_metrics {
                let resource = rm.resource.as_ref().map_or(&[][..], |r| r.attributes.as_slice());
                for sm in &rm.scope_metrics {
                    received += sm.metrics.iter().map(points).sum::<u64>();
                    series.ingest(resource, &sm.metrics, now, &mut out);
                }
            }
            self.health.series(series.len(), 0);
        }
        let h = &self.health;
        h.received(Signal::MetricPoints, received);
        let mut rejected = 0;
        for (why, n) in &out.rejected {
            h.dropped(Signal::MetricPoints, Dropped::from(*why), *n);
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
        let mut series = self.series.lock();
        let gone = series.expire(now);
        self.health.series(series.len(), gone);
        drop(series);
        self.graph.lock().expire(now);
    }
}
