//! Overload protection in front of an app, with real processes: an echo app that works on 4
//! calls at once (20 ms each: 200 calls/s) and lines up the rest, offered twice that, open loop.
//! With the inbound concurrency limit on (the default), what the app cannot take is refused at
//! its proxy, fast and typed (RESOURCE_EXHAUSTED, `mesh-error: app_overloaded`, a pushback), while
//! the app stays busy (goodput at least 90 % of its capacity), admitted calls wait a bounded time
//! and the proxy's memory stays flat. The same app and load with the limit off is the control: its
//! line, and every call's latency, grows for as long as the overload lasts.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::etcd::Etcd;
use mesh_tests::free_port;
use mesh_tests::mesh::{Sidecar, client_sidecar};
use mesh_tests::process::Proc;
use tonic::Code;
use tonic::transport::Channel;

/// The app's capacity: 4 calls at once, 20 ms each (nominally 200 calls/s; measured below).
const WORKERS: u32 = 4;
const WORK: Duration = Duration::from_millis(20);
const CAPACITY_PER_S: f64 = 200.0;

/// One call's outcome.
#[derive(Debug)]
struct Call {
    started: Instant,
    latency: Duration,
    result: Result<(), (Code, String, Option<String>, Option<String>)>,
}

/// A capacity-bound echo app behind its own sidecar, as service `service`.
fn bounded_app(etcd: &Etcd, service: &str, sidecar_env: &[(&str, &str)]) -> (Proc, Sidecar, String) {
    let app_addr = format!("127.0.0.1:{}", free_port());
    let workers = WORKERS.to_string();
    let app = Proc::start(
        "mesh-demo",
        &[
            "echo",
            "--listen",
            &app_addr,
            "--instance-id",
            &format!("{service}-1"),
            "--max-concurrency",
            &workers,
            "--echo-metadata",
            "false",
        ],
        &[],
    );
    let sidecar = Sidecar::start(&etcd.endpoint(), service, &format!("{service}-1"), &app_addr, sidecar_env);
    (app, sidecar, app_addr)
}

