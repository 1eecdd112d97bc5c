//! Traffic policy with real processes: routes of a service policy (`docs/policy.md`) applied with
//! `meshctl`, followed live by the caller's proxy. A 90/10 canary by `version` label over one
//! client connection, shifted to 50/50 under load; a header that always reaches the canary; sticky
//! users; fault injection that hurts only the calls that ask for it.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::etcd::Etcd;
use mesh_tests::mesh::{
    EchoInstance, app_counts, apply_policy, client_sidecar, metric_sum, policy_in_force, versioned_instances,
};
use tonic::transport::Channel;

fn split(v1: u32, v2: u32) -> String {
    format!(
        r#"{{"version":"v1","subsets":{{"v1":{{"version":"v1"}},"v2":{{"version":"v2"}}}},
            "routes":[{{"name":"canary","split":[{{"subset":"v1","weight":{v1}}},{{"subset":"v2","weight":{v2}}}]}}]}}"#
    )
}

/// The tests that measure shares and latencies run one at a time, so each measures its own mesh.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One call with `headers`: the instance that answered, or the status.
async fn call(echo: &mut EchoClient<Channel>, headers: &[(&'static str, &str)]) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(EchoRequest::default());
    request.set_timeout(Duration::from_secs(5));
    for (k, v) in headers {
        request.metadata_mut().insert(*k, v.parse().unwrap());
    }
    echo.unary(request).await.map(|r| r.into_inner().instance)
}

/// `n` calls, 16 at a time over the one connection: answers per instance, and failures.
async fn calls(echo: &EchoClient<Channel>, n: usize) -> (HashMap<String, usize>, usize) {
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let mut echo = echo.clone();
            tokio::spawn(async move {
                let (mut by, mut failed) = (HashMap::<String, usize>::new(), 0);
                for _ in (t..n).step_by(16) {
                    match call(&mut echo, &[]).await {
                        Ok(instance) => *by.entry(instance).or_default() += 1,
                        Err(_) => failed += 1,
                    }
                }
                (by, failed)
            })
        })
        .collect();
    let (mut by, mut failed) = (HashMap::new(), 0);
    for task in tasks {
        let (b, f) = task.await.unwrap();
        failed += f;
        for (k, v) in b {
            *by.entry(k).or_default() += v;
        }
    }
    (by, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_split_holds_over_one_connection_and_shifts_within_a_second() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let _instances = versioned_instances(&etcd.endpoint(), "web", &["v1", "v2"]).await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let echo = client.echo_client("web").await;

    apply_policy(&etcd, "web", &split(90, 10));
    policy_in_force(&etcd, "web", &[&client]).await;
    let (by, failed) = calls(&echo, 10_000).await;
    let v2 = by.get("web-v2").copied().unwrap_or(0);
    println!("90/10: {by:?}, failed {failed}");
    assert_eq!(failed, 0);
    assert!((850..=1150).contains(&v2), "{v2} of 10 000 calls on v2, want 10 % +- 1.5 %");

    // Shift to 50/50 under load: the calls sent from 1 s after the apply split evenly, none fails.
    let stop = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (mut echo, stop) = (echo.clone(), stop.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                while stop.load(Ordering::Relaxed) == 0 {
                    let sent = Instant::now();
                    let answer = call(&mut echo, &[]).await;
                    log.push((sent, answer.is_ok(), answer.is_ok_and(|i| i == "web-v2")));
                }
                log
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applied = Instant::now();
    apply_policy(&etcd, "web", &split(50, 50));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(1, Ordering::Relaxed);
    let mut log = Vec::new();
    for task in load {
        log.extend(task.await.unwrap());
    }
    let failed = log.iter().filter(|(_, ok, _)| !ok).count();
    let after: Vec<_> = log.iter().filter(|(sent, _, _)| *sent > applied + Duration::from_secs(1)).collect();
    let on_v2 = after.iter().filter(|(_, _, v2)| *v2).count();
    println!("50/50 from 1 s after the apply: {on_v2} of {} on v2; {failed} of {} failed", after.len(), log.len());
    assert_eq!(failed, 0, "no call fails while the policy changes");
    assert!(after.len() > 500, "{} calls", after.len());
    let share = on_v2 as f64 / after.len() as f64;
    assert!((0.45..=0.55).contains(&share), "{share:.3} on v2 after the shift");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_reaches_the_canary_and_sticky_users_stay_on_their_subset() {
    let etcd = Etcd::start().await;
    let _instances = versioned_instances(&etcd.endpoint(), "web", &["v1", "v2"]).await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let mut echo = client.echo_client("web").await;
    apply_policy(
        &etcd,
        "web",
        r#"{"version":"v1","subsets":{"v1":{"version":"v1"},"v2":{"version":"v2"}},
            "routes":[{"name":"testers","match":{"headers":[{"name":"x-canary","exact":"1"}]},
                       "split":[{"subset":"v2","weight":100}]},
                      {"name":"users","split":[{"subset":"v1","weight":50},{"subset":"v2","weight":50}],
                       "sticky":{"header":"x-user"}}]}"#,
    );
    policy_in_force(&etcd, "web", &[&client]).await;

    for _ in 0..200 {
        assert_eq!(call(&mut echo, &[("x-canary", "1")]).await.unwrap(), "web-v2", "x-canary: 1 always reaches v2");
    }
    let mut unsticky = HashMap::<String, usize>::new();
    for _ in 0..200 {
        *unsticky.entry(call(&mut echo, &[("x-canary", "0")]).await.unwrap()).or_default() += 1;
    }
    assert_eq!(unsticky.len(), 2, "without the header the split applies: {unsticky:?}");

    let mut subsets_used = HashMap::<String, usize>::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let first = call(&mut echo, &[("x-user", &user)]).await.unwrap();
        for _ in 0..10 {
            assert_eq!(call(&mut echo, &[("x-user", &user)]).await.unwrap(), first, "{user} moved");
        }
        *subsets_used.entry(first).or_default() += 1;
    }
    println!("sticky users per subset: {subsets_used:?}");
    assert_eq!(subsets_used.len(), 2, "users spread over both subsets: {subsets_used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_hit_only_the_calls_that_select_them() {
    let etcd = Etcd::start().await;
    let instances = versioned_instances(&etcd.endpoint(), "web", &["v1", "v2"]).await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let mut echo = client.echo_client("web").await;
    apply_policy(
        &etcd,
        "web",
        r#"{"version":"v1","routes":[
            {"name":"abort-tests","match":{"headers":[{"name":"x-fault","exact":"abort"}]},
             "fault":{"abort":{"percent":20,"code":"ABORTED"}}},
            {"name":"delay-tests","match":{"headers":[{"name":"x-fault","exact":"delay"}]},
             "fault":{"delay":{"percent":100,"ms":200}}},
            {"name":"delay-past-deadline","match":{"headers":[{"name":"x-fault","exact":"delay-short"}]},
             "fault":{"delay":{"percent":100,"ms":200}},"settings":{"timeout_ms":50}}]}"#,
    );
    policy_in_force(&etcd, "web", &[&client]).await;

    let (mut aborted, mut other) = (0, 0);
    for _ in 0..2000 {
        match call(&mut echo, &[("x-fault", "abort")]).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::Aborted => {
                assert!(s.message().contains("fault injected by route \"abort-tests\""), "{}", s.message());
                aborted += 1;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
        if call(&mut echo, &[]).await.is_err() {
            other += 1;
        }
    }
    println!("aborted {aborted} of 2000 selected calls, {other} of 2000 others failed");
    assert!((340..=460).contains(&aborted), "{aborted} of 2000 aborted, want 20 % +- 3 %");
    assert_eq!(other, 0, "calls without the header are never hurt");

    let delayed = Instant::now();
    for _ in 0..5 {
        call(&mut echo, &[("x-fault", "delay")]).await.unwrap();
    }
    let delayed = delayed.elapsed() / 5;
    let plain = Instant::now();
    for _ in 0..5 {
        call(&mut echo, &[]).await.unwrap();
    }
    let plain = plain.elapsed() / 5;
    println!("delayed calls took {delayed:?} each, plain ones {plain:?}");
    assert!(delayed >= Duration::from_millis(200) && delayed < Duration::from_millis(400), "{delayed:?}");
    assert!(plain < Duration::from_millis(100), "{plain:?}");
    // A deadline shorter than the delay: DEADLINE_EXCEEDED at the deadline, never sent.
    // A deadline shorter than the delay (the route's own 50 ms, for a caller that sends none, so
    // no client timer races the proxy): DEADLINE_EXCEEDED at the deadline, never sent.
    let before = app_counts(&instances).await.0;
    let sent = Instant::now();
    let mut request = tonic::Request::new(EchoRequest::default());
    request.metadata_mut().insert("x-fault", "delay-short".parse().unwrap());
    let status = echo.unary(request).await.unwrap_err();
    let took = sent.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("injected delay"), "{}", status.message());
    assert!(took < Duration::from_millis(180), "answered at the 50 ms deadline, not after the delay: {took:?}");
    assert_eq!(app_counts(&instances).await.0, before, "and sent nothing");
}

