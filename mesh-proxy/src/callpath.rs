//! The call-path micro-benchmark: 100-byte gRPC unary calls through the proxy's own layers (the
//! listener's HTTP/2 server and stream service, the outbound path with discovery, policy, balancer
//! and peer connection, the inbound path with its limits and app connection) to an echo app, in
//! one process on one thread, over in-memory pipes instead of sockets. No kernel, no scheduler, no
//! other process: what is left is the proxy's user-space cost per call, counted exactly in
//! allocations (a counting allocator, this thread only) and timed.
//!
//! Four paths, as in `scripts/bench.sh`: `direct` (client to app), `inbound` and `outbound` (one
//! proxy side), `mesh` (outbound then inbound, plaintext between them). A proxy's own cost is its
//! path's figure minus `direct`'s (the client and the app are on the same thread).
//!
//! In `cargo test` (short mode, 2 000 calls a path after a warm-up) it fails when a path's
//! allocations per call go over its budget below: a per-call regression shows here before the
//! end-to-end benchmark. The long mode times it too, in a release build:
//!
//! ```sh
//! MESH_CALLPATH_CALLS=100000 cargo test --release -p mesh-proxy --lib callpath -- --nocapture
//! ```
//!
//! `MESH_CALLPATH_ONLY=inbound` (or `direct`, `outbound`, `mesh`) runs one path alone and checks no
//! budget: for a heap profiler, e.g. `valgrind --tool=dhat` on the test binary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_registry::{InstanceRecord, Layout, ServiceName, Snapshot};
use tokio::sync::watch;

use crate::balance::discovery::{Discovery, Subscription};
use crate::balance::{Balancer, NewClient};
use crate::config::{Args, Config};
use crate::endpoint::client::H2Client;
use crate::endpoint::listen::{self, H2Limits};
use crate::endpoint::transport::{BoxIo, Connector, MemoryDial, PeerInfo};
use crate::inbound::{Inbound, ServicePolicyFn, limit, ratelimit};
use crate::outbound::{Outbound, PeerClient, policy::Policies};
use crate::telemetry::Telemetry;

/// Allocations per call the proxy's own layers may make on each path (the path's count minus
/// `direct`'s; the same in debug and release builds but for one or so). The half is for the rare
/// allocation that is not per call (a buffer or a timer slot growing once in a while). Lower them
/// when a change saves allocations; a change that needs more says why in its commit.
const BUDGETS: [(Path, f64); 3] = [(Path::Inbound, 17.5), (Path::Outbound, 26.5), (Path::Mesh, 43.5)];

/// The request's gRPC message: a 5-byte frame header and 100 bytes.
const MESSAGE: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Inbound,
    Outbound,
    Mesh,
}

impl Path {
    fn named(name: &str) -> Option<Self> {
        [Self::Direct, Self::Inbound, Self::Outbound, Self::Mesh]
            .into_iter()
            .find(|p| format!("{p:?}").eq_ignore_ascii_case(name))
    }
}

/// What a path's calls cost, per call.
#[derive(Debug)]
struct Cost {
    allocations: f64,
    bytes: f64,
    micros: f64,
}

/// The echo app: answers each call with its request's message and `grpc-status: 0` in trailers.
async fn echo(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let message = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = stream::iter([Ok(Frame::data(message)), Ok(Frame::trailers(trailers))]);
    let mut response = Response::new(StreamBody::new(frames));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

type EchoBody = StreamBody<stream::Iter<std::array::IntoIter<Result<Frame<Bytes>, Infallible>, 2>>>;

/// An in-memory pipe whose far end `serve` takes (in a task of its own); this end is returned.
fn pipe<F>(serve: impl FnOnce(BoxIo) -> F) -> BoxIo
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (near, far) = tokio::io::duplex(256 * 1024);
    tokio::spawn(serve(Box::new(far)));
    Box::new(near)
}

/// Dials the echo app.
fn app_dial() -> MemoryDial {
    Arc::new(|| {
        pipe(|io| async move {
            let service = hyper::service::service_fn(echo);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service)
                .await;
        })
    })
}

