//! `mesh-proxy`, the mesh's sidecar: it sits beside one instance of a service and carries all of
//! its HTTP/2 and gRPC traffic.
//!
//! ```text
//!            outbound (127.0.0.1:4140, h2c)                       inbound (0.0.0.0:4143)
//!  app ─────▶ route by :authority ─▶ balance per request ─────▶ peer proxy ─▶ peer app
//!  app ◀───── (responses, trailers and resets streamed back) ◀──
//! ```
//!
//! Streams are forwarded frame by frame with hyper: headers, data and trailers pass through,
//! bodies are never decoded or buffered whole, flow control and cancellation (RST_STREAM) carry
//! across both hops.
//!
//! # Structure
//! - [`config`]: every setting, typed.
//! - `listen`: accept loop, HTTP/2 server limits, graceful drain; `transport`: plaintext or
//!   mutual TLS (`tls`: rustls configs and the SPIFFE checks) behind one seam.
//! - `identity`: this proxy's key and certificate from the control plane, renewed in the background.
//! - `outbound` / `inbound`: the two request paths, each read top to bottom.
//! - `discovery` (watch per service in use) -> `balance` (P2C over peak-EWMA) -> `client` (one
//!   multiplexed connection per endpoint).
//! - `errors`: proxy-made gRPC statuses with stable reasons; `ready`: the local app's readiness
//!   probe; `admin`: `/live`, `/ready`, `/metrics`, `/identity`.
//! - Telemetry: `metrics` (every series, and the per-request recorder), `body` (status and bytes
//!   seen on the way), `trace` (W3C trace context and one span per hop), `runtime` (tokio
//!   runtime and task metrics), `export` (OTLP/gRPC to the collector, bounded, never blocking).

mod admin;
mod authority;
mod authz;
mod balance;
mod body;
mod client;
pub mod config;
mod discovery;
mod errors;
mod export;
mod headers;
pub mod identity;
mod inbound;
mod listen;
mod metrics;
mod outbound;
mod ready;
mod runtime;
mod tls;
mod trace;
mod transport;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_registry::{InstanceRecord, Registration, cli};
use tokio::sync::watch;

use crate::balance::{Balancer, BalancerSettings};
use crate::client::{ClientSettings, H2Client};
use crate::config::Config;
use crate::metrics::Direction;
use crate::transport::{Acceptor, Connector};

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] mesh_registry::cli::BindError),
    /// etcd settings could not be used.
    #[error(transparent)]
    Etcd(#[from] mesh_registry::etcd::ConnectError),
    /// Metrics could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// No identity could be obtained.
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The collector endpoint could not be used.
    #[error("collector endpoint: {0}")]
    Collector(String),
}

