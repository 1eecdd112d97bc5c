//! gRPC-Web through the gateway, spoken by hand over raw HTTP/1.1 (no gRPC library): text and
//! binary modes, the trailer frame, a server stream arriving message by message, CORS.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, Instant};

use base64::Engine as _;
use mesh_proto::demo::v1::{EchoReply, EchoRequest};
use mesh_tests::gateway::{DevCa, Gateway, echo_behind_gateway};
use mesh_tests::mesh::EchoInstance;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const DOCUMENT: &str = "cors: { allowed_origins: [\"http://app.test\"], max_age_s: 120 }\n\
routes:\n  - { name: echo, grpc_service: mesh.demo.v1.Echo, service: echo }\n";

async fn gateway() -> (mesh_tests::etcd::Etcd, EchoInstance, DevCa, Gateway) {
    echo_behind_gateway(DOCUMENT, &[]).await
}

/// A gRPC message frame.
fn frame(request: &EchoRequest) -> Vec<u8> {
    let message = request.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&message);
    out
}

/// A gRPC-Web response body, split into its frames: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "a truncated frame");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "bytes after the last frame");
    out
}

/// Base64 as a gRPC-Web text body: padded segments one after another.
fn decode_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for group in (0..text.len()).step_by(4) {
        if text[group + 3] == b'=' || group + 4 == text.len() {
            out.extend(B64.decode(&text[start..group + 4]).unwrap());
            start = group + 4;
        }
    }
    out
}

/// Reads a chunked HTTP/1.1 response: the head, and the body's chunks with when each arrived.
async fn read_chunked(tcp: &mut TcpStream, started: Instant) -> (String, Vec<(Duration, Vec<u8>)>) {
    let mut raw = Vec::new();
    let mut chunks = Vec::new();
    let mut buf = [0u8; 65536];
    let mut head: Option<(String, usize)> = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap().unwrap();
        raw.extend_from_slice(&buf[..n]);
        if head.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
        {
            head = Some((String::from_utf8_lossy(&raw[..end]).to_string(), end + 4));
        }
        if let Some((text, at)) = &mut head {
            assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
            // Every whole chunk received so far.
            while let Some(line_end) = raw[*at..].windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(std::str::from_utf8(&raw[*at..*at + line_end]).unwrap(), 16).unwrap();
                let data_at = *at + line_end + 2;
                if raw.len() < data_at + size + 2 {
                    break;
                }
                if size == 0 {
                    return (text.clone(), chunks);
                }
                chunks.push((started.elapsed(), raw[data_at..data_at + size].to_vec()));
                *at = data_at + size + 2;
            }
        }
        assert!(n > 0, "closed before the last chunk: {}", String::from_utf8_lossy(&raw));
    }
}

async fn post(addr: &str, path: &str, content_type: &str, body: &[u8], extra: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: api.mesh.test\r\nContent-Type: {content_type}\r\nX-Grpc-Web: 1\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

#[tokio::test]
async fn grpc_web_text_over_raw_http1_gets_base64_frames_and_the_trailer_frame() {
    let (_etcd, _echo, _ca, gateway) = gateway().await;
    let request = EchoRequest { payload: b"from-a-browser".to_vec(), ..EchoRequest::default() };
    let body = B64.encode(frame(&request));
    let mut tcp = post(
        &gateway.plain,
        "/mesh.demo.v1.Echo/Unary",
        "application/grpc-web-text",
        body.as_bytes(),
        "Origin: http://app.test\r\nx-echo-lang: web\r\n",
    )
    .await;
    let (head, chunks) = read_chunked(&mut tcp, Instant::now()).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(lower.contains("content-type: application/grpc-web-text+proto"), "{head}");
    assert!(lower.contains("access-control-allow-origin: http://app.test"), "{head}");
    assert!(lower.contains("access-control-expose-headers: grpc-status"), "{head}");
    assert!(lower.contains("x-echo-lang: web"), "metadata comes back as headers: {head}");

    let text: Vec<u8> = chunks.into_iter().flat_map(|(_, c)| c).collect();
    assert!(text.iter().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)), "not base64");
    let frames = frames(&decode_text(&text));
    assert_eq!(frames.len(), 2, "one message and the trailer frame: {frames:?}");
    assert_eq!(frames[0].0, 0);
    let reply = EchoReply::decode(&frames[0].1[..]).unwrap();
    assert_eq!((reply.payload.as_slice(), reply.instance.as_str()), (&b"from-a-browser"[..], "echo-1"));
    assert_eq!(frames[1].0, 0x80);
    let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
}

