//! The load generator: `mesh.demo.v1.Echo/Unary` calls against a target (the echo app directly,
//! a proxy, nginx, HAProxy), closed-loop (fixed concurrency) or open-loop (fixed rate), over a
//! fixed number of HTTP/2 connections. Every reply's gRPC status is checked. Prints throughput
//! and latency percentiles (HdrHistogram) and writes the same as JSON.
//!
//! Open-loop latency is measured from when each request was *scheduled*, not when it was sent,
//! so a target that stalls cannot hide its queueing (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::{Channel, Endpoint, Uri};

/// Load generator flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Where to send calls (the app, a proxy's outbound port, nginx, HAProxy).
    #[arg(long, env = "DEMO_LOAD_TARGET", default_value = "http://127.0.0.1:4140")]
    target: Uri,
    /// `:authority` to send (through the mesh: the target service).
    #[arg(long, env = "DEMO_LOAD_AUTHORITY")]
    authority: Option<String>,
    /// Stop after this many calls (default: run for --duration).
    #[arg(long, env = "DEMO_LOAD_REQUESTS")]
    requests: Option<u64>,
    /// How long to run (ignored with --requests).
    #[arg(long, env = "DEMO_LOAD_DURATION", default_value = "10s", value_parser = mesh_common::cli::duration)]
    duration: Duration,
    /// Calls before measuring starts.
    #[arg(long, env = "DEMO_LOAD_WARMUP", default_value = "500", value_name = "CALLS")]
    warmup: u64,
    /// HTTP/2 connections.
    #[arg(long, env = "DEMO_LOAD_CONNECTIONS", default_value_t = 4)]
    connections: usize,
    /// Closed loop: calls in flight per connection.
    #[arg(long, env = "DEMO_LOAD_STREAMS", default_value_t = 12)]
    streams: usize,
    /// Open loop: calls per second (replaces the closed loop).
    #[arg(long, env = "DEMO_LOAD_RATE")]
    rate: Option<u32>,
    /// Open loop: most calls in flight; calls beyond it are counted as `overloaded`, not sent.
    #[arg(long, env = "DEMO_LOAD_MAX_IN_FLIGHT", default_value_t = 10_000)]
    max_in_flight: usize,
    /// Request payload size in bytes.
    #[arg(long, env = "DEMO_LOAD_PAYLOAD", default_value_t = 100)]
    payload: usize,
    /// Per-call deadline.
    #[arg(long, env = "DEMO_LOAD_TIMEOUT", default_value = "10s", value_parser = mesh_common::cli::duration)]
    timeout: Duration,
    /// Write the report as JSON to this file.
    #[arg(long, env = "DEMO_LOAD_JSON")]
    json: Option<std::path::PathBuf>,
}

/// Latency percentiles, microseconds.
#[derive(Serialize, Debug)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
}

/// The report.
#[derive(Serialize, Debug)]
struct Report {
    target: String,
    mode: &'static str,
    connections: usize,
    concurrency: Option<usize>,
    rate: Option<u32>,
    payload_bytes: usize,
    calls: u64,
    ok: u64,
    /// Failed calls by gRPC code name.
    errors: BTreeMap<String, u64>,
    /// Open loop: calls not sent because `max_in_flight` were already in flight.
    overloaded: u64,
    duration_s: f64,
    throughput_rps: f64,
    latency_us: Latency,
}

/// What all callers record into.
struct Recorder {
    histogram: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ok: AtomicU64,
}

impl Recorder {
    fn new() -> Result<Self, String> {
        let histogram = Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
        Ok(Self { histogram: Mutex::new(histogram), errors: Mutex::default(), ok: AtomicU64::new(0) })
    }

    fn record(&self, latency: Duration, result: Result<(), tonic::Code>) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histogram.lock().saturating_record(us);
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(code) => {
                let name = format!("{code:?}");
                *self.errors.lock().entry(name).or_default() += 1;
            }
        }
    }
}

async fn call(client: &mut EchoClient<Channel>, payload: &[u8]) -> Result<(), tonic::Code> {
    let request = EchoRequest { payload: payload.to_vec(), ..EchoRequest::default() };
    client.unary(request).await.map(|_| ()).map_err(|s| s.code())
}

async fn connect(args: &Args) -> Result<Vec<EchoClient<Channel>>, String> {
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let mut endpoint =
            Endpoint::from(args.target.clone()).timeout(args.timeout).connect_timeout(Duration::from_secs(2));
        if let Some(authority) = &args.authority {
            let origin: Uri =
                format!("http://{authority}").parse().map_err(|e| format!("--authority {authority:?}: {e}"))?;
            endpoint = endpoint.origin(origin);
        }
        // Each `connect` opens its own HTTP/2 connection.
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", args.target))?;
        clients.push(EchoClient::new(channel));
    }
    Ok(clients)
}

