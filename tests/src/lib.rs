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
pub mod gateway;
pub mod load;
pub mod mesh;
pub mod process;
pub mod raw;
pub mod telemetry;
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

/// A loopback port that was free a moment ago, for a child process to listen on.
///
/// Taken below the kernel's ephemeral range, so that no outgoing connection (which gets an
/// ephemeral port) can take it between this check and the child's bind; and never the same twice
/// in one test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_start.max(20_000));
    let start = std::process::id().wrapping_mul(7919) % (high - low);
    for _ in 0..(high - low) {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % (high - low);
        let port = u16::try_from(port).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {high}");
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