fn peer() -> PeerInfo {
    PeerInfo { addr: SocketAddr::from(([127, 0, 0, 1], 40_000)), identity: None }
}

/// Dials a proxy side serving `handler` with the listener's limits.
fn proxy_dial<H, F, B>(limits: H2Limits, handler: H) -> MemoryDial
where
    H: Fn(Request<Incoming>, &Arc<PeerInfo>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Arc::new(move || {
        let handler = handler.clone();
        pipe(move |io| async move {
            let _ = listen::serve_one(limits, io, peer(), handler).await;
        })
    })
}

/// The proxy's settings at their defaults (what `mesh-proxy --service <name>` runs with).
fn config(service: &str) -> Config {
    let args = ["mesh-proxy", "--service", service, "--advertise-addr", "127.0.0.1:4143"];
    let args = Args::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    args.into_config().unwrap_or_else(|e| panic!("{e}"))
}

/// The inbound side of `echo`'s proxy, calling the app through `app`.
fn inbound(telemetry: &Arc<Telemetry>, app: MemoryDial) -> Arc<Inbound> {
    let config = config("echo");
    let settings = config.inbound.unwrap_or_else(|| unreachable!("the default has an app"));
    let client = H2Client::new(
        "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!()),
        config.service.clone(),
        Connector::memory(app),
        config.outbound.client,
    );
    Arc::new(Inbound {
        app: client,
        authorizer: None,
        telemetry: telemetry.clone(),
        tracer: None,
        local: config.service,
        limit: limit::ConcurrencyLimit::new(settings.limit, telemetry.clone()),
        service_policy: ServicePolicyFn(Box::new(|| None)),
        rate_limits: ratelimit::RateLimiter::new(Box::new(|| 1)),
    })
}

/// The outbound side of a `bench` client's proxy, whose one instance of `echo` is what `peer` dials.
fn outbound(telemetry: &Arc<Telemetry>, peer: MemoryDial) -> Arc<Outbound> {
    let config = config("bench");
    let settings = config.outbound;
    let service: ServiceName = "echo".parse().unwrap_or_else(|_| unreachable!());
    let record = InstanceRecord::new(
        service,
        "echo-1".parse().unwrap_or_else(|_| unreachable!()),
        "echo-1:4143".parse().unwrap_or_else(|_| unreachable!()),
    );
    let key = Layout::default().instance(&record.service, &record.instance_id);
    let snapshot =
        Arc::new(Snapshot { records: [(key, record)].into_iter().collect(), synced: true, ..Snapshot::default() });
    let subscribe = Box::new(move |_: &ServiceName| {
        let (tx, snapshots) = watch::channel(snapshot.clone());
        Subscription { snapshots, keep: Box::new(tx) }
    });
    let new_client: NewClient<PeerClient> = Arc::new(move |record: &InstanceRecord| {
        H2Client::new(record.address.clone(), record.service.clone(), Connector::memory(peer.clone()), settings.client)
    });
    let balancer_telemetry = telemetry.clone();
    let new_balancer =
        Box::new(move || Balancer::new(new_client.clone(), settings.balancer, balancer_telemetry.clone()));
    let (_, no_policies) = watch::channel(Default::default());
    Arc::new(Outbound {
        discovery: Discovery::new(subscribe, new_balancer, telemetry.clone(), settings.discovery_idle_timeout),
        telemetry: telemetry.clone(),
        tracer: None,
        local: config.service,
        fail_fast: settings.fail_fast_timeout,
        policies: Arc::new(Policies::new(no_policies, Layout::default(), telemetry.clone())),
    })
}

/// The client's first hop on `path`.
fn dial(path: Path) -> MemoryDial {
    let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"));
    let limits = config("echo").inbound.unwrap_or_else(|| unreachable!()).limits;
    let outbound_limits = config("bench").outbound.limits;
    let inbound_dial = |telemetry: &Arc<Telemetry>| {
        let inbound = inbound(telemetry, app_dial());
        proxy_dial(limits, move |req, peer| inbound.clone().handle(req, peer.clone()))
    };
    match path {
        Path::Direct => app_dial(),
        Path::Inbound => inbound_dial(&telemetry),
        Path::Outbound => {
            let outbound = outbound(&telemetry, app_dial());
            proxy_dial(outbound_limits, move |req, _| outbound.handle(req))
        }
        Path::Mesh => {
            let outbound = outbound(&telemetry, inbound_dial(&telemetry));
            proxy_dial(outbound_limits, move |req, _| outbound.handle(req))
        }
    }
}