pub(crate) async fn run(args: Args) -> Result<(), String> {
    if args.connections == 0 || args.streams == 0 {
        return Err("--connections and --streams must be at least 1".into());
    }
    let clients = connect(&args).await?;
    let payload: Arc<[u8]> = vec![b'x'; args.payload].into();

    // Warm up: connections established, proxies' discovery and pools ready.
    let mut warm = clients[0].clone();
    for _ in 0..args.warmup {
        let _ = call(&mut warm, &payload).await;
    }

    let recorder = Arc::new(Recorder::new()?);
    let started = Instant::now();
    let deadline = started + args.duration;
    let (mode, overloaded) = match args.rate {
        None => {
            closed_loop(&args, &clients, &payload, &recorder, deadline).await;
            ("closed", 0)
        }
        Some(rate) => ("open", open_loop(&args, rate, &clients, &payload, &recorder, deadline).await),
    };
    let elapsed = started.elapsed().as_secs_f64();

    let histogram = recorder.histogram.lock().clone();
    let errors = recorder.errors.lock().clone();
    let calls = histogram.len();
    let report = Report {
        target: args.target.to_string(),
        mode,
        connections: args.connections,
        concurrency: args.rate.is_none().then_some(args.connections * args.streams),
        rate: args.rate,
        payload_bytes: args.payload,
        calls,
        ok: recorder.ok.load(Ordering::Relaxed),
        errors,
        overloaded,
        duration_s: elapsed,
        throughput_rps: calls as f64 / elapsed,
        latency_us: Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        },
    };
    print_report(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `streams` callers per connection, each sending its next call when the last one returns.
async fn closed_loop(
    args: &Args,
    clients: &[EchoClient<Channel>],
    payload: &Arc<[u8]>,
    recorder: &Arc<Recorder>,
    deadline: Instant,
) {
    let budget = Arc::new(AtomicU64::new(args.requests.unwrap_or(u64::MAX)));
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..args.streams {
            let (mut client, payload, recorder, budget) =
                (client.clone(), payload.clone(), recorder.clone(), budget.clone());
            let bounded = args.requests.is_some();
            tasks.push(tokio::spawn(async move {
                loop {
                    if bounded {
                        if budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err() {
                            return;
                        }
                    } else if Instant::now() >= deadline {
                        return;
                    }
                    let sent = Instant::now();
                    let result = call(&mut client, &payload).await;
                    recorder.record(sent.elapsed(), result);
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One call every 1/rate seconds, spread over the connections, whatever the target does.
async fn open_loop(
    args: &Args,
    rate: u32,
    clients: &[EchoClient<Channel>],
    payload: &Arc<[u8]>,
    recorder: &Arc<Recorder>,
    deadline: Instant,
) -> u64 {
    let period = Duration::from_secs(1) / rate.max(1);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight));
    let limit = args.requests.unwrap_or(u64::MAX);
    let (mut scheduled, mut overloaded) = (0u64, 0u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    while scheduled < limit && (args.requests.is_some() || Instant::now() < deadline) {
        tick.tick().await;
        // When this call was due, by the schedule: the latency clock starts here.
        let due = started + period * u32::try_from(scheduled).unwrap_or(u32::MAX);
        scheduled += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            overloaded += 1;
            continue;
        };
        let mut client = clients[usize::try_from(scheduled).unwrap_or(0) % clients.len()].clone();
        let (payload, recorder) = (payload.clone(), recorder.clone());
        tasks.spawn(async move {
            let result = call(&mut client, &payload).await;
            recorder.record(due.elapsed(), result);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    overloaded
}

fn print_report(r: &Report) {
    let shape = match r.rate {
        Some(rate) => format!("open loop at {rate} calls/s"),
        None => format!("closed loop, {} in flight", r.concurrency.unwrap_or(0)),
    };
    println!("target {} ({shape}, {} connections, {} B payload)", r.target, r.connections, r.payload_bytes);
    println!(
        "calls {}  ok {}  errors {:?}  overloaded {}  in {:.2}s  =>  {:.0} calls/s",
        r.calls, r.ok, r.errors, r.overloaded, r.duration_s, r.throughput_rps
    );
    let l = &r.latency_us;
    println!(
        "latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
}
