//! Metrics received over OTLP, kept as Prometheus series and rendered for scraping.
//!
//! Each series is one metric name and label set; the labels are the data point's attributes
//! plus `service` and `instance` from the sender's resource (`service.name`,
//! `service.instance.id`). Senders' series are never summed together, so one sender restarting
//! cannot make another's counts jump.
//!
//! Counter semantics survive sender restarts: a cumulative counter (or histogram) whose start
//! time moves forward has restarted from zero, and what it had counted is carried in an offset,
//! so the exposed value never goes down and `rate()` sees no reset. A point from the same start
//! with a lower value is out of order and ignored. Delta points are added up. A series not
//! updated for the TTL (its sender went away) is removed, and Prometheus marks it stale.
//!
//! Bounded: at most `max_series` series in all; points beyond are dropped and counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{self as otlp, AggregationTemporality, metric::Data, number_data_point};
use prometheus::proto::{self as prom, MetricType};

/// A sorted label set.
pub(crate) type Labels = Vec<(String, String)>;

/// Why a data point was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Rejected {
    /// The series limit was reached.
    SeriesLimit,
    /// The name is already a different metric type.
    TypeConflict,
    /// Exponential histograms and summaries are not converted.
    Unsupported,
    /// No value, a bad name, or a name the collector reserves for itself.
    Invalid,
}

