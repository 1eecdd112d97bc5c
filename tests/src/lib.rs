//! The end-to-end test harness: real etcd servers on free loopback ports, the mesh's real
//! binaries as child processes, and helpers to wait on conditions instead of sleeping.
//!
//! The tests themselves live in `tests/tests/`, one file per behaviour. They need the
//! workspace's binaries built first (`cargo build --workspace --bins`), which the test command
//! (`scripts/test.sh`) does.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod ca;
pub mod demo;
pub mod etcd;
pub mod load;
pub mod mesh;
pub mod process;
pub mod raw;
pub mod tls;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

/// The path of one of the workspace's binaries, built in the same target directory as this test.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    // Test executables live in <target>/<profile>/deps/; binaries in <target>/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
