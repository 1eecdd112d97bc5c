//! Build, then serve. [`build`] turns a [`Config`] into a [`Proxy`]: metrics declared, listeners
//! bound (a bad address fails here, before anything is registered), etcd client made. [`Proxy::serve`]
//! runs it: identity first (nothing is served, registered or reported ready without a
//! certificate), then the listeners, then registration once the app answers; and on shutdown,
//! in order: deregister, wait for peers to notice, GOAWAY, drain, flush telemetry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_common::cli::{self, BindError};
use mesh_registry::{InstanceRecord, Registration};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState};
use crate::balance::discovery::{self, Discovery};
use crate::balance::{Balancer, NewClient};
use crate::config::{Config, GatewayConfig, InboundConfig, RegistrationSettings};
use crate::endpoint::client::H2Client;
use crate::endpoint::listen::{self, Listener};
use crate::endpoint::transport::{Acceptor, Connector};
use crate::gateway::certs::Certificates;
use crate::gateway::{Gateway, reload};
use crate::identity::{self, CertifyClient, IdentityState};
use crate::inbound::app::AppProbe;
use crate::inbound::{self, Inbound};
use crate::outbound::{Outbound, PeerClient};
use crate::telemetry::edge::AccessLog;
use crate::telemetry::events::AppUnreachable;
use crate::telemetry::export::{self, Flush};
use crate::telemetry::runtime::task_monitor;
use crate::telemetry::trace::{TraceSettings, Tracer};
use crate::telemetry::{Direction, Telemetry};

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
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
    /// The gateway's document could not be read again at startup.
    #[error("gateway: {0}")]
    Gateway(String),
    /// The collector endpoint could not be used.
    #[error("--collector-endpoint (MESH_COLLECTOR_ENDPOINT): {0}")]
    Collector(#[from] tonic::transport::Error),
}

/// Where a built proxy listens.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    /// The admin server.
    pub admin: SocketAddr,
    /// The outbound listener (the local app's calls).
    pub outbound: SocketAddr,
    /// The inbound listener (peers' calls), unless outbound only.
    pub inbound: Option<SocketAddr>,
    /// The gateway's TLS listener.
    pub gateway_tls: Option<SocketAddr>,
    /// The gateway's plaintext listener.
    pub gateway_plain: Option<SocketAddr>,
}