impl From<Rejected> for crate::health::Dropped {
    fn from(why: Rejected) -> Self {
        match why {
            Rejected::SeriesLimit => Self::SeriesLimit,
            Rejected::TypeConflict => Self::TypeConflict,
            Rejected::Unsupported => Self::Unsupported,
            Rejected::Invalid => Self::Invalid,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Hist {
    /// Per-bucket counts (OTLP layout: one more than the bounds).
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn add(&mut self, other: &Hist) {
        if self.buckets.len() != other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

#[derive(Debug)]
enum Value {
    Counter { offset: f64, last: f64, start: u64 },
    Gauge(f64),
    Histogram { bounds: Vec<f64>, offset: Hist, last: Hist, start: u64 },
}

#[derive(Debug)]
struct Series {
    value: Value,
    seen: Instant,
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    help: String,
    series: HashMap<Labels, Series>,
}

/// Every series received, bounded and expiring.
#[derive(Debug)]
pub(crate) struct SeriesStore {
    families: HashMap<String, Family>,
    count: usize,
    max_series: usize,
    ttl: Duration,
    /// Names the store refuses (the collector's own metrics).
    reserved_prefix: &'static str,
}

/// What one OTLP export did to the store.
#[derive(Debug, Default)]
pub(crate) struct Ingested {
    pub(crate) accepted: u64,
    pub(crate) rejected: HashMap<Rejected, u64>,
}

impl SeriesStore {
    pub(crate) fn new(max_series: usize, ttl: Duration) -> Self {
        Self { families: HashMap::new(), count: 0, max_series, ttl, reserved_prefix: "mesh_collector_" }
    }

    /// Series held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Applies one resource's metrics.
    pub(crate) fn ingest(&mut self, resource: &[KeyValue], metrics: &[otlp::Metric], now: Instant, out: &mut Ingested) {
        let base = resource_labels(resource);
        for metric in metrics {
            self.ingest_metric(&base, metric, now, out);
        }
    }

    fn ingest_metric(&mut self, base: &Labels, metric: &otlp::Metric, now: Instant, out: &mut Ingested) {
        let points = points(metric);
        let mut reject = |why: Rejected| *out.rejected.entry(why).or_default() += points;
        let Some(data) = &metric.data else {
            return reject(Rejected::Invalid);
        };
        let (kind, name) = match data {
            Data::Sum(s) if s.is_monotonic => (Kind::Counter, counter_name(&metric.name, &metric.unit)),
            Data::Sum(_) | Data::Gauge(_) => (Kind::Gauge, base_name(&metric.name, &metric.unit)),
            Data::Histogram(_) => (Kind::Histogram, base_name(&metric.name, &metric.unit)),
            Data::ExponentialHistogram(_) | Data::Summary(_) => return reject(Rejected::Unsupported),
        };
        let Some(name) = name.filter(|n| !n.starts_with(self.reserved_prefix)) else {
            return reject(Rejected::Invalid);
        };
        let family = self.families.entry(name).or_insert_with(|| Family {
            kind,
            help: metric.description.chars().take(512).collect(),
            series: HashMap::new(),
        });
        if family.kind != kind {
            return reject(Rejected::TypeConflict);
        }
        let mut room = self.max_series.saturating_sub(self.count);
        let mut added = 0;
        let mut point = |attributes: &[KeyValue], update: &mut dyn FnMut(Option<&mut Value>) -> Option<Value>| {
            let labels = point_labels(base, attributes);
            match family.series.get_mut(&labels) {
                Some(series) => {
                    update(Some(&mut series.value));
                    series.seen = now;
                    out.accepted += 1;
                }
                None if room == 0 => *out.rejected.entry(Rejected::SeriesLimit).or_default() += 1,
                None => match update(None) {
                    Some(value) => {
                        family.series.insert(labels, Series { value, seen: now });
                        room -= 1;
                        added += 1;
                        out.accepted += 1;
                    }
                    None => *out.rejected.entry(Rejected::Invalid).or_default() += 1,
                },
            }
        };
        match data {
            Data::Sum(s) => {
                let delta = s.aggregation_temporality == AggregationTemporality::Delta as i32;
                for p in &s.data_points {
                    let Some(v) = number(p) else { continue };
                    let start = p.start_time_unix_nano;
                    point(&p.attributes, &mut |current| match (kind, current) {
                        (Kind::Counter, Some(value)) => {
                            counter_update(value, v, start, delta);
                            None
                        }
                        (Kind::Counter, None) => Some(Value::Counter { offset: 0.0, last: v, start }),
                        (_, Some(Value::Gauge(g))) => {
                            *g = if delta { *g + v } else { v };
                            None
                        }
                        (_, Some(_)) => None,
                        (_, None) => Some(Value::Gauge(v)),
                    });
                }
            }
            Data::Gauge(g) => {
                for p in &g.data_points {
                    let Some(v) = number(p) else { continue };
                    point(&p.attributes, &mut |current| match current {
                        Some(Value::Gauge(g)) => {
                            *g = v;
                            None
                        }
                        Some(_) => None,
                        None => Some(Value::Gauge(v)),
                    });
                }
            }
            Data::Histogram(h) => {
                let delta = h.aggregation_temporality == AggregationTemporality::Delta as i32;
                for p in &h.data_points {
                    if p.bucket_counts.len() != p.explicit_bounds.len() + 1 && !p.bucket_counts.is_empty() {
                        continue;
                    }
                    let hist = Hist {
                        buckets: if p.bucket_counts.is_empty() { vec![p.count] } else { p.bucket_counts.clone() },
                        sum: p.sum.unwrap_or(0.0),
                        count: p.count,
                    };
                    let bounds = if p.bucket_counts.is_empty() { Vec::new() } else { p.explicit_bounds.clone() };
                    let start = p.start_time_unix_nano;
                    point(&p.attributes, &mut |current| match current {
                        Some(value) => {
                            histogram_update(value, &bounds, &hist, start, delta);
                            None
                        }
                        None => Some(Value::Histogram {
                            bounds: bounds.clone(),
                            offset: Hist::default(),
                            last: hist.clone(),
                            start,
                        }),
                    });
                }
            }
            _ => {}
        }
        self.count += added;
    }

    /// Removes series not updated within the TTL; returns how many went.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.ttl;
        let mut removed = 0;
        self.families.retain(|_, family| {
            let before = family.series.len();
            family.series.retain(|_, s| now.saturating_duration_since(s.seen) < ttl);
            removed += before - family.series.len();
            !family.series.is_empty()
        });
        self.count -= removed;
        removed
    }

    /// Every series as Prometheus metric families, sorted by name.
    pub(crate) fn families(&self) -> Vec<prom::MetricFamily> {
        let mut names: Vec<&String> = self.families.keys().collect();
        names.sort();
        names.into_iter().map(|name| render(name, &self.families[name])).collect()
    }
}

fn counter_update(value: &mut Value, v: f64, start: u64, delta: bool) {
    let Value::Counter { offset, last, start: known } = value else { return };
    if delta {
        if v >= 0.0 {
            *last += v;
        }
        return;
    }
    if start > *known || (start == 0 && v < *last) {
        // The sender restarted: keep what it had counted.
        *offset += *last;
    } else if start < *known || v < *last {
        // A late point from before, or out of order: the newer value stands.
        return;
    }
    *last = v;
    *known = start;
}

fn histogram_update(value: &mut Value, bounds: &[f64], hist: &Hist, start: u64, delta: bool) {
    let Value::Histogram { bounds: known_bounds, offset, last, start: known } = value else { return };
    if known_bounds.as_slice() != bounds {
        // New bucket layout: counts cannot be carried across; start over (a visible reset).
        *known_bounds = bounds.to_vec();
        *offset = Hist::default();
        *last = hist.clone();
        *known = start;
        return;
    }
    if delta {
        last.add(hist);
        return;
    }
    if start > *known || (start == 0 && hist.count < last.count) {
        offset.add(last);
    } else if start < *known || hist.count < last.count {
        return;
    }
    *last = hist.clone();
    *known = start;
}

fn number(p: &otlp::NumberDataPoint) -> Option<f64> {
    match p.value? {
        number_data_point::Value::AsDouble(v) => Some(v).filter(|v| !v.is_nan()),
        number_data_point::Value::AsInt(v) => Some(v as f64),
    }
}

/// A Prometheus-valid metric name: invalid characters become `_`.
pub(crate) fn sanitize_name(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > 256 {
        return None;
    }
    let mut out: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    Some(out)
}

/// A label name: like a metric name, without `:`, never starting with `__`.
fn sanitize_label(raw: &str) -> String {
    let mut out: String =
        raw.chars().take(128).map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) || out.starts_with("__") {
        out.insert_str(0, "a_");
    }
    out
}

/// The unit suffix Prometheus naming expects, for the common OTLP units.
fn unit_suffix(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "%" => "percent",
        _ => return None,
    })
}

fn base_name(name: &str, unit: &str) -> Option<String> {
    let mut name = sanitize_name(name)?;
    if let Some(suffix) = unit_suffix(unit)
        && !name.ends_with(suffix)
        && !name.contains(&format!("_{suffix}_"))
    {
        name.push('_');
        name.push_str(suffix);
    }
    Some(name)
}

fn counter_name(name: &str, unit: &str) -> Option<String> {
    let base = sanitize_name(name)?;
    let stem = base.strip_suffix("_total").unwrap_or(&base);
    let mut name = base_name(stem, unit)?;
    name.push_str("_total");
    Some(name)
}

/// A string form of any attribute value, bounded.
pub(crate) fn value_string(value: Option<&AnyValue>) -> String {
    let s = match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| value_string(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let items: Vec<String> =
                kv.values.iter().map(|kv| format!("{}={}", kv.key, value_string(kv.value.as_ref()))).collect();
            format!("{{{}}}", items.join(","))
        }
        // Dictionary-encoded strings (profiles) and absent values have no text here.
        _ => String::new(),
    };
    if s.len() > 1024 { truncate(&s, 1024) } else { s }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

/// The data points in a metric (an empty one counts as one, refused as invalid).
pub(crate) fn points(metric: &otlp::Metric) -> u64 {
    (match &metric.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 1,
    }) as u64
}