/// One call: sends the message, reads the reply and its trailers, checks both.
async fn call(client: &mut SendRequest<Full<Bytes>>, message: &Bytes) -> Result<(), String> {
    let req = Request::post("http://echo.mesh:4140/bench.Echo/Unary")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(message.clone()))
        .map_err(|e| e.to_string())?;
    let response = client.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?;
    let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
    let echoed = body.to_bytes();
    if parts.status != http::StatusCode::OK || status.as_ref().is_none_or(|s| s != "0") || echoed != *message {
        return Err(format!("{} {:?}: {} bytes back", parts.status, status, echoed.len()));
    }
    Ok(())
}

/// Runs `warm_up` then `calls` calls on `path`, one at a time; counts the second batch.
fn measure(path: Path, warm_up: u32, calls: u32) -> Cost {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let mut frame = vec![0u8; 5 + MESSAGE];
    frame[1..5].copy_from_slice(&u32::try_from(MESSAGE).unwrap_or_default().to_be_bytes());
    let message = Bytes::from(frame);
    let mut client = runtime.block_on(async {
        let (client, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(dial(path)()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(connection);
        client
    });
    let run = |client: &mut SendRequest<Full<Bytes>>, n: u32| {
        runtime.block_on(async {
            for i in 0..n {
                if let Err(error) = call(client, &message).await {
                    panic!("{path:?}: call {i} failed: {error}");
                }
            }
        });
    };
    run(&mut client, warm_up);
    let mut elapsed = Duration::ZERO;
    let counted = allocation_counter::measure(|| {
        let start = Instant::now();
        run(&mut client, calls);
        elapsed = start.elapsed();
    });
    let n = f64::from(calls);
    Cost {
        allocations: counted.count_total as f64 / n,
        bytes: counted.bytes_total as f64 / n,
        micros: elapsed.as_secs_f64() * 1e6 / n,
    }
}

#[test]
fn calls_through_each_path_stay_within_their_allocation_budget() {
    let calls = std::env::var("MESH_CALLPATH_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    // MESH_CALLPATH_ONLY=inbound (say) runs that path alone, e.g. under a heap profiler.
    let only = std::env::var("MESH_CALLPATH_ONLY").ok();
    if let Some(path) = only.as_deref().and_then(Path::named) {
        let cost = measure(path, 200, calls);
        println!("{path:?}: {cost:?} per call ({calls} calls)");
        return;
    }
    let paths = [Path::Direct, Path::Inbound, Path::Outbound, Path::Mesh];
    let costs: Vec<(Path, Cost)> = paths.iter().map(|path| (*path, measure(*path, 200, calls))).collect();
    let direct = &costs[0].1;
    println!("{calls} calls a path, one at a time (the proxy's own: the path's figure minus direct's)");
    println!("path      allocs/call  (proxy)  bytes/call  (proxy)  us/call  (proxy)");
    for (path, cost) in &costs {
        println!(
            "{:<9} {:>11.1} {:>8.1} {:>11.0} {:>8.0} {:>8.2} {:>8.2}",
            format!("{path:?}").to_lowercase(),
            cost.allocations,
            cost.allocations - direct.allocations,
            cost.bytes,
            cost.bytes - direct.bytes,
            cost.micros,
            cost.micros - direct.micros,
        );
    }
    for (path, budget) in BUDGETS {
        let cost = costs.iter().find(|(p, _)| *p == path).map_or(f64::MAX, |(_, c)| c.allocations - direct.allocations);
        assert!(cost <= budget, "{path:?}: the proxy made {cost:.1} allocations per call, over its budget of {budget}");
    }
}