/// A proxy with its listeners bound, not yet serving.
pub struct Proxy {
    config: Config,
    listeners: Listeners,
    telemetry: Arc<Telemetry>,
    registry: prometheus::Registry,
    registry_metrics: Arc<mesh_registry::Metrics>,
    etcd: etcd_client::Client,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Listeners {
    admin: TcpListener,
    outbound: TcpListener,
    inbound: Option<TcpListener>,
    gateway_tls: Option<TcpListener>,
    gateway_plain: Option<TcpListener>,
}

/// Declares the metrics, binds the listeners and makes the etcd client.
pub async fn build(config: Config) -> Result<Proxy, Error> {
    let registry = prometheus::Registry::new_custom(None, None)?;
    let telemetry = Telemetry::new(&registry, config.telemetry.access_log)?;
    let registry_metrics =
        Arc::new(mesh_registry::Metrics::declare(&mut mesh_common::metrics::Declare::new(&registry))?);
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let listeners = Listeners {
        admin: cli::bind(config.admin.addr, "admin").await?,
        outbound: cli::bind(config.outbound.addr, "outbound").await?,
        // Outbound only (no app): nothing to forward inbound calls to, so no inbound listener.
        inbound: match &config.inbound {
            Some(inbound) => Some(cli::bind(inbound.addr, "inbound").await?),
            None => None,
        },
        gateway_tls: match config.gateway.as_ref().and_then(|g| g.tls_addr) {
            Some(addr) => Some(cli::bind(addr, "gateway TLS").await?),
            None => None,
        },
        gateway_plain: match config.gateway.as_ref().and_then(|g| g.plain_addr) {
            Some(addr) => Some(cli::bind(addr, "gateway plaintext").await?),
            None => None,
        },
    };
    let etcd = config.etcd.connect().await?;
    Ok(Proxy { config, listeners, telemetry, registry, registry_metrics, etcd })
}

impl Proxy {
    /// Where it listens (the real ports, when the config asked for port 0).
    pub fn addrs(&self) -> std::io::Result<Addrs> {
        Ok(Addrs {
            admin: self.listeners.admin.local_addr()?,
            outbound: self.listeners.outbound.local_addr()?,
            inbound: self.listeners.inbound.as_ref().map(TcpListener::local_addr).transpose()?,
            gateway_tls: self.listeners.gateway_tls.as_ref().map(TcpListener::local_addr).transpose()?,
            gateway_plain: self.listeners.gateway_plain.as_ref().map(TcpListener::local_addr).transpose()?,
        })
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Self { config, listeners, telemetry, registry, registry_metrics, etcd } = self;
        let mut shutdown = std::pin::pin!(shutdown);
        let (inbound_tasks, outbound_tasks) = (task_monitor(), task_monitor());
        telemetry.spawn_runtime_sampler(
            vec![(Direction::Inbound, inbound_tasks.clone()), (Direction::Outbound, outbound_tasks.clone())],
            Duration::from_secs(5),
        );
        let (tracer, flush) = start_export(&config, &registry, &telemetry)?;
        let admin_state = Arc::new(AdminState {
            ready: false.into(),
            serving: false.into(),
            registry,
            identity: Default::default(),
            policies: Default::default(),
        });
        {
            let (state, telemetry) = (admin_state.clone(), telemetry.clone());
            tokio::spawn(async move { admin::serve(listeners.admin, state, &telemetry).await });
        }

        // With an identity configured, it comes first: nothing is served, registered or reported
        // ready without a certificate, and peers are never spoken to in plaintext.
        let identity = match &config.identity {
            None => None,
            Some(identity_config) => {
                let mut issuer = CertifyClient::new(identity_config.clone(), config.service.clone());
                let trust_domain = identity_config.trust_domain.clone();
                tokio::select! {
                    state = identity::bootstrap(&mut issuer, trust_domain, &telemetry) => {
                        let state = state?;
                        let fraction = identity_config.renew_fraction;
                        tokio::spawn(identity::renew_forever(state.clone(), issuer, fraction, telemetry.clone()));
                        let _ = admin_state.identity.set(state.clone());
                        Some(state)
                    }
                    _ = &mut shutdown => return Ok(()),
                }
            }
        };

        let (stop_tx, stop_rx) = watch::channel(false);
        let outbound =
            outbound(&config, &telemetry, tracer.clone(), identity.as_ref(), &etcd, registry_metrics.clone());
        let lease = config.registration.as_ref().map(|r| r.lease).unwrap_or_default();
        let (status, status_json) = crate::outbound::report::start(
            etcd.clone(),
            &config.layout,
            (&config.service, &config.instance_id),
            outbound.policies.clone(),
            lease,
        );
        let _ = admin_state.policies.set(status_json);
        let gateway_servers = match &config.gateway {
            Some(settings) => {
                let edge = (listeners.gateway_tls, listeners.gateway_plain);
                let routes = reload::EtcdRoutes {
                    values: mesh_registry::watch_prefix::watch_prefix(etcd.clone(), config.layout.gateways()),
                    key: config.layout.gateway(&config.service),
                };
                serve_gateway(settings, edge, outbound.clone(), routes, &telemetry, config.drain_timeout, &stop_rx)?
            }
            None => Vec::new(),
        };
        let outbound_listener = Listener {
            listener: listeners.outbound,
            direction: Direction::Outbound,
            limits: config.outbound.limits,
            acceptor: Acceptor::plaintext(config.outbound.limits.handshake_timeout),
            telemetry: telemetry.clone(),
            drain: config.drain_timeout,
            tasks: outbound_tasks,
        };
        let (policies, discovery) = (outbound.policies.clone(), outbound.discovery.clone());
        let outbound_server =
            tokio::spawn(listen::serve(outbound_listener, move |req, _| outbound.handle(req), stop_rx.clone()));
        let inbound_server = match (listeners.inbound, &config.inbound) {
            (Some(listener), Some(settings)) => {
                let inbound = Arc::new(Inbound {
                    authorizer: identity.as_ref().map(|_| {
                        inbound::authz::Authorizer::new(
                            etcd.clone(),
                            &config.layout,
                            config.service.clone(),
                            telemetry.clone(),
                        )
                    }),
                    app: H2Client::new(
                        settings.app.to_string().parse().map_err(|e| BindError {
                            addr: settings.app,
                            what: "app",
                            source: std::io::Error::other(e),
                        })?,
                        config.service.clone(),
                        Connector::plaintext(settings.connect_timeout),
                        config.outbound.client,
                    ),
                    telemetry: telemetry.clone(),
                    tracer,
                    local: config.service.clone(),
                    limit: inbound::limit::ConcurrencyLimit::new(settings.limit, telemetry.clone()),
                    service_policy: {
                        let local = config.service.clone();
                        inbound::ServicePolicyFn(Box::new(move || policies.policy(&local)))
                    },
                    rate_limits: {
                        let local = config.service.clone();
                        inbound::ratelimit::RateLimiter::new(Box::new(move || {
                            discovery.balancer(&local).map_or(1, |b| b.len())
                        }))
                    },
                });
                let listener = Listener {
                    listener,
                    direction: Direction::Inbound,
                    limits: settings.limits,
                    acceptor: match &identity {
                        Some(state) => Acceptor::mtls(settings.limits.handshake_timeout, state, telemetry.clone())?,
                        None => Acceptor::plaintext(settings.limits.handshake_timeout),
                    },
                    telemetry: telemetry.clone(),
                    drain: config.drain_timeout,
                    tasks: inbound_tasks,
                };
                Some(tokio::spawn(listen::serve(
                    listener,
                    move |req, peer| inbound.clone().handle(req, peer.clone()),
                    stop_rx,
                )))
            }
            _ => None,
        };
        admin_state.serving.store(true, Ordering::Release);
        tracing::info!(
            service = %config.service,
            instance = %config.instance_id,
            outbound = %config.outbound.addr,
            inbound = %config.inbound.map_or_else(|| "off".to_string(), |i| i.addr.to_string()),
            admin = %config.admin.addr,
            app = %config.inbound.map_or_else(|| "none (outbound only)".to_string(), |i| i.app.to_string()),
            "listening"
        );

        let registration = match (&config.inbound, &config.registration) {
            (Some(inbound), Some(settings)) => {
                let registrar = Registrar {
                    app: *inbound,
                    record: record(&config, settings, identity.as_deref()),
                    layout: &config.layout,
                    settings,
                    etcd,
                    metrics: registry_metrics,
                    admin: &admin_state,
                    telemetry: &telemetry,
                };
                registrar.keep_registered(shutdown.as_mut()).await
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

        tracing::info!("shutting down: deregistering");
        admin_state.ready.store(false, Ordering::Release);
        admin_state.serving.store(false, Ordering::Release);
        if let (Some(registration), Some(settings)) = (registration, &config.registration) {
            registration.deregister().await;
            // Peers keep routing here until the removal reaches their watch.
            tokio::time::sleep(settings.deregister_wait).await;
        }
        status.deregister().await;
        tracing::info!("shutting down: draining");
        let _ = stop_tx.send(true);
        let _ = outbound_server.await;
        if let Some(inbound_server) = inbound_server {
            let _ = inbound_server.await;
        }
        for server in gateway_servers {
            let _ = server.await;
        }
        if let Some(flush) = flush {
            // The last spans and the final counts reach the collector, or give up after a second.
            export::flush(&flush, Duration::from_secs(1)).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The gateway: its document and certificates in force and followed, and its edge listeners
/// served (TLS, plaintext) in front of the outbound side.
fn serve_gateway(
    settings: &GatewayConfig,
    (tls, plain): (Option<TcpListener>, Option<TcpListener>),
    outbound: Arc<Outbound>,
    routes: reload::EtcdRoutes,
    telemetry: &Arc<Telemetry>,
    drain: Duration,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let access_log = AccessLog::to_stdout(telemetry).map_err(|e| Error::Gateway(format!("access log: {e}")))?;
    let gateway = Arc::new(Gateway { outbound, state: Default::default(), access_log });
    let certificates = Arc::new(Certificates::default());
    // Read again: the files may have changed since the config was checked.
    let loaded = reload::load(&settings.document).map_err(Error::Gateway)?;
    reload::install(loaded, &gateway, &certificates, telemetry, false);
    tokio::spawn(reload::follow(
        settings.document.clone(),
        settings.reload_interval,
        gateway.clone(),
        certificates.clone(),
        telemetry.clone(),
        Some(routes),
    ));
    let handshake = settings.limits.handshake_timeout;
    let edges = [
        (tls.map(|l| (l, Acceptor::edge(handshake, certificates.clone(), telemetry.clone())))),
        (plain.map(|l| (l, Ok(Acceptor::plaintext(handshake))))),
    ];
    let mut servers = Vec::new();
    for (listener, acceptor) in edges.into_iter().flatten() {
        let listener = Listener {
            listener,
            direction: Direction::Gateway,
            limits: settings.limits,
            acceptor: acceptor?,
            telemetry: telemetry.clone(),
            drain,
            tasks: task_monitor(),
        };
        let gateway = gateway.clone();
        let header_read_timeout = settings.header_read_timeout;
        let serve = listen::serve_http(
            listener,
            header_read_timeout,
            move |req, peer| gateway.handle(req, peer.addr),
            stop.clone(),
        );
        servers.push(tokio::spawn(serve));
    }
    Ok(servers)
}

/// The outbound side: per-service discovery and balancers whose endpoints connect over mTLS when
/// this proxy has an identity.
fn outbound(
    config: &Config,
    telemetry: &Arc<Telemetry>,
    tracer: Option<Arc<Tracer>>,
    identity: Option<&Arc<IdentityState>>,
    etcd: &etcd_client::Client,
    registry_metrics: Arc<mesh_registry::Metrics>,
) -> Arc<Outbound> {
    let settings = config.outbound;
    let connector = match identity {
        Some(state) => Connector::mtls(settings.connect_timeout, state.clone(), telemetry.clone()),
        None => Connector::plaintext(settings.connect_timeout),
    };
    let new_client: NewClient<PeerClient> = Arc::new(move |record: &InstanceRecord| {
        H2Client::new(record.address.clone(), record.service.clone(), connector.clone(), settings.client)
    });
    let balancer_telemetry = telemetry.clone();
    let new_balancer =
        Box::new(move || Balancer::new(new_client.clone(), settings.balancer, balancer_telemetry.clone()));
    let subscribe = discovery::etcd(etcd.clone(), config.layout.clone(), registry_metrics);
    Arc::new(Outbound {
        discovery: Discovery::new(subscribe, new_balancer, telemetry.clone(), settings.discovery_idle_timeout),
        telemetry: telemetry.clone(),
        tracer,
        local: config.service.clone(),
        fail_fast: settings.fail_fast_timeout,
        policies: Arc::new(crate::outbound::policy::Policies::follow(
            etcd.clone(),
            config.layout.clone(),
            telemetry.clone(),
        )),
    })
}

/// Starts the OTLP exporter when a collector is configured: the tracer that feeds it, and the
/// handle that flushes it on shutdown.
#[allow(clippy::type_complexity)]
fn start_export(
    config: &Config,
    registry: &prometheus::Registry,
    telemetry: &Arc<Telemetry>,
) -> Result<(Option<Arc<Tracer>>, Option<mpsc::Sender<Flush>>), Error> {
    let settings = &config.telemetry;
    let Some(collector) = &settings.collector else {
        return Ok((None, None));
    };
    let endpoint = export::endpoint(collector)?;
    let (spans_tx, spans_rx) = mpsc::channel(settings.span_queue);
    let (flush_tx, flush_rx) = mpsc::channel(1);
    let tracer = Tracer::new(TraceSettings { sampling: settings.sampling, slow: settings.slow }, spans_tx, telemetry);
    let export_settings = export::ExportSettings {
        endpoint,
        metrics_interval: settings.metrics_interval,
        service: config.service.to_string(),
        instance: config.instance_id.to_string(),
    };
    tokio::spawn(export::run(export_settings, spans_rx, flush_rx, registry.clone(), telemetry.clone()));
    tracing::info!(%collector, sampling = settings.sampling, "exporting telemetry");
    Ok((Some(Arc::new(tracer)), Some(flush_tx)))
}

/// This instance's record.
fn record(config: &Config, settings: &RegistrationSettings, identity: Option<&IdentityState>) -> InstanceRecord {
    let mut record =
        InstanceRecord::new(config.service.clone(), config.instance_id.clone(), settings.advertise.clone());
    record.labels = settings.labels.clone();
    record.weight = settings.weight;
    record.identity = identity.map(|state| state.current().identity.uri());
    record
}

/// How many app probes in a row must fail before the instance is taken out of the registry.
const APP_PROBE_FAILURES: u32 = 2;

/// Keeps this instance in the registry exactly while its app answers.
struct Registrar<'a> {
    app: InboundConfig,
    record: InstanceRecord,
    layout: &'a mesh_registry::Layout,
    settings: &'a RegistrationSettings,
    etcd: etcd_client::Client,
    metrics: Arc<mesh_registry::Metrics>,
    admin: &'a AdminState,
    telemetry: &'a Telemetry,
}

impl Registrar<'_> {
    /// Registers once the app answers; when it stops answering, reports not ready and
    /// deregisters (peers stop sending within the watch's propagation), and registers again when it
    /// is back. Returns at shutdown with the registration in force, if any.
    async fn keep_registered<S: Future<Output = ()>>(
        self,
        mut shutdown: std::pin::Pin<&mut S>,
    ) -> Option<Registration> {
        let mut probe = AppProbe::new(self.app.app);
        loop {
            tokio::select! {
                () = self.app_answers(&mut probe) => {}
                () = &mut shutdown => return None,
            }
            let registration = Registration::start(
                self.etcd.clone(),
                self.layout,
                self.record.clone(),
                self.settings.lease,
                self.metrics.clone(),
            );
            tokio::select! {
                () = registration.registered() => {}
                () = &mut shutdown => return Some(registration),
            }
            self.admin.ready.store(true, Ordering::Release);
            tracing::info!(key = registration.key(), "ready");
            tokio::select! {
                why = self.app_stops_answering(&mut probe) => {
                    self.admin.ready.store(false, Ordering::Release);
                    AppUnreachable { app: self.app.app, why: &why }.emit(self.telemetry);
                    registration.deregister().await;
                }
                () = &mut shutdown => return Some(registration),
            }
        }
    }

    /// Resolves once the app answers a probe.
    async fn app_answers(&self, probe: &mut AppProbe) {
        let app = self.app.app;
        let mut last_log = tokio::time::Instant::now() - Duration::from_secs(10);
        loop {
            match probe.probe(Duration::from_secs(1)).await {
                inbound::app::AppState::Ready => return,
                inbound::app::AppState::NotReady(why) => {
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        tracing::info!(%app, %why, "waiting for the local app before registering");
                        last_log = tokio::time::Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Probes the app every interval; resolves with why once it failed [`APP_PROBE_FAILURES`]
    /// probes in a row.
    async fn app_stops_answering(&self, probe: &mut AppProbe) -> String {
        let mut failures = 0;
        loop {
            tokio::time::sleep(self.app.probe_interval).await;
            match probe.probe(Duration::from_secs(1)).await {
                inbound::app::AppState::Ready => failures = 0,
                inbound::app::AppState::NotReady(why) => {
                    failures += 1;
                    if failures >= APP_PROBE_FAILURES {
                        return why;
                    }
                }
            }
        }
    }
}