/// A resource attribute's value, if it is there.
pub(crate) fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
}

fn resource_labels(resource: &[KeyValue]) -> Labels {
    let mut labels = Vec::with_capacity(2);
    for (key, label) in [("service.name", "service"), ("service.instance.id", "instance")] {
        if let Some(v) = attribute(resource, key) {
            labels.push((label.to_string(), value_string(Some(v))));
        }
    }
    labels
}

/// Most attributes turned into labels per point; the rest are left out.
const MAX_POINT_LABELS: usize = 32;

fn point_labels(base: &Labels, attributes: &[KeyValue]) -> Labels {
    let mut labels = base.clone();
    for kv in attributes.iter().take(MAX_POINT_LABELS) {
        let mut name = sanitize_label(&kv.key);
        if name == "service" || name == "instance" {
            name.insert_str(0, "exported_");
        }
        if labels.iter().any(|(n, _)| *n == name) {
            continue;
        }
        labels.push((name, value_string(kv.value.as_ref())));
    }
    labels.sort();
    labels
}

fn render(name: &str, family: &Family) -> prom::MetricFamily {
    let mut out = prom::MetricFamily::default();
    out.set_name(name.to_string());
    out.set_help(if family.help.is_empty() { name.to_string() } else { family.help.clone() });
    out.set_field_type(match family.kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    let mut series: Vec<(&Labels, &Series)> = family.series.iter().collect();
    series.sort_by(|a, b| a.0.cmp(b.0));
    for (labels, s) in series {
        let mut m = prom::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(n, v)| {
                    let mut l = prom::LabelPair::default();
                    l.set_name(n.clone());
                    l.set_value(v.clone());
                    l
                })
                .collect(),
        );
        match &s.value {
            Value::Counter { offset, last, .. } => {
                let mut c = prom::Counter::default();
                c.set_value(offset + last);
                m.set_counter(c);
            }
            Value::Gauge(v) => {
                let mut g = prom::Gauge::default();
                g.set_value(*v);
                m.set_gauge(g);
            }
            Value::Histogram { bounds, offset, last, .. } => {
                let mut total = offset.clone();
                total.add(last);
                let mut h = prom::Histogram::default();
                h.set_sample_count(total.count);
                h.set_sample_sum(total.sum);
                let mut cumulative = 0;
                let buckets = bounds
                    .iter()
                    .zip(&total.buckets)
                    .map(|(bound, n)| {
                        cumulative += n;
                        let mut b = prom::Bucket::default();
                        b.set_upper_bound(*bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                h.set_bucket(buckets);
                m.set_histogram(h);
            }
        }
        out.mut_metric().push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn counter(name: &str, value: f64, start: u64) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("method", "/a/b")],
                    start_time_unix_nano: start,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn exposed(store: &SeriesStore, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        store
            .families()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| {
                let labels = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                let v = m.get_counter().get_value() + m.get_gauge().get_value();
                (labels, v)
            })
            .collect()
    }

    #[test]
    fn counters_carry_over_a_sender_restart_and_ignore_stale_points() {
        let resource = [kv("service.name", "orders"), kv("service.instance.id", "orders-1")];
        let mut store = SeriesStore::new(100, Duration::from_secs(60));
        let now = Instant::now();
        let mut out = Ingested::default();
        for (value, start) in [(5.0, 100), (8.0, 100), (7.0, 100), (2.0, 200), (1.0, 100), (3.0, 200)] {
            store.ingest(&resource, &[counter("requests", value, start)], now, &mut out);
        }
        let series = exposed(&store, "requests_total");
        assert_eq!(series.len(), 1);
        let labels: Vec<&str> = series[0].0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(labels, ["instance", "method", "service"]);
        // 8 before the restart, then 3 since: never back down to 2.
        assert_eq!(series[0].1, 11.0);
    }

    #[test]
    fn histograms_render_cumulative_buckets_and_survive_restarts() {
        let hist = |count: u64, buckets: Vec<u64>, start: u64| Metric {
            name: "lat".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    start_time_unix_nano: start,
                    count,
                    sum: Some(count as f64),
                    bucket_counts: buckets,
                    explicit_bounds: vec![0.1, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        let mut store = SeriesStore::new(100, Duration::from_secs(60));
        let now = Instant::now();
        let mut out = Ingested::default();
        store.ingest(&[], &[hist(4, vec![1, 2, 1], 1)], now, &mut out);
        store.ingest(&[], &[hist(1, vec![1, 0, 0], 2)], now, &mut out);
        let families = store.families();
        assert_eq!(families[0].name(), "lat_seconds");
        let h = families[0].get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 5);
        let counts: Vec<u64> = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
        assert_eq!(counts, [2, 4]);
    }

    #[test]
    fn the_series_limit_holds_and_stale_series_expire() {
        let mut store = SeriesStore::new(2, Duration::from_secs(10));
        let now = Instant::now();
        let mut out = Ingested::default();
        for i in 0..5 {
            store.ingest(&[kv("service.name", &format!("s{i}"))], &[counter("c_total", 1.0, 1)], now, &mut out);
        }
        assert_eq!(store.len(), 2);
        assert_eq!(out.accepted, 2);
        assert_eq!(out.rejected[&Rejected::SeriesLimit], 3);
        assert_eq!(store.expire(now + Duration::from_secs(5)), 0);
        assert_eq!(store.expire(now + Duration::from_secs(11)), 2);
        assert_eq!(store.len(), 0);
        assert!(store.families().is_empty());
    }

    #[test]
    fn names_follow_prometheus_conventions_and_conflicts_are_refused() {
        assert_eq!(counter_name("http.server.requests", "").as_deref(), Some("http_server_requests_total"));
        assert_eq!(counter_name("mesh_requests_total", "").as_deref(), Some("mesh_requests_total"));
        assert_eq!(counter_name("io", "By").as_deref(), Some("io_bytes_total"));
        assert_eq!(base_name("9lives", "ms").as_deref(), Some("_9lives_milliseconds"));
        assert_eq!(base_name("mesh_request_duration_seconds", "s").as_deref(), Some("mesh_request_duration_seconds"));
        let mut store = SeriesStore::new(10, Duration::from_secs(10));
        let mut out = Ingested::default();
        let gauge = Metric {
            name: "requests_total".into(),
            data: Some(Data::Gauge(opentelemetry_proto::tonic::metrics::v1::Gauge {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsInt(3)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        store.ingest(&[], &[counter("requests", 1.0, 1), gauge], Instant::now(), &mut out);
        assert_eq!(out.rejected[&Rejected::TypeConflict], 1);
        store.ingest(&[], &[counter("mesh_collector_received", 1.0, 1)], Instant::now(), &mut out);
        assert_eq!(out.rejected[&Rejected::Invalid], 1, "the collector's own names are reserved");
    }
}
