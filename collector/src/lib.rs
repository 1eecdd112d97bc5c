//! `mesh-collector`, the mesh's bundled telemetry collector.
//!
//! ```text
//!  proxies, any OTel SDK ──OTLP/gRPC :4317──▶ receiver ─▶ pipeline ─┬─▶ series store ──▶ :9464 /metrics (Prometheus)
//!                                                                   ├─▶ trace store  ──▶ :9411 Zipkin v2 API (Grafana)
//!                                                                   ├─▶ service graph ─▶ :9464 mesh_service_graph_*
//!                                                                   └─▶ forwarder ─────▶ another OTLP endpoint (optional)
//! ```
//!
//! # Structure
//! - [`config`]: every setting, typed.
//! - `receiver`: the OTLP `TraceService` and `MetricsService`.
//! - `pipeline`: where an export goes; `forward`: the bounded queue to the next hop.
//! - `series`: OTLP metrics as Prometheus series (restart-safe counters, TTL, series limit).
//! - `traces`: the bounded trace store and the Zipkin span shape; `zipkin`: the read API.
//! - `graph`: service-graph metrics from spans; `health`: the collector's own metrics.
//! - `http`: the small HTTP/1.1 server both read endpoints use.

pub mod config;
mod forward;
mod graph;
mod health;
mod pipeline;
mod receiver;
mod series;
mod traces;
mod zipkin;

use std::sync::Arc;
use std::time::Duration;

use mesh_common::{cli, http1};
use prometheus::{Encoder, TextEncoder};

use crate::config::Config;
use crate::pipeline::Pipeline;

/// Why the collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] mesh_common::cli::BindError),
    /// Metrics could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The OTLP server failed.
    #[error("OTLP server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the collector until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), Error> {
    let registry = prometheus::Registry::new();
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let (health, graph, _) = declare(&registry)?;
    let forward =
        config.forward_endpoint.clone().map(|uri| forward::Forwarder::start(uri, config.forward_queue, health.clone()));
    let pipeline = Arc::new(Pipeline::new(
        traces::StoreLimits { max_spans: config.trace_store_spans, max_bytes: config.trace_store_bytes },
        config.series_limit,
        config.series_ttl,
        graph,
        health,
        forward,
    ));

    let otlp = cli::bind(config.otlp_addr, "otlp").await?;
    let metrics = cli::bind(config.metrics_addr, "metrics").await?;
    let query = cli::bind(config.query_addr, "query").await?;

    let scrape = {
        let pipeline = pipeline.clone();
        Arc::new(move |req: &::http::Request<hyper::body::Incoming>| match req.uri().path() {
            "/metrics" => exposition(&registry, &pipeline),
            "/health" | "/ready" => http1::respond(::http::StatusCode::OK, "text/plain", "ok\n"),
            _ => http1::text(::http::StatusCode::NOT_FOUND, "not found: try /metrics"),
        })
    };
    tokio::spawn(http1::serve(metrics, scrape, http1::Limits::default()));
    let api = {
        let pipeline = pipeline.clone();
        Arc::new(move |req: &::http::Request<hyper::body::Incoming>| zipkin::handle(&pipeline, req))
    };
    tokio::spawn(http1::serve(query, api, http1::Limits::default()));
    let upkeep = pipeline.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            upkeep.expire();
        }
    });

    tracing::info!(
        otlp = %config.otlp_addr,
        metrics = %config.metrics_addr,
        query = %config.query_addr,
        forward = config.forward_endpoint.as_ref().map(ToString::to_string).unwrap_or_default(),
        "listening"
    );
    let (traces, metrics) = receiver::services(receiver::Receiver(pipeline));
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(100))
        .http2_max_header_list_size(Some(16 * 1024))
        .timeout(Duration::from_secs(30))
        .add_service(traces)
        .add_service(metrics)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(otlp).with_nodelay(Some(true)),
            cli::shutdown_signal(),
        )
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// The collector's own metric families, declared into `registry`.
fn declare(
    registry: &prometheus::Registry,
) -> prometheus::Result<(health::Health, graph::ServiceGraph, Vec<mesh_common::metrics::Declared>)> {
    let mut d = mesh_common::metrics::Declare::new(registry);
    let health = health::Health::declare(&mut d)?;
    let graph = graph::ServiceGraph::declare(&mut d)?;
    Ok((health, graph, d.declared().to_vec()))
}

/// `/metrics`: the collector's own metrics, then every series received.
fn exposition(registry: &prometheus::Registry, pipeline: &Pipeline) -> ::http::Response<http1::Body> {
    let mut families = registry.gather();
    families.extend(pipeline.series.lock().families());
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => http1::respond(::http::StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", buf),
        Err(e) => http1::text(::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_documents_every_collector_metric() -> prometheus::Result<()> {
        let (_, _, declared) = super::declare(&prometheus::Registry::new())?;
        let readme = include_str!("../../README.md");
        let documented = mesh_common::metrics::documented(readme, "On the collector's `/metrics` only:")
            .unwrap_or_else(|e| panic!("README: {e}"));
        if let Err(differences) = mesh_common::metrics::compare(&declared, &documented) {
            panic!("the README's collector metrics table and the code differ:\n{differences}");
        }
        Ok(())
    }
}
