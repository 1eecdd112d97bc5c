//! Backends that die or slow down under load, with real processes and real etcd.
//!
//! - A whole backend (app and proxy) SIGKILLed, one of three: no call of an idempotent method
//!   fails; a non-idempotent method loses at most the calls in flight at the kill, and no call is
//!   processed twice (each app appends the request ids it receives to a file, written as each
//!   call arrives, so the killed one's record survives it).
//! - One backend of three 500 ms slower: within 5 s it gets at most a tenth of the calls.
//! - A whole backend frozen (SIGSTOP of app and proxy, 3 s) under idempotent load with a 200 ms
//!   per-try timeout: at least 99.9 % of calls succeed, it is avoided at once (failure accrual
//!   makes it the costliest endpoint after its first timeout), and after SIGCONT it takes its
//!   share of the load again.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{EchoInstance, Sidecar, apply_policy, client_sidecar, metric_sum};
use tonic::transport::Channel;

/// Callers of the load: also the most calls in flight at once.
const CALLERS: usize = 4;

/// One call: its request id, when it ended, and the instance that answered or the status.
#[derive(Debug)]
struct Call {
    id: String,
    ended: Instant,
    result: Result<String, tonic::Status>,
}

/// Closed-loop callers, each call with a unique `x-request-id` and `delay_ms` of work at the app,
/// until `stop` (at most 60 s).
fn load(
    echo: &EchoClient<Channel>,
    tag: &str,
    delay_ms: u32,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Call>>> {
    (0..CALLERS)
        .map(|caller| {
            let (mut echo, stop, tag) = (echo.clone(), stop.clone(), tag.to_string());
            tokio::spawn(async move {
                let (started, mut calls) = (Instant::now(), Vec::new());
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let id = format!("{tag}-{caller}-{n}");
                    let mut request = tonic::Request::new(EchoRequest { delay_ms, ..Default::default() });
                    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
                    request.set_timeout(Duration::from_secs(5));
                    let result = echo.unary(request).await.map(|r| r.into_inner().instance);
                    calls.push(Call { id, ended: Instant::now(), result });
                }
                calls
            })
        })
        .collect()
}

async fn gather(callers: Vec<tokio::task::JoinHandle<Vec<Call>>>) -> Vec<Call> {
    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.unwrap());
    }
    calls
}

