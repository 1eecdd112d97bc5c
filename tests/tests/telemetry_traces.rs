//! Traces end to end: a request across three meshed services (`a` calls `b` calls `c`, each app
//! passing `traceparent` on) becomes one trace in the collector, found through the Zipkin API by
//! service and by trace id, with one CLIENT and one SERVER span per hop, linked parent to child.
//! Unsampled requests stay out, unless they fail.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_proto::demo::v1::EchoRequest;
use mesh_tests::ca::as_env;
use mesh_tests::etcd::Etcd;
use mesh_tests::eventually;
use mesh_tests::mesh::{Sidecar, client_sidecar_with};
use mesh_tests::process::Proc;
use mesh_tests::telemetry::{Collector, chained_echo, exporting};
use serde_json::Value;
use tonic::metadata::MetadataValue;

fn traceparent(trace_id: &str, span_id: &str, sampled: bool) -> MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace_id}-{span_id}-{}", if sampled { "01" } else { "00" }).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_across_three_services_is_one_linked_trace() {
    let etcd = Etcd::start().await;
    let collector = Collector::start(&[]).await;
    // Only the caller's decision samples here: new traces are not sampled.
    let env = exporting(&collector.endpoint(), "0");
    let env = as_env(&env);
    let mesh: Vec<(Proc, Sidecar)> = [("a", Some("b")), ("b", Some("c")), ("c", None)]
        .into_iter()
        .map(|(service, next)| chained_echo(&etcd.endpoint(), service, next, &env))
        .collect();
    for (_, sidecar) in &mesh {
        sidecar.ready().await;
    }
    // The calling proxy also writes a JSON access log.
    let mut client_env = env.clone();
    client_env.extend([("MESH_ACCESS_LOG", "true"), ("MESH_LOG_FORMAT", "json")]);
    let (_client_app, client) = client_sidecar_with(&etcd.endpoint(), &client_env).await;
    let mut echo = client.echo_client("a").await;

    // 1. A sampled request.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(EchoRequest { payload: b"hi".to_vec(), ..Default::default() });
    request.metadata_mut().insert("traceparent", traceparent(trace_id, caller_span, true));
    echo.unary(request).await.unwrap();

    let spans = eventually("all six spans of the trace", Duration::from_secs(20), || async {
        let (status, spans) = collector.api(&format!("/api/v2/trace/{trace_id}")).await;
        (status == 200 && spans.as_array()?.len() == 6).then_some(spans)
    })
    .await;
    let spans = spans.as_array().unwrap();
    // Walk the chain from the caller's span down: each span's child is the next hop.
    let mut parent = caller_span.to_string();
    let mut path = Vec::new();
    for _ in 0..6 {
        let child = spans
            .iter()
            .find(|s| s["parentId"] == parent.as_str())
            .unwrap_or_else(|| panic!("no child of {parent} in {spans:#?}"));
        path.push(format!(
            "{}:{}",
            child["localEndpoint"]["serviceName"].as_str().unwrap(),
            child["kind"].as_str().unwrap()
        ));
        assert_eq!(child["traceId"], trace_id);
        assert_eq!(child["name"], "mesh.demo.v1.Echo/Unary");
        assert_eq!(child["tags"]["rpc.grpc.status_code"], "0");
        parent = child["id"].as_str().unwrap().to_string();
    }
    assert_eq!(path, ["client:CLIENT", "a:SERVER", "a:CLIENT", "b:SERVER", "b:CLIENT", "c:SERVER"]);
    let client_span = spans.iter().find(|s| s["kind"] == "CLIENT" && s["localEndpoint"]["serviceName"] == "a").unwrap();
    assert_eq!(client_span["remoteEndpoint"]["serviceName"], "b");
    assert_eq!(client_span["tags"]["mesh.endpoint"], "b-1");
    assert!(client_span["duration"].as_u64().unwrap() > 0);

    // Found by service, by span name and by remote service, as Grafana searches.
    let (_, services) = collector.api("/api/v2/services").await;
    for s in ["a", "b", "c", "client"] {
        assert!(services.as_array().unwrap().contains(&Value::from(s)), "{services}");
    }
    let (_, names) = collector.api("/api/v2/spans?serviceName=c").await;
    assert_eq!(names, serde_json::json!(["mesh.demo.v1.Echo/Unary"]));
    let (_, remote) = collector.api("/api/v2/remoteServices?serviceName=a").await;
    assert_eq!(remote, serde_json::json!(["b", "client"]), "whom a calls, and who calls a");
    let (_, found) = collector.api("/api/v2/traces?serviceName=c&spanName=mesh.demo.v1.Echo/Unary&limit=10").await;
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].as_array().unwrap().len(), 6);
    let (_, none) = collector.api("/api/v2/traces?serviceName=c&minDuration=60000000").await;
    assert_eq!(none, serde_json::json!([]));

    // The access log line of that call carries its trace id.
    let log = client.proc.log();
    let access: Vec<Value> =
        log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|l| l["target"] == "access").collect();
    let line = access
        .iter()
        .find(|l| l["fields"]["trace_id"] == trace_id)
        .unwrap_or_else(|| panic!("no access log line with the trace id in:\n{log}"));
    assert_eq!(line["fields"]["grpc_status"], "OK");
    assert_eq!(line["fields"]["dst_service"], "a");
    assert_eq!(line["fields"]["grpc_method"], "/mesh.demo.v1.Echo/Unary");

    // 2. An unsampled request that succeeds leaves no spans.
    let quiet = "11111111111111111111111111111111";
    let mut request = tonic::Request::new(EchoRequest::default());
    request.metadata_mut().insert("traceparent", traceparent(quiet, caller_span, false));
    echo.unary(request).await.unwrap();

    // 3. An unsampled request that fails is exported anyway, at every hop it failed through.
    let failing = "22222222222222222222222222222222";
    let mut request = tonic::Request::new(EchoRequest { fail_code: 13, ..Default::default() });
    request.metadata_mut().insert("traceparent", traceparent(failing, caller_span, false));
    assert_eq!(echo.unary(request).await.unwrap_err().code(), tonic::Code::Internal);
    let failed = eventually("the failed trace", Duration::from_secs(20), || async {
        let (status, spans) = collector.api(&format!("/api/v2/trace/{failing}")).await;
        (status == 200 && spans.as_array()?.len() == 6).then_some(spans)
    })
    .await;
    for span in failed.as_array().unwrap() {
        assert_eq!(span["tags"]["otel.status_code"], "ERROR", "{span}");
    }
    let (_, errors) = collector.api("/api/v2/traces?annotationQuery=error&limit=100").await;
    assert_eq!(errors.as_array().unwrap().len(), 1);
    let (status, _) = collector.api(&format!("/api/v2/trace/{quiet}")).await;
    assert_eq!(status, 404, "a sampled-out, successful request exports nothing");

    // Bad queries get a clear 400.
    let (status, _) = collector.api("/api/v2/trace/not-hex").await;
    assert_eq!(status, 400);
    let (status, _) = collector.api("/api/v2/traces?limit=many").await;
    assert_eq!(status, 400);

    // The service graph, from the same spans.
    let graph = collector.scrape().await;
    for edge in [r#"client="a",server="b""#, r#"client="b",server="c""#, r#"client="client",server="a""#] {
        let line = graph
            .lines()
            .find(|l| l.starts_with("mesh_service_graph_requests_total{") && l.contains(edge))
            .unwrap_or_else(|| panic!("no edge {edge} in\n{graph}"));
        assert!(line.ends_with(" 2"), "{line}: the sampled call and the failed one");
    }
}
