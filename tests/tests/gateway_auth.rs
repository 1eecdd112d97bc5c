//! Edge authentication at the gateway: JWT bearer tokens (RS256 and ES256) checked against a JWKS
//! file; the subject reaches the app in a header the gateway controls; every way a token can be
//! wrong is refused with its reason and counted.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use mesh_tests::gateway::{DevCa, Gateway};
use mesh_tests::mesh::{EchoInstance, metric_sum};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Request metadata: (name, value).
type Headers = Vec<(&'static str, String)>;

const ISSUER: &str = "https://issuer.mesh.test";
const AUDIENCE: &str = "mesh-api";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The test issuer's keys: the RSA fixture and a fresh P-256 key.
struct Issuer {
    rsa: EncodingKey,
    ec: EncodingKey,
    ec_jwk: serde_json::Value,
}

impl Issuer {
    fn new() -> Self {
        let pem = include_str!("../fixtures/jwt-rsa.pem");
        let PrivateKeyDer::Pkcs1(rsa) = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap() else {
            panic!("the fixture is PKCS#1")
        };
        let ec_key = rcgen::KeyPair::generate().unwrap();
        let point = ec_key.public_key_raw();
        let ec_jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "test-ec", "alg": "ES256", "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        });
        Self {
            rsa: EncodingKey::from_rsa_der(rsa.secret_pkcs1_der()),
            ec: EncodingKey::from_ec_der(&ec_key.serialize_der()),
            ec_jwk,
        }
    }

    fn jwks(&self) -> String {
        let rsa: serde_json::Value = serde_json::from_str(include_str!("../fixtures/jwt-rsa.jwk.json")).unwrap();
        serde_json::json!({ "keys": [rsa, self.ec_jwk] }).to_string()
    }

    fn token(&self, algorithm: Algorithm, claims: serde_json::Value) -> String {
        let (kid, key) = match algorithm {
            Algorithm::RS256 => ("test-rsa", &self.rsa),
            _ => ("test-ec", &self.ec),
        };
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "iat": now() })
}

async fn client(gateway: &Gateway, host: &str) -> EchoClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.plain))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