/// What the app really serves, called directly by twice its workers for 2 s, calls a second.
async fn measured_capacity(app_addr: &str) -> f64 {
    let app = EchoClient::connect(format!("http://{app_addr}")).await.unwrap();
    let start = Instant::now();
    let callers: Vec<_> = (0..2 * WORKERS)
        .map(|_| {
            let mut app = app.clone();
            tokio::spawn(async move {
                let mut done = 0u32;
                let ms = u32::try_from(WORK.as_millis()).unwrap();
                while start.elapsed() < Duration::from_secs(2) {
                    app.unary(EchoRequest { delay_ms: ms, ..Default::default() }).await.unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for caller in callers {
        done += caller.await.unwrap();
    }
    f64::from(done) / start.elapsed().as_secs_f64()
}

/// `per_s` calls a second for `run`, open loop (each call its own task, a 10 s deadline).
async fn offer(echo: &EchoClient<Channel>, per_s: f64, run: Duration) -> Vec<Call> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    let start = Instant::now();
    let mut calls = Vec::new();
    while start.elapsed() < run {
        tick.tick().await;
        let mut echo = echo.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let ms = u32::try_from(WORK.as_millis()).unwrap();
            let mut request = tonic::Request::new(EchoRequest { delay_ms: ms, ..Default::default() });
            request.set_timeout(Duration::from_secs(10));
            let result = echo.unary(request).await.map(|_| ()).map_err(|status| {
                let header = |name: &str| status.metadata().get(name).and_then(|v| v.to_str().ok()).map(String::from);
                (status.code(), status.message().to_string(), header("mesh-error"), header("grpc-retry-pushback-ms"))
            });
            Call { started, latency: started.elapsed(), result }
        }));
    }
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        out.push(call.await.unwrap());
    }
    out
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let at = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[at]
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_capacity_is_refused_fast_and_typed_with_goodput_kept() {
    let etcd = Etcd::start().await;
    let (_app, server, app_addr) = bounded_app(&etcd, "bounded", &[]);
    let (_control_app, control, _) = bounded_app(&etcd, "unlimited", &[("MESH_INBOUND_CONCURRENCY_LIMIT", "off")]);
    server.ready().await;
    control.ready().await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let capacity = measured_capacity(&app_addr).await;
    assert!(capacity > CAPACITY_PER_S * 0.7, "the app serves {capacity:.0} calls/s");

    // Warm up at half the capacity: connections made, the app's unloaded latency learnt.
    let echo = client.echo_client("bounded").await;
    let warm = offer(&echo, CAPACITY_PER_S / 2.0, Duration::from_secs(2)).await;
    assert!(warm.iter().all(|c| c.result.is_ok()), "at half the capacity nothing fails: {warm:?}");
    let rss_before = rss(server.proc.pid());

    let run = Duration::from_secs(8);
    let calls = offer(&echo, 2.0 * CAPACITY_PER_S, run).await;
    let rss_growth = rss(server.proc.pid()).saturating_sub(rss_before);

    // Judged after the first 2 s, once the limit has learnt the overload.
    let settled = calls[0].started + Duration::from_secs(2);
    let late: Vec<&Call> = calls.iter().filter(|c| c.started >= settled).collect();
    let span = run.saturating_sub(Duration::from_secs(2)).as_secs_f64();
    let ok: Vec<Duration> = late.iter().filter(|c| c.result.is_ok()).map(|c| c.latency).collect();
    let refused: Vec<&&Call> = late.iter().filter(|c| c.result.is_err()).collect();
    let goodput = ok.len() as f64 / span;
    let ok_p99 = percentile(ok.clone(), 0.99);
    let refused_p99 = percentile(refused.iter().map(|c| c.latency).collect(), 0.99);
    eprintln!(
        "app capacity {capacity:.0}/s; limit on: {} offered, {} ok ({goodput:.0}/s, p99 {ok_p99:?}), {} refused (p99 {refused_p99:?}), proxy RSS +{} KiB",
        late.len(),
        ok.len(),
        refused.len(),
        rss_growth / 1024
    );
    for call in &refused {
        let (code, message, reason, pushback) = call.result.as_ref().unwrap_err();
        assert_eq!(*code, Code::ResourceExhausted, "{message}");
        assert_eq!(reason.as_deref(), Some("app_overloaded"), "{message}");
        assert!(message.contains("concurrency limit"), "{message}");
        let pushback: u64 = pushback.as_deref().unwrap_or_default().parse().unwrap_or_else(|_| panic!("{call:?}"));
        assert!((1..=1000).contains(&pushback), "{pushback}");
    }
    assert!(goodput >= 0.9 * capacity, "goodput {goodput:.0}/s under a {capacity:.0}/s capacity");
    assert!(refused.len() as f64 >= 0.3 * late.len() as f64, "about half must be refused: {}", refused.len());
    assert!(refused_p99 <= Duration::from_millis(50), "refusals take {refused_p99:?}");
    assert!(ok_p99 <= Duration::from_millis(300), "admitted calls wait {ok_p99:?}: the line is not bounded");
    assert!(rss_growth < 20 * 1024 * 1024, "proxy RSS grew {} KiB", rss_growth / 1024);
    let metrics = server.metrics().await;
    let limit_line = metrics.lines().find(|l| l.starts_with("mesh_inbound_concurrency_limit ")).unwrap();
    let limit: f64 = limit_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((f64::from(WORKERS)..=100.0).contains(&limit), "{limit_line}");
    assert!(metrics.contains(r#"mesh_proxy_errors_total{direction="inbound",reason="app_overloaded"}"#));

    // The control: the same overload with the limit off lines calls up in front of the app.
    let echo = client.echo_client("unlimited").await;
    offer(&echo, CAPACITY_PER_S / 2.0, Duration::from_secs(1)).await;
    let calls = offer(&echo, 2.0 * CAPACITY_PER_S, Duration::from_secs(4)).await;
    let latencies: Vec<Duration> = calls.iter().filter(|c| c.result.is_ok()).map(|c| c.latency).collect();
    let p99 = percentile(latencies, 0.99);
    eprintln!("limit off: {} offered, p99 {p99:?}", calls.len());
    assert!(p99 > Duration::from_secs(1), "without the limit the line should grow: p99 {p99:?}");
}