#[tokio::test]
async fn a_server_stream_arrives_message_by_message_and_errors_carry_status_and_message() {
    let (_etcd, _echo, _ca, gateway) = gateway().await;
    // Binary mode: five replies 200 ms apart.
    let request = EchoRequest { payload: b"s".to_vec(), count: 5, delay_ms: 200, ..EchoRequest::default() };
    let started = Instant::now();
    let mut tcp =
        post(&gateway.plain, "/mesh.demo.v1.Echo/ServerStream", "application/grpc-web+proto", &frame(&request), "")
            .await;
    let (head, chunks) = read_chunked(&mut tcp, started).await;
    assert!(head.to_ascii_lowercase().contains("content-type: application/grpc-web+proto"), "{head}");
    let body: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.clone()).collect();
    let frames = frames(&body);
    let seqs: Vec<u64> = frames.iter().filter(|f| f.0 == 0).map(|f| EchoReply::decode(&f.1[..]).unwrap().seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    assert_eq!(frames.last().unwrap().0, 0x80);
    let (first, last) = (chunks[0].0, chunks.last().unwrap().0);
    assert!(
        last - first >= Duration::from_millis(600),
        "the messages came together ({first:?}..{last:?}), not as sent"
    );

    // A failure: trailers-only, the status in the headers.
    let request = EchoRequest { fail_code: 5, fail_message: "no such thing".into(), ..EchoRequest::default() };
    let body = B64.encode(frame(&request));
    let mut tcp =
        post(&gateway.plain, "/mesh.demo.v1.Echo/Unary", "application/grpc-web-text", body.as_bytes(), "").await;
    let mut raw = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut raw)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&raw[..n]).to_ascii_lowercase();
    // (grpc-message is percent-encoded, as gRPC says.)
    assert!(head.contains("grpc-status: 5") && head.contains("grpc-message: no%20such%20thing"), "{head}");

    // Not base64: the call fails, the gateway keeps serving.
    let mut tcp = post(&gateway.plain, "/mesh.demo.v1.Echo/Unary", "application/grpc-web-text", b"@@@@", "").await;
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut raw)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&raw[..n]).to_ascii_lowercase();
    assert!(!head.contains("grpc-status: 0\r\n"), "{head}");
}

#[tokio::test]
async fn cors_preflights_are_answered_at_the_gateway() {
    let (_etcd, _echo, _ca, gateway) = gateway().await;
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /mesh.demo.v1.Echo/Unary HTTP/1.1\r\nHost: api.mesh.test\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type,x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        )
    };
    for (origin, expected) in [("http://app.test", "HTTP/1.1 204"), ("http://evil.test", "HTTP/1.1 403")] {
        let mut tcp = TcpStream::connect(&gateway.plain).await.unwrap();
        tcp.write_all(preflight(origin).as_bytes()).await.unwrap();
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut raw)).await.unwrap().unwrap();
        assert!(raw.starts_with(expected), "{origin}: {raw}");
        let lower = raw.to_ascii_lowercase();
        if expected.ends_with("204") {
            assert!(lower.contains("access-control-allow-origin: http://app.test"), "{raw}");
            assert!(lower.contains("access-control-allow-headers: content-type,x-grpc-web"), "{raw}");
            assert!(lower.contains("access-control-max-age: 120"), "{raw}");
        } else {
            assert!(!lower.contains("access-control-allow-origin"), "{raw}");
            assert!(raw.contains("\"http://evil.test\""), "the refusal names the origin: {raw}");
        }
    }
    let metrics = gateway.proxy.metrics().await;
    assert!(!metrics.contains(r#"grpc_method="/mesh.demo.v1.Echo/Unary""#), "a preflight never reaches the service");
}

#[tokio::test]
async fn a_real_browser_loads_the_gateways_page_and_calls_the_mesh_over_grpc_web() {
    let etcd = mesh_tests::etcd::Etcd::start().await;
    let echo = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    echo.sidecar.ready().await;
    let ca = DevCa::new();
    let www = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose/gateway/www");
    let document = format!(
        "routes:\n  - {{ name: echo, grpc_service: mesh.demo.v1.Echo, service: echo }}\n  - {{ name: page, path_prefix: /, files: {www} }}\n"
    );
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document, &[]).await;

    let url = format!("http://{}/", gateway.plain);
    let profile = tempfile::tempdir().unwrap();
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                &profile_arg,
                "--virtual-time-budget=15000",
                "--dump-dom",
                &url,
            ])
            .output()
            .unwrap_or_else(|e| panic!("chromium (Debian's `chromium`, installed by scripts/install-deps.sh): {e}"))
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("reply: hello from a browser") && dom.contains("from instance: echo-1"),
        "the page did not show the reply:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = gateway.proxy.metrics().await;
    let ok = r#"mesh_requests_total{direction="outbound",dst_service="echo",grpc_method="/mesh.demo.v1.Echo/Unary",grpc_status="OK",src_service="api-gateway"}"#;
    assert_eq!(mesh_tests::mesh::metric_sum(&metrics, ok), 1, "the browser's call went through the mesh");
}