/// Runs the proxy until SIGTERM or Ctrl-C, then shuts down in order: deregister, wait for peers
/// to notice, GOAWAY, drain, exit.
pub async fn run(config: Config) -> Result<(), Error> {
    let registry = prometheus::Registry::new_custom(None, None)?;
    let proxy_metrics = Arc::new(metrics::ProxyMetrics::new(&registry)?);
    let registry_metrics = Arc::new(mesh_registry::Metrics::new());
    registry_metrics.register(&registry)?;
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let (inbound_tasks, outbound_tasks) = (runtime::task_monitor(), runtime::task_monitor());
    runtime::spawn_sampler(
        &registry,
        vec![("inbound", inbound_tasks.clone()), ("outbound", outbound_tasks.clone())],
        Duration::from_secs(5),
    )?;
    proxy_metrics.access_log.store(config.telemetry.access_log, Ordering::Relaxed);
    let (tracer, flush) = start_export(&config, &registry, &proxy_metrics)?;
    let admin_state = Arc::new(admin::AdminState {
        ready: false.into(),
        serving: false.into(),
        registry,
        identity: Default::default(),
    });

    // Listeners first: a bad address fails the start, before anything is registered.
    let admin_listener = cli::bind(config.admin_addr, "admin").await?;
    let outbound_listener = cli::bind(config.outbound_addr, "outbound").await?;
    // Outbound-only (no app): nothing to forward inbound calls to, so no inbound listener.
    let inbound_listener = match config.app_addr {
        Some(_) => Some(cli::bind(config.inbound_addr, "inbound").await?),
        None => None,
    };
    tokio::spawn(admin::serve(admin_listener, admin_state.clone()));

    let etcd = config.etcd.connect().await?;
    let mut shutdown = std::pin::pin!(cli::shutdown_signal());

    // With an identity configured, it comes first: nothing is served, registered or reported
    // ready without a certificate, and peers are never spoken to in plaintext.
    let identity = match &config.identity {
        None => None,
        Some(identity_config) => tokio::select! {
            state = identity::bootstrap(identity_config, &config.service, &proxy_metrics) => {
                let state = state?;
                tokio::spawn(identity::renew_forever(state.clone(), identity_config.clone(), config.service.clone(), proxy_metrics.clone()));
                let _ = admin_state.identity.set(state.clone());
                Some(state)
            }
            _ = &mut shutdown => return Ok(()),
        },
    };
    let client_settings = ClientSettings {
        connection_window: config.outbound_limits.connection_window,
        stream_window: config.outbound_limits.stream_window,
        max_header_list_size: config.outbound_limits.max_header_list_size,
        keepalive: config.outbound_limits.idle_timeout,
    };
    let connector = match &identity {
        Some(state) => Connector::mtls(config.connect_timeout, state.clone(), proxy_metrics.clone()),
        None => Connector::plaintext(config.connect_timeout),
    };
    let balancer_settings = BalancerSettings { decay: config.ewma_decay, default_rtt: config.ewma_default_rtt };
    let new_balancer = {
        let connector = connector.clone();
        let picks = proxy_metrics.balancer_picks.clone();
        Box::new(move || {
            Balancer::new(connector.clone(), client_settings, balancer_settings).counting_picks(picks.clone())
        })
    };
    let discovery = discovery::Discovery::new(
        etcd.clone(),
        config.layout.clone(),
        registry_metrics.clone(),
        proxy_metrics.clone(),
        new_balancer,
        config.discovery_idle_timeout,
    );
    let outbound = Arc::new(outbound::Outbound {
        discovery,
        metrics: proxy_metrics.clone(),
        tracer: tracer.clone(),
        local: config.service.clone(),
        fail_fast: config.fail_fast_timeout,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let outbound_listener = listen::Listener {
        listener: outbound_listener,
        direction: Direction::Outbound,
        limits: config.outbound_limits,
        acceptor: Acceptor::plaintext(config.outbound_limits.handshake_timeout),
        metrics: proxy_metrics.clone(),
        drain: config.drain_timeout,
        tasks: outbound_tasks,
    };
    let outbound_server =
        tokio::spawn(listen::serve(outbound_listener, move |req| outbound.clone().handle(req), stop_rx.clone()));
    let inbound_server = match (inbound_listener, config.app_addr) {
        (Some(listener), Some(app_addr)) => {
            let app: mesh_registry::Address = app_addr.to_string().parse().map_err(|e| {
                mesh_registry::cli::BindError { addr: app_addr, what: "app", source: std::io::Error::other(e) }
            })?;
            let authorizer = identity.as_ref().map(|_| {
                authz::Authorizer::new(etcd.clone(), &config.layout, config.service.clone(), proxy_metrics.clone())
            });
            let inbound = Arc::new(inbound::Inbound {
                authorizer,
                app: H2Client::new(
                    app,
                    config.service.clone(),
                    Connector::plaintext(config.connect_timeout),
                    client_settings,
                ),
                metrics: proxy_metrics.clone(),
                tracer,
                local: config.service.clone(),
            });
            let listener = listen::Listener {
                listener,
                direction: Direction::Inbound,
                limits: config.inbound_limits,
                acceptor: match &identity {
                    Some(state) => {
                        Acceptor::mtls(config.inbound_limits.handshake_timeout, state, proxy_metrics.clone())?
                    }
                    None => Acceptor::plaintext(config.inbound_limits.handshake_timeout),
                },
                metrics: proxy_metrics.clone(),
                drain: config.drain_timeout,
                tasks: inbound_tasks,
            };
            Some(tokio::spawn(listen::serve(listener, move |req| inbound.clone().handle(req), stop_rx)))
        }
        _ => None,
    };
    admin_state.serving.store(true, Ordering::Release);
    let app = config.app_addr.map_or_else(|| "none (outbound only)".to_string(), |a| a.to_string());
    tracing::info!(
        service = %config.service,
        instance = %config.instance_id,
        outbound = %config.outbound_addr,
        inbound = %config.app_addr.map_or_else(|| "off".to_string(), |_| config.inbound_addr.to_string()),
        admin = %config.admin_addr,
        %app,
        "listening"
    );

    let registration = match (config.app_addr, &config.advertise_addr) {
        (Some(app_addr), Some(advertise)) => {
            let mut record = InstanceRecord::new(config.service.clone(), config.instance_id.clone(), advertise.clone());
            record.labels = config.labels.clone();
            record.weight = config.weight;
            record.identity = identity.as_ref().map(|state| state.current().identity.uri());
            tokio::select! {
                registration = register_when_app_ready(app_addr, record, &config, etcd, registry_metrics) => Some(registration),
                _ = &mut shutdown => None,
            }
        }
        // Outbound only: nothing registers and nothing gates readiness but the listeners and
        // (with mTLS) the certificate, both already in hand here.
        _ => {
            admin_state.ready.store(true, Ordering::Release);
            tracing::info!("ready (outbound only: not registered)");
            shutdown.as_mut().await;
            None
        }
    };
    if let Some(registration) = &registration {
        registration.registered().await;
        admin_state.ready.store(true, Ordering::Release);
        tracing::info!(key = registration.key(), "ready");
        shutdown.await;
    }

    tracing::info!("shutting down: deregistering");
    admin_state.ready.store(false, Ordering::Release);
    admin_state.serving.store(false, Ordering::Release);
    if let Some(registration) = registration {
        registration.deregister().await;
        // Peers keep routing here until the removal reaches their watch.
        tokio::time::sleep(config.deregister_wait).await;
    }
    tracing::info!("shutting down: draining");
    let _ = stop_tx.send(true);
    let _ = outbound_server.await;
    if let Some(inbound_server) = inbound_server {
        let _ = inbound_server.await;
    }
    if let Some(flush) = flush {
        // The last spans and the final counts reach the collector, or give up after a second.
        export::flush(&flush, Duration::from_secs(1)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts the OTLP exporter when a collector is configured: the tracer that feeds it, and the
/// handle that flushes it on shutdown.
#[allow(clippy::type_complexity)]
fn start_export(
    config: &Config,
    registry: &prometheus::Registry,
    metrics: &Arc<metrics::ProxyMetrics>,
) -> Result<(Option<Arc<trace::Tracer>>, Option<tokio::sync::mpsc::Sender<export::Flush>>), Error> {
    let telemetry = &config.telemetry;
    let Some(collector) = &telemetry.collector else {
        return Ok((None, None));
    };
    let endpoint = export::endpoint(collector).map_err(|e| Error::Collector(e.to_string()))?;
    let (spans_tx, spans_rx) = tokio::sync::mpsc::channel(telemetry.span_queue);
    let (flush_tx, flush_rx) = tokio::sync::mpsc::channel(1);
    let tracer = trace::Tracer::new(
        trace::TraceSettings { sampling: telemetry.sampling, slow: telemetry.slow },
        spans_tx,
        metrics.telemetry_dropped.with_label_values(&["spans", "queue_full"]),
        metrics.spans_unsampled.clone(),
    );
    let settings = export::ExportSettings {
        endpoint,
        metrics_interval: telemetry.metrics_interval,
        service: config.service.to_string(),
        instance: config.instance_id.to_string(),
    };
    tokio::spawn(export::run(settings, spans_rx, flush_rx, registry.clone(), metrics.clone()));
    tracing::info!(%collector, sampling = telemetry.sampling, "exporting telemetry");
    Ok((Some(Arc::new(tracer)), Some(flush_tx)))
}

/// Waits until the local app answers, then registers this instance.
async fn register_when_app_ready(
    app: std::net::SocketAddr,
    record: InstanceRecord,
    config: &Config,
    etcd: etcd_client::Client,
    metrics: Arc<mesh_registry::Metrics>,
) -> Registration {
    let mut last_log = tokio::time::Instant::now() - Duration::from_secs(10);
    loop {
        match ready::probe(app, Duration::from_secs(1)).await {
            ready::AppState::Ready => break,
            ready::AppState::NotReady(why) => {
                if last_log.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(%app, %why, "waiting for the local app before registering");
                    last_log = tokio::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Registration::start(etcd, &config.layout, record, config.lease, metrics)
}
