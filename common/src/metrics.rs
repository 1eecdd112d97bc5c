//! One way to declare metric families, for every crate: [`Declare`] registers each family into a
//! process's registry and keeps a list of what it declared (name, kind, label keys), so that a
//! test can compare the code with the documentation ([`documented`], [`compare`]) and neither can
//! drift from the other.

use std::collections::BTreeMap;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// What a family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic counter.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One declared family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// The family name (`mesh_requests_total`).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its label keys, in order.
    pub labels: Vec<String>,
}

/// Declares families into one registry and remembers them.
#[derive(Debug)]
pub struct Declare {
    registry: Registry,
    declared: Vec<Declared>,
}

impl Declare {
    /// Declares into `registry` (a clone of the process's registry: they share their families).
    pub fn new(registry: &Registry) -> Self {
        Self { registry: registry.clone(), declared: Vec::new() }
    }

    fn note(&mut self, name: &str, kind: Kind, labels: &[&str]) {
        let labels = labels.iter().map(|l| (*l).to_string()).collect();
        self.declared.push(Declared { name: name.to_string(), kind, labels });
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> prometheus::Result<C> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// A counter with labels.
    pub fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
        self.note(name, Kind::Counter, labels);
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.note(name, Kind::Counter, &[]);
        self.register(IntCounter::new(name, help)?)
    }

    /// A gauge with labels.
    pub fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        self.note(name, Kind::Gauge, labels);
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.note(name, Kind::Gauge, &[]);
        self.register(IntGauge::new(name, help)?)
    }

    /// A floating-point gauge without labels.
    pub fn float_gauge(&mut self, name: &str, help: &str) -> prometheus::Result<prometheus::Gauge> {
        self.note(name, Kind::Gauge, &[]);
        self.register(prometheus::Gauge::new(name, help)?)
    }

    /// A floating-point counter with labels (seconds and the like).
    pub fn float_counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<prometheus::CounterVec> {
        self.note(name, Kind::Counter, labels);
        self.register(prometheus::CounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A floating-point counter without labels.
    pub fn float_counter(&mut self, name: &str, help: &str) -> prometheus::Result<prometheus::Counter> {
        self.note(name, Kind::Counter, &[]);
        self.register(prometheus::Counter::new(name, help)?)
    }

    /// A histogram with labels.
    pub fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> prometheus::Result<HistogramVec> {
        self.note(name, Kind::Histogram, labels);
        self.register(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?)
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
        self.note(name, Kind::Histogram, &[]);
        self.register(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?)
    }

    /// Everything declared so far.
    pub fn declared(&self) -> &[Declared] {
        &self.declared
    }
}

/// The families a Markdown document lists in the first table after the line containing `marker`:
/// family name to label keys. A row's first cell names one or more families (each in backticks);
/// its third cell their label keys (in backticks; values in parentheses are not keys; `same`
/// repeats the row above). Names not starting with `mesh_`, and patterns (`mesh_registry_*`), are
/// left out: they are documented elsewhere or not declared by the crate.
pub fn documented(markdown: &str, marker: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let after = markdown.split_once(marker).ok_or_else(|| format!("no line with {marker:?}"))?.1;
    let rows = after
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2); // header and separator
    let mut families = BTreeMap::new();
    let mut previous: Vec<String> = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').map(str::trim).collect();
        let [names, _kind, labels, ..] = cells.as_slice() else {
            return Err(format!("a metrics table row with fewer than three cells: {row}"));
        };
        let labels = if *labels == "same" { previous.clone() } else { backticked(&without_parentheses(labels)) };
        for name in backticked(names) {
            if name.starts_with("mesh_") && !name.contains('*') {
                families.insert(name, labels.clone());
            }
        }
        previous = labels;
    }
    if families.is_empty() {
        return Err(format!("no metrics table after {marker:?}"));
    }
    Ok(families)
}

/// Checks `declared` against `documented`: every declared `mesh_` family is documented with the
/// same label keys, and everything documented is declared. The error lists every difference.
pub fn compare(declared: &[Declared], documented: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
    let mut problems = Vec::new();
    for family in declared.iter().filter(|d| d.name.starts_with("mesh_")) {
        match documented.get(&family.name) {
            None => problems.push(format!("{} is declared but not documented", family.name)),
            Some(labels) if *labels != family.labels => problems.push(format!(
                "{} has labels {:?} in the code but {:?} in the documentation",
                family.name, family.labels, labels
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !declared.iter().any(|d| &d.name == name) {
            problems.push(format!("{name} is documented but not declared"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

fn without_parentheses(s: &str) -> String {
    let mut depth = 0usize;
    s.chars()
        .filter(|c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
### Metrics

| name | type | labels | meaning |
| --- | --- | --- | --- |
| `mesh_a_total` | counter | `x`, `y` (`one`, `two`) | a |
| `mesh_b_seconds` | histogram | same | b |
| `mesh_c`, `mesh_d_total` | gauge, counter | | c and d |
| `mesh_other_*`, `process_cpu_seconds_total` | | | elsewhere |

Next.
";

    #[test]
    fn reads_the_table_after_the_marker() {
        let docs = documented(DOC, "### Metrics").unwrap_or_default();
        let keys: Vec<_> = docs.keys().cloned().collect();
        assert_eq!(keys, ["mesh_a_total", "mesh_b_seconds", "mesh_c", "mesh_d_total"]);
        assert_eq!(docs["mesh_a_total"], ["x", "y"], "values in parentheses are not keys");
        assert_eq!(docs["mesh_b_seconds"], ["x", "y"], "`same` repeats the row above");
        assert!(docs["mesh_c"].is_empty());
        assert!(documented(DOC, "### Nothing").is_err());
    }

    #[test]
    fn code_and_documentation_must_agree() -> prometheus::Result<()> {
        let registry = Registry::new();
        let mut d = Declare::new(&registry);
        d.counter_vec("mesh_a_total", "a", &["x", "y"])?;
        d.histogram_vec("mesh_b_seconds", "b", &["x", "y"], vec![1.0])?;
        d.gauge("mesh_c", "c")?;
        let docs = documented(DOC, "### Metrics").unwrap_or_default();
        let err = compare(d.declared(), &docs).err().unwrap_or_default();
        assert_eq!(err, "mesh_d_total is documented but not declared");
        d.counter("mesh_d_total", "d")?;
        assert_eq!(compare(d.declared(), &docs), Ok(()));
        d.counter_vec("mesh_e_total", "e", &["z"])?;
        assert!(compare(d.declared(), &docs).is_err_and(|e| e.contains("mesh_e_total is declared but not documented")));
        let mut wrong = Declare::new(&Registry::new());
        wrong.counter_vec("mesh_a_total", "a", &["x"])?;
        assert!(compare(wrong.declared(), &docs).is_err_and(|e| e.contains("mesh_a_total has labels")));
        Ok(())
    }
}
