//! The service graph, derived from spans: every call from one service to another counted once,
//! with its failures and latency, as `mesh_service_graph_*` series that a node graph can draw.
//!
//! An edge comes from a CLIENT span that names its peer (`peer.service`, as the mesh's proxies
//! set), or else from pairing a CLIENT span with the SERVER span whose parent it is (any
//! OpenTelemetry SDK). A SERVER span with no parent is a call from outside: an edge from `user`.
//! Unpaired spans wait a bounded time in bounded maps; what expires or overflows is counted.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mesh_common::metrics::Declare;
use prometheus::{HistogramVec, IntCounter, IntCounterVec};

use crate::traces::StoredSpan;

/// Most distinct edges; calls on further edges are counted in `mesh_collector_graph_dropped_total`.
const MAX_EDGES: usize = 10_000;
/// Most spans waiting for their pair, per side.
const MAX_PENDING: usize = 50_000;
/// How long a span waits for its pair.
const PAIR_WAIT: Duration = Duration::from_secs(30);

struct Waiting {
    service: String,
    failed: bool,
    seconds: f64,
    since: Instant,
}

/// Builds the service graph.
pub(crate) struct ServiceGraph {
    requests: IntCounterVec,
    failed: IntCounterVec,
    duration: HistogramVec,
    dropped: IntCounter,
    unpaired: IntCounter,
    edges: HashSet<(String, String)>,
    /// CLIENT spans without a named peer, by span id, waiting for their SERVER child.
    clients: HashMap<[u8; 8], Waiting>,
    /// SERVER spans, by parent span id, waiting for their CLIENT parent.
    servers: HashMap<[u8; 8], Waiting>,
    /// CLIENT spans already counted from `peer.service`, whose SERVER child is to be ignored.
    counted: HashMap<[u8; 8], Instant>,
}

impl std::fmt::Debug for ServiceGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceGraph").field("edges", &self.edges.len()).finish_non_exhaustive()
    }
}

impl ServiceGraph {
    pub(crate) fn declare(d: &mut Declare) -> prometheus::Result<Self> {
        let labels = ["client", "server"];
        let requests =
            d.counter_vec("mesh_service_graph_requests_total", "Calls between two services, from spans.", &labels)?;
        let failed = d.counter_vec(
            "mesh_service_graph_request_failed_total",
            "Failed calls between two services, from spans.",
            &labels,
        )?;
        let duration = d.histogram_vec(
            "mesh_service_graph_request_duration_seconds",
            "Latency of calls between two services, as the caller saw it.",
            &labels,
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?;
        let dropped = d.counter(
            "mesh_collector_graph_dropped_total",
            "Calls not added to the service graph because the edge limit was reached.",
        )?;
        let unpaired = d.counter(
            "mesh_collector_graph_unpaired_total",
            "Spans that found no pair for the service graph in time (or overflowed the wait).",
        )?;
        Ok(Self {
            requests,
            failed,
            duration,
            dropped,
            unpaired,
            edges: HashSet::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            counted: HashMap::new(),
        })
    }

    fn edge(&mut self, client: &str, server: &str, failed: bool, seconds: f64) {
        let key = (client.to_string(), server.to_string());
        if !self.edges.contains(&key) {
            if self.edges.len() >= MAX_EDGES {
                self.dropped.inc();
                return;
            }
            self.edges.insert(key);
        }
        let labels = [client, server];
        self.requests.with_label_values(&labels).inc();
        if failed {
            self.failed.with_label_values(&labels).inc();
        }
        self.duration.with_label_values(&labels).observe(seconds);
    }

    /// Takes one span into account.
    pub(crate) fn observe(&mut self, span: &StoredSpan, now: Instant) {
        let seconds = span.duration as f64 / 1e6;
        let waiting = || Waiting { service: span.service.clone(), failed: span.error, seconds, since: now };
        match span.kind {
            Some("CLIENT") => {
                if let Some(server) = &span.remote_service {
                    self.edge(&span.service, server, span.error, seconds);
                    self.servers.remove(&span.span_id);
                    if self.counted.len() < MAX_PENDING {
                        self.counted.insert(span.span_id, now);
                    }
                } else if let Some(server) = self.servers.remove(&span.span_id) {
                    self.edge(&span.service, &server.service, span.error || server.failed, seconds);
                } else if self.clients.len() < MAX_PENDING {
                    self.clients.insert(span.span_id, waiting());
                } else {
                    self.unpaired.inc();
                }
            }
            Some("SERVER") => match span.parent_id {
                None => self.edge("user", &span.service, span.error, seconds),
                Some(parent) => {
                    if self.counted.remove(&parent).is_some() {
                        return;
                    }
                    if let Some(client) = self.clients.remove(&parent) {
                        self.edge(&client.service, &span.service, client.failed || span.error, client.seconds);
                    } else if self.servers.len() < MAX_PENDING {
                        self.servers.insert(parent, waiting());
                    } else {
                        self.unpaired.inc();
                    }
                }
            },
            _ => {}
        }
    }

    /// Drops spans that waited too long for their pair.
    pub(crate) fn expire(&mut self, now: Instant) {
        let mut gone = 0;
        for map in [&mut self.clients, &mut self.servers] {
            let before = map.len();
            map.retain(|_, w| now.saturating_duration_since(w.since) < PAIR_WAIT);
            gone += before - map.len();
        }
        self.counted.retain(|_, since| now.saturating_duration_since(*since) < PAIR_WAIT);
        // A server span whose parent is not a client span (an in-process parent) is normal;
        // only waiting client spans mean a missing pair.
        self.unpaired.inc_by(gone as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, kind: &'static str, id: u8, parent: Option<u8>, peer: Option<&str>) -> StoredSpan {
        StoredSpan {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_id: parent.map(|p| [p; 8]),
            name: "x".into(),
            kind: Some(kind),
            service: service.into(),
            remote_service: peer.map(str::to_string),
            timestamp: 0,
            duration: 2000,
            error: false,
            tags: vec![],
        }
    }

    #[test]
    fn edges_come_from_named_peers_pairs_and_roots() {
        let registry = prometheus::Registry::new();
        let mut g = ServiceGraph::declare(&mut Declare::new(&registry)).unwrap();
        let now = Instant::now();
        // The mesh's shape: root SERVER, CLIENT naming its peer, SERVER child of it.
        g.observe(&span("frontend", "SERVER", 1, None, None), now);
        g.observe(&span("frontend", "CLIENT", 2, Some(1), Some("backend")), now);
        g.observe(&span("backend", "SERVER", 3, Some(2), None), now);
        // An SDK's shape: the SERVER child arrives first, its CLIENT parent names no peer.
        g.observe(&span("store", "SERVER", 5, Some(4), None), now);
        g.observe(&span("backend", "CLIENT", 4, Some(3), None), now);
        let count = |c: &str, s: &str| g.requests.with_label_values(&[c, s]).get();
        assert_eq!(count("user", "frontend"), 1);
        assert_eq!(count("frontend", "backend"), 1, "counted once, not again for the server span");
        assert_eq!(count("backend", "store"), 1);
        g.observe(&span("lonely", "CLIENT", 9, None, None), now);
        g.expire(now + PAIR_WAIT + Duration::from_secs(1));
        assert_eq!(g.unpaired.get(), 1);
    }
}
