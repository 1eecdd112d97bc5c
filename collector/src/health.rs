//! The collector's own metrics: what it received, dropped, stored, evicted and forwarded, by
//! signal. They are served beside the mesh's metrics on `/metrics`. The families are private to
//! this module: code elsewhere says what happened through [`Health`]'s methods, with label values
//! from the enums here.

use mesh_common::metrics::Declare;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// What kind of telemetry (`signal` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Spans.
    Spans,
    /// Metric data points.
    MetricPoints,
}

impl Signal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Spans => "spans",
            Self::MetricPoints => "metric_points",
        }
    }
}

/// Why telemetry was dropped (`reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Malformed: bad ids, no value, a bad or reserved name.
    Invalid,
    /// Over the trace store's size bound.
    TooLarge,
    /// The series limit was reached.
    SeriesLimit,
    /// The name is already a different metric type.
    TypeConflict,
    /// Exponential histograms and summaries are not converted.
    Unsupported,
    /// The forwarding queue was full.
    ForwardQueueFull,
    /// The next OTLP endpoint did not take it.
    ForwardFailed,
}

impl Dropped {
    fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::SeriesLimit => "series_limit",
            Self::TypeConflict => "type_conflict",
            Self::Unsupported => "unsupported",
            Self::ForwardQueueFull => "forward_queue_full",
            Self::ForwardFailed => "forward_failed",
        }
    }
}

/// Health counters and gauges.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    received: IntCounterVec,
    dropped: IntCounterVec,
    forwarded: IntCounterVec,
    stored: IntGaugeVec,
    evicted: IntCounter,
    series: IntGauge,
    series_expired: IntCounter,
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Health {
    pub(crate) fn declare(d: &mut Declare) -> prometheus::Result<Self> {
        let health = Self {
            received: d.counter_vec(
                "mesh_collector_received_total",
                "Telemetry received over OTLP, by signal (spans, metric_points).",
                &["signal"],
            )?,
            dropped: d.counter_vec(
                "mesh_collector_dropped_total",
                "Telemetry dropped, by signal and reason (invalid, series_limit, type_conflict, unsupported, too_large, forward_queue_full, forward_failed).",
                &["signal", "reason"],
            )?,
            forwarded: d.counter_vec(
                "mesh_collector_forwarded_total",
                "Telemetry forwarded to the next OTLP endpoint, by signal.",
                &["signal"],
            )?,
            stored: d.gauge_vec(
                "mesh_collector_stored",
                "What the trace store holds, by unit (spans, traces, bytes).",
                &["unit"],
            )?,
            evicted: d.counter(
                "mesh_collector_evicted_spans_total",
                "Spans evicted, oldest first, to keep the trace store within its bounds.",
            )?,
            series: d.gauge("mesh_collector_series", "Metric series held for Prometheus.")?,
            series_expired: d.counter(
                "mesh_collector_series_expired_total",
                "Metric series removed because their sender stopped sending them.",
            )?,
        };
        for signal in [Signal::Spans, Signal::MetricPoints] {
            health.received.with_label_values(&[signal.as_str()]).reset();
            health.forwarded.with_label_values(&[signal.as_str()]).reset();
        }
        Ok(health)
    }

    /// `n` items arrived.
    pub(crate) fn received(&self, signal: Signal, n: u64) {
        self.received.with_label_values(&[signal.as_str()]).inc_by(n);
    }

    /// `n` items were dropped.
    pub(crate) fn dropped(&self, signal: Signal, why: Dropped, n: u64) {
        if n > 0 {
            self.dropped.with_label_values(&[signal.as_str(), why.as_str()]).inc_by(n);
        }
    }

    /// `n` items reached the next OTLP endpoint.
    pub(crate) fn forwarded(&self, signal: Signal, n: u64) {
        self.forwarded.with_label_values(&[signal.as_str()]).inc_by(n);
    }

    /// What the trace store holds now, and how many spans it just evicted.
    pub(crate) fn stored(&self, spans: usize, traces: usize, bytes: usize, evicted: usize) {
        self.stored.with_label_values(&["spans"]).set(gauge(spans));
        self.stored.with_label_values(&["traces"]).set(gauge(traces));
        self.stored.with_label_values(&["bytes"]).set(gauge(bytes));
        self.evicted.inc_by(evicted as u64);
    }

    /// The series store holds `n` series, after `expired` went quiet and were removed.
    pub(crate) fn series(&self, n: usize, expired: usize) {
        self.series.set(gauge(n));
        self.series_expired.inc_by(expired as u64);
    }
}