/// Request ids in the apps' logs, with how many times each was received.
fn received(logs: &[std::path::PathBuf]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for log in logs {
        for id in std::fs::read_to_string(log).unwrap_or_default().lines() {
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

/// Three backends of `service`, each app logging request ids under `dir`, with `extra` app flags.
async fn backends(
    etcd: &Etcd,
    service: &str,
    dir: &Path,
    extra: &[&[&str]; 3],
    sidecar_env: &[(&str, &str)],
) -> (Vec<EchoInstance>, Vec<std::path::PathBuf>) {
    let mut instances = Vec::new();
    let mut logs = Vec::new();
    for (i, extra) in extra.iter().enumerate() {
        let log = dir.join(format!("{service}-{i}.log"));
        let log_arg = log.to_string_lossy().into_owned();
        let mut args = vec!["--request-log", log_arg.as_str(), "--echo-metadata", "false"];
        args.extend_from_slice(extra);
        instances.push(EchoInstance::start_app_with(
            &etcd.endpoint(),
            service,
            &format!("{service}-{}", i + 1),
            &args,
            sidecar_env,
        ));
        logs.push(log);
    }
    for instance in &instances {
        instance.sidecar.ready().await;
    }
    (instances, logs)
}

async fn three_endpoints(client: &Sidecar, service: &str) {
    let series = format!(r#"mesh_endpoints{{dst_service="{service}"}}"#);
    mesh_tests::eventually("the client to see 3 endpoints", Duration::from_secs(5), || async {
        (metric_sum(&client.metrics().await, &series) == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_backend_fails_no_idempotent_call_and_processes_none_twice() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    for (service, idempotent) in [("idem", true), ("plain", false)] {
        let (mut instances, logs) = backends(&etcd, service, dir.path(), &[&[], &[], &[]], &[]).await;
        if idempotent {
            let policy = r#"{"version":"v1","methods":[{"match":"/mesh.demo.v1.Echo/Unary","idempotent":true}]}"#;
            apply_policy(&etcd, service, policy);
        }
        let echo = client.echo_client(service).await;
        echo.clone().unary(EchoRequest::default()).await.unwrap();
        three_endpoints(&client, service).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // the policy, followed within a second

        let stop = Arc::new(AtomicBool::new(false));
        let callers = load(&echo, service, 20, &stop);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The whole backend: app and proxy, without a word to anyone. Its record stays in etcd
        // until its lease runs out.
        instances[0].app.sigkill();
        instances[0].sidecar.proc.sigkill();
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        let calls = gather(callers).await;

        let failed: Vec<&Call> = calls.iter().filter(|c| c.result.is_err()).collect();
        let seen = received(&logs);
        let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
        let after_kill = calls.iter().filter(|c| c.ended > killed).count();
        eprintln!(
            "{service}: {} calls ({after_kill} after the kill), {} failed, {} received twice; first failure {:?}",
            calls.len(),
            failed.len(),
            twice.len(),
            failed.first()
        );
        assert!(after_kill > 100, "the load went on after the kill: {after_kill}");
        if idempotent {
            assert!(failed.is_empty(), "an idempotent call failed: {:?}", failed.first());
        } else {
            assert!(failed.len() <= CALLERS, "more failures than calls in flight at the kill: {}", failed.len());
            assert!(twice.is_empty(), "a non-idempotent call was processed twice: {twice:?}");
            // And every call that succeeded was processed, once.
            for call in calls.iter().filter(|c| c.result.is_ok()) {
                assert_eq!(seen.get(&call.id), Some(&1), "{}", call.id);
            }
        }
        for instance in &mut instances[1..] {
            instance.stop();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_500ms_slower_gets_at_most_a_tenth_of_the_calls_within_5s() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let slow: &[&str] = &["--slow-percent", "100", "--slow-ms", "500"];
    let (_instances, _logs) = backends(&etcd, "uneven", dir.path(), &[&[], &[], slow], &[]).await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let echo = client.echo_client("uneven").await;
    echo.clone().unary(EchoRequest::default()).await.unwrap();
    three_endpoints(&client, "uneven").await;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers = load(&echo, "uneven", 0, &stop);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = gather(callers).await;
    assert!(calls.iter().all(|c| c.result.is_ok()), "{:?}", calls.iter().find(|c| c.result.is_err()));
    let late: Vec<&Call> = calls.iter().filter(|c| c.ended >= started + Duration::from_secs(5)).collect();
    let to_slow = late.iter().filter(|c| c.result.as_deref().is_ok_and(|i| i == "uneven-3")).count();
    let share = to_slow as f64 / late.len() as f64;
    eprintln!("after 5 s: {to_slow} of {} calls to the slow backend ({:.2} %)", late.len(), share * 100.0);
    assert!(share <= 0.10, "the slow backend got {:.1} % of the calls after 5 s", share * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_is_avoided_at_once_and_takes_load_again_after_it_thaws() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The default lease (10 s), which outlives the freeze: the callers must judge by themselves.
    let lease = [("MESH_LEASE_TTL", "10s"), ("MESH_LEASE_KEEPALIVE_INTERVAL", "3s")];
    let (instances, _logs) = backends(&etcd, "frozen", dir.path(), &[&[], &[], &[]], &lease).await;
    let policy = r#"{"version":"v1","methods":[{"match":"/mesh.demo.v1.Echo/Unary","idempotent":true,"per_try_timeout_ms":200}]}"#;
    apply_policy(&etcd, "frozen", policy);
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let echo = client.echo_client("frozen").await;
    echo.clone().unary(EchoRequest::default()).await.unwrap();
    three_endpoints(&client, "frozen").await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the policy, followed within a second
    let picks = r#"mesh_balancer_picks_total{dst_service="frozen",endpoint="frozen-1"}"#;
    let picked = || async { metric_sum(&client.metrics().await, picks) };

    let stop = Arc::new(AtomicBool::new(false));
    let callers = load(&echo, "frozen", 0, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The whole backend, app and proxy: nothing answers, nothing closes, and its lease (10 s)
    // outlives the freeze, so only the callers' own judgement takes it out.
    let signal = |s| {
        instances[0].app.signal(s);
        instances[0].sidecar.proc.signal(s);
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frozen_from = picked().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let frozen_to = picked().await;
    eprintln!("picks of the frozen backend: {frozen_from} -> {frozen_to}");
    let while_frozen = frozen_to.saturating_sub(frozen_from);
    signal(nix::sys::signal::Signal::SIGCONT);
    let thawed = Instant::now();
    // Back at full load once its cost has decayed and its answers are fast again.
    mesh_tests::eventually("the thawed backend to take load again", Duration::from_secs(20), || async {
        let before = picked().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        (picked().await - before > 10).then_some(())
    })
    .await;
    let back_after = thawed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let calls = gather(callers).await;
    let failed = calls.iter().filter(|c| c.result.is_err()).count();
    let ejected = metric_sum(&client.metrics().await, r#"mesh_outlier_ejections_total{dst_service="frozen"}"#);
    eprintln!(
        "{} calls, {failed} failed; {while_frozen} picks of the frozen backend in 3 s, {ejected} ejections; back at load {back_after:?} after it thawed",
        calls.len()
    );
    assert!(while_frozen <= 10, "a frozen backend is avoided: {while_frozen} picks in 3 s");
    assert!(failed as f64 <= calls.len() as f64 * 0.001, "success below 99.9 %: {failed} of {}", calls.len());
}