/// A unary call with `headers`: the metadata the app saw, or the status.
async fn call(
    client: &mut EchoClient<Channel>,
    headers: &[(&'static str, String)],
) -> Result<serde_json::Value, tonic::Status> {
    let mut request = tonic::Request::new(EchoRequest::default());
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let reply = client.unary(request).await?.into_inner();
    Ok(serde_json::to_value(reply.metadata).unwrap())
}

#[tokio::test]
async fn tokens_are_checked_the_subject_reaches_the_app_and_refusals_say_why() {
    let etcd = mesh_tests::etcd::Etcd::start().await;
    let echo = EchoInstance::start(&etcd.endpoint(), "echo", "echo-1");
    echo.sidecar.ready().await;
    let ca = DevCa::new();
    let issuer = Issuer::new();
    let jwks = ca.dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    let document = format!(
        "access_log: true\nauth: {{ jwks_file: {}, issuer: \"{ISSUER}\", audiences: [{AUDIENCE}] }}\nroutes:\n\
         \x20 - {{ name: secure, hosts: [secure.test], grpc_service: mesh.demo.v1.Echo, service: echo, auth: authenticated }}\n\
         \x20 - {{ name: open, grpc_service: mesh.demo.v1.Echo, service: echo }}\n",
        jwks.display()
    );
    let gateway = Gateway::start(&etcd.endpoint(), ca.dir.path(), &document, &[]).await;
    let mut secure = client(&gateway, "secure.test").await;
    let mut open = client(&gateway, "open.test").await;
    let bearer = |token: String| ("authorization", format!("Bearer {token}"));

    // Valid tokens of both algorithms pass, and the app sees the subject, not what was sent.
    let mut sent = Vec::new();
    for (algorithm, sub) in [(Algorithm::RS256, "user-rsa"), (Algorithm::ES256, "user-ec")] {
        let token = issuer.token(algorithm, claims(sub));
        sent.push(token.clone());
        let seen = call(&mut secure, &[bearer(token), ("x-mesh-subject", "admin".into())]).await.unwrap();
        assert_eq!(seen["x-mesh-subject"], sub, "{algorithm:?}: {seen}");
    }
    // On a public route the outside caller's subject header is dropped.
    let seen = call(&mut open, &[("x-mesh-subject", "admin".into())]).await.unwrap();
    assert!(seen.get("x-mesh-subject").is_none(), "{seen}");

    // Every way a token is wrong: UNAUTHENTICATED, the reason in the message.
    let mut expired = claims("u");
    expired["exp"] = (now() - 600).into();
    let mut wrong_audience = claims("u");
    wrong_audience["aud"] = "someone-else".into();
    let mut no_subject = claims("u");
    no_subject.as_object_mut().unwrap().remove("sub");
    let forged = {
        let other = Issuer::new();
        other.token(Algorithm::ES256, claims("u"))
    };
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims("u").to_string().as_bytes()));
    // (case, request headers, in the message, counted reason)
    let cases: Vec<(&str, Headers, &str, &str)> = vec![
        ("missing", vec![], "no bearer token", "missing"),
        ("expired", vec![bearer(issuer.token(Algorithm::RS256, expired))], "expired", "expired"),
        (
            "audience",
            vec![bearer(issuer.token(Algorithm::ES256, wrong_audience))],
            "another audience",
            "wrong_audience",
        ),
        ("signature", vec![bearer(forged)], "signature", "bad_signature"),
        ("alg none", vec![bearer(none)], "alg `none`", "algorithm"),
        ("no sub", vec![bearer(issuer.token(Algorithm::RS256, no_subject))], "`sub`", "missing_claim"),
        ("garbage", vec![bearer("not.a.jwt".into())], "not a JWT", "malformed"),
    ];
    for (case, headers, message, _) in &cases {
        let status = call(&mut secure, headers).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{case}: {status:?}");
        assert!(status.message().contains(message), "{case}: {}", status.message());
    }
    let metrics = gateway.proxy.metrics().await;
    for (case, _, _, reason) in &cases {
        let series = format!(r#"mesh_gateway_auth_refused_total{{reason="{reason}"}}"#);
        assert_eq!(metric_sum(&metrics, &series), 1, "{case}: {series}\n{metrics}");
    }
    assert_eq!(metric_sum(&metrics, r#"mesh_proxy_errors_total{direction="outbound",reason="unauthenticated"}"#), 7);
    let app = echo.sidecar.metrics().await;
    assert_eq!(
        metric_sum(&app, r#"mesh_requests_total{direction="inbound""#),
        3,
        "only the three accepted calls reached the app"
    );

    // HTTP/1.1 without a token: 401 with the reason as the body.
    let mut tcp = tokio::net::TcpStream::connect(&gateway.plain).await.unwrap();
    tcp.write_all(b"POST /mesh.demo.v1.Echo/Unary HTTP/1.1\r\nHost: secure.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("no bearer token"), "{raw}");

    // The access log names the verified subject and never holds a token, not even a refused one.
    let log = mesh_tests::eventually("11 access log lines", std::time::Duration::from_secs(5), || async {
        let out = gateway.proxy.proc.stdout();
        (out.lines().count() == 11).then_some(out)
    })
    .await;
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let subjects: Vec<&str> = lines.iter().filter_map(|l| l["subject"].as_str()).collect();
    assert_eq!(subjects, ["user-rsa", "user-ec"], "{log}");
    let refused = lines.iter().filter(|l| l["mesh_error"] == "unauthenticated").count();
    assert_eq!(refused, 8, "7 gRPC refusals and the HTTP/1.1 one: {log}");
    sent.extend(cases.iter().flat_map(|(_, headers, _, _)| headers.iter().map(|(_, v)| v.replace("Bearer ", ""))));
    for token in &sent {
        let signature = token.rsplit('.').next().unwrap();
        assert!(signature.is_empty() || !log.contains(signature), "a token in the access log: {log}");
        assert!(!log.contains(token.as_str()), "a token in the access log: {log}");
    }
}

/// Past the edge, the gateway is a caller like any other: the service's authorization policy
/// decides what its identity may call, and a denial reaches the outside caller as
/// PERMISSION_DENIED naming the gateway's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_authorization_applies_to_the_gateways_identity() {
    use mesh_tests::ca::{SecuredMesh, as_env};
    let mesh = SecuredMesh::start().await;
    let ca = DevCa::new();
    let document = "routes:\n  - { name: echo, grpc_service: mesh.demo.v1.Echo, service: echo }\n";
    let env = mesh.cp.sidecar_env("api-gateway");
    let gateway = Gateway::start(&mesh.etcd.endpoint(), ca.dir.path(), document, &as_env(&env)).await;
    let mut outside = client(&gateway, "api.test").await;
    assert!(call(&mut outside, &[]).await.is_ok(), "no policy yet: allowed");

    // The gateway may call Unary only.
    let policy = ca.dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"rules":[{"name":"edge-unary","from":["api-gateway"],"methods":["/mesh.demo.v1.Echo/Unary"]}]}"#,
    )
    .unwrap();
    let args = ["--etcd-endpoints", &mesh.etcd.endpoint(), "policy", "set", "echo", "-f", policy.to_str().unwrap()];
    let (code, out, err) = mesh_tests::process::run("meshctl", &args);
    assert_eq!(code, 0, "{out}{err}");
    let denied = mesh_tests::eventually("the policy to apply", std::time::Duration::from_secs(5), || {
        let mut outside = outside.clone();
        async move {
            let mut stream = match outside.server_stream(EchoRequest { count: 2, ..Default::default() }).await {
                Ok(response) => response.into_inner(),
                Err(status) => return Some(status),
            };
            stream.message().await.err()
        }
    })
    .await;
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let message = denied.message();
    assert!(message.contains("spiffe://mesh.local/svc/api-gateway") && message.contains("ServerStream"), "{message}");
    assert_eq!(denied.metadata().get("mesh-error").unwrap(), "not_authorized");
    let seen = call(&mut outside, &[]).await.unwrap();
    assert_eq!(seen["mesh-client-service"], "api-gateway", "Unary is allowed, as the gateway: {seen}");
}