/// The median of `n` sequential calls' latencies, and who answered them.
async fn sequential(echo: &mut EchoClient<Channel>, n: usize) -> (Duration, HashMap<String, usize>) {
    let (mut latencies, mut by) = (Vec::new(), HashMap::<String, usize>::new());
    for _ in 0..n {
        let sent = Instant::now();
        *by.entry(call(echo, &[]).await.unwrap()).or_default() += 1;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    (latencies[n / 2], by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_shadow_that_is_slow_and_failing_never_reaches_the_caller() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let _primary = versioned_instances(&etcd.endpoint(), "web", &["v1"]).await;
    let broken = ["--slow-percent", "100", "--slow-ms", "300", "--fail-percent", "50"];
    let shadow = EchoInstance::start_app_with(&etcd.endpoint(), "shadow", "shadow-1", &broken, &[]);
    shadow.sidecar.ready().await;
    let (_client_app, client) = client_sidecar(&etcd.endpoint()).await;
    let mut echo = client.echo_client("web").await;
    let shadow = [shadow];

    apply_policy(&etcd, "web", r#"{"version":"v1","routes":[{"name":"all"}]}"#);
    policy_in_force(&etcd, "web", &[&client]).await;
    let (plain, _) = sequential(&mut echo, 300).await;
    apply_policy(
        &etcd,
        "web",
        r#"{"version":"v1","routes":[{"name":"all","mirror":{"service":"shadow","percent":100}}]}"#,
    );
    policy_in_force(&etcd, "web", &[&client]).await;
    let (mirrored, by) = sequential(&mut echo, 300).await;
    println!("p50 {plain:?} without the mirror, {mirrored:?} with it; answered by {by:?}");
    assert_eq!(by.get("web-v1"), Some(&300), "only the primary answers: {by:?}");
    assert!(mirrored < plain * 2 + Duration::from_millis(2), "p50 {mirrored:?} against {plain:?}");

    // A body over the replay buffer is not copied.
    let mut big = tonic::Request::new(EchoRequest { payload: vec![7; 100 * 1024], ..EchoRequest::default() });
    big.set_timeout(Duration::from_secs(5));
    echo.unary(big).await.unwrap();

    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics = client.metrics().await;
    let outcome =
        |o: &str| metric_sum(&metrics, &format!("mesh_mirrored_total{{dst_service=\"shadow\",outcome=\"{o}\"}}"));
    let (answered, failed, skipped) = (outcome("answered"), outcome("failed"), outcome("skipped"));
    let received = app_counts(&shadow).await.0;
    println!("mirrored: {answered} answered, {failed} failed, {skipped} skipped; the shadow's app saw {received}");
    assert_eq!(answered + failed + skipped, 301, "every call counted once");
    assert!(skipped >= 1, "the large body was skipped");
    assert!(answered > 50 && failed > 50, "the shadow answered some and failed some");
    assert_eq!(received, answered + failed, "the shadow received what was sent");
}
