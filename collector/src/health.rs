//! The collector's own metrics: what it received, dropped, stored, evicted and forwarded, by
//! signal. They are served beside the mesh's metrics on `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Health counters and gauges.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// Items received, by signal (`spans`, `metric_points`).
    pub(crate) received: IntCounterVec,
    /// Items dropped, by signal and reason.
    pub(crate) dropped: IntCounterVec,
    /// Items forwarded, by signal.
    pub(crate) forwarded: IntCounterVec,
    /// Spans, traces and bytes in the store.
    pub(crate) stored: IntGaugeVec,
    /// Spans evicted from the store to stay under its bounds.
    pub(crate) evicted: IntCounter,
    /// Metric series held.
    pub(crate) series: IntGauge,
    /// Series removed after their sender went quiet.
    pub(crate) series_expired: IntCounter,
}

impl Health {
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let health = Self {
            received: counter(
                "mesh_collector_received_total",
                "Telemetry received over OTLP, by signal (spans, metric_points).",
                &["signal"],
            )?,
            dropped: counter(
                "mesh_collector_dropped_total",
                "Telemetry dropped, by signal and reason (invalid, series_limit, type_conflict, unsupported, too_large, forward_queue_full, forward_failed).",
                &["signal", "reason"],
            )?,
            forwarded: counter(
                "mesh_collector_forwarded_total",
                "Telemetry forwarded to the next OTLP endpoint, by signal.",
                &["signal"],
            )?,
            stored: {
                let g = IntGaugeVec::new(
                    Opts::new("mesh_collector_stored", "What the trace store holds, by unit (spans, traces, bytes)."),
                    &["unit"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            evicted: {
                let c = IntCounter::new(
                    "mesh_collector_evicted_spans_total",
                    "Spans evicted, oldest first, to keep the trace store within its bounds.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            series: {
                let g = IntGauge::new("mesh_collector_series", "Metric series held for Prometheus.")?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            series_expired: {
                let c = IntCounter::new(
                    "mesh_collector_series_expired_total",
                    "Metric series removed because their sender stopped sending them.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
        };
        for signal in ["spans", "metric_points"] {
            health.received.with_label_values(&[signal]).reset();
            health.forwarded.with_label_values(&[signal]).reset();
        }
        Ok(health)
    }
}
