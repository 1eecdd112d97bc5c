//! An independent client: Python `grpcio` (a different HTTP/2 and gRPC implementation) calling
//! through the outbound proxy gets the same results as our own client for unary, streaming and
//! error cases.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::process::Command;

use mesh_tests::mesh::EchoMesh;

#[tokio::test]
async fn python_grpcio_through_the_mesh() {
    let EchoMesh { client, .. } = &EchoMesh::start().await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/grpcio_client.py");
    let outbound = client.outbound.clone();
    // Its own temporary directory, to see that the client leaves nothing behind.
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").args([script, &outbound, "echo"]).env("TMPDIR", &tmp_path).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grpcio client failed (is grpcio installed? scripts/test.sh installs it):\n{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the grpcio client left temporary files behind: {left:?}");

    assert_eq!(r["unary"]["payload"], "from-python");
    assert_eq!(r["unary"]["instance"], "echo-1");
    assert_eq!(r["unary"]["echoed_header"], "python", "custom metadata crosses both ways");
    assert_eq!(r["unary"]["server_saw_timeout"], true);
    assert_eq!(r["server_stream"], serde_json::json!({ "count": 100, "ordered": true }));
    assert_eq!(r["client_stream"], serde_json::json!({ "messages": 50, "bytes": 50_000 }));
    assert_eq!(r["bidi"], serde_json::json!({ "count": 20, "in_order": true }));
    assert_eq!(r["error"], serde_json::json!({ "code": "NOT_FOUND", "details": "no such thing" }));
    assert_eq!(r["large"]["bytes"], 3 << 20);
    assert_eq!(r["unknown_service"]["code"], "UNAVAILABLE");
    let details = r["unknown_service"]["details"].as_str().unwrap();
    assert!(details.contains("no endpoints") && details.contains("nosuch"), "{details}");
}
