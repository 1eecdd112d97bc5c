//! The collector's configuration: every setting a flag and a `MESH_<NAME>` variable.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_common::cli::duration;

/// Command-line flags and environment.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "mesh-collector",
    version,
    about = "The mesh's telemetry collector: OTLP in; Prometheus exposition, a Zipkin v2 trace API and optional OTLP forwarding out."
)]
pub struct Config {
    /// OTLP/gRPC receiver (traces and metrics).
    #[arg(long = "otlp-addr", env = "MESH_OTLP_ADDR", default_value = "0.0.0.0:4317")]
    pub otlp_addr: SocketAddr,
    /// Prometheus exposition (`/metrics`).
    #[arg(long = "metrics-addr", env = "MESH_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,
    /// Trace query API (Zipkin v2 read API, `/health`).
    #[arg(long = "query-addr", env = "MESH_QUERY_ADDR", default_value = "0.0.0.0:9411")]
    pub query_addr: SocketAddr,
    /// Most spans the trace store keeps (oldest evicted first).
    #[arg(long = "trace-store-spans", env = "MESH_TRACE_STORE_SPANS", default_value_t = 100_000)]
    pub trace_store_spans: usize,
    /// Most bytes the trace store keeps, e.g. `64MiB` (oldest evicted first).
    #[arg(long = "trace-store-bytes", env = "MESH_TRACE_STORE_BYTES", default_value = "64MiB", value_parser = bytes)]
    pub trace_store_bytes: usize,
    /// Most metric series held; points for further series are dropped and counted.
    #[arg(long = "series-limit", env = "MESH_SERIES_LIMIT", default_value_t = 100_000)]
    pub series_limit: usize,
    /// A series not updated for this long (its sender went away) is removed.
    #[arg(long = "series-ttl", env = "MESH_SERIES_TTL", default_value = "5m", value_parser = duration, value_name = "DURATION")]
    pub series_ttl: Duration,
    /// Also send everything received to this OTLP/gRPC endpoint (`http://host:4317`).
    #[arg(long = "forward-endpoint", env = "MESH_FORWARD_ENDPOINT")]
    pub forward_endpoint: Option<tonic::transport::Uri>,
    /// Exports waiting to be forwarded; beyond it they are dropped and counted.
    #[arg(long = "forward-queue", env = "MESH_FORWARD_QUEUE", default_value_t = 256)]
    pub forward_queue: usize,
}

impl Config {
    /// Checks relations between settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.trace_store_spans == 0 {
            return Err("--trace-store-spans (MESH_TRACE_STORE_SPANS) must be at least 1".into());
        }
        if self.trace_store_bytes < 64 * 1024 {
            return Err("--trace-store-bytes (MESH_TRACE_STORE_BYTES) must be at least 64KiB".into());
        }
        if self.series_ttl < Duration::from_secs(1) {
            return Err("--series-ttl (MESH_SERIES_TTL) must be at least 1s".into());
        }
        if self.forward_queue == 0 {
            return Err("--forward-queue (MESH_FORWARD_QUEUE) must be at least 1".into());
        }
        if let Some(uri) = &self.forward_endpoint
            && (uri.scheme_str() != Some("http") || uri.authority().is_none())
        {
            return Err(format!("--forward-endpoint (MESH_FORWARD_ENDPOINT) must be http://host:port, got {uri}"));
        }
        Ok(())
    }
}

/// Parses a size: a number of bytes with an optional `KiB`, `MiB` or `GiB` suffix.
pub fn bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB or GiB)")),
    };
    let n: usize = number.parse().map_err(|_| format!("{s:?} is not a size (e.g. 64MiB)"))?;
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn command_line_is_well_formed_and_checked() {
        Config::command().debug_assert();
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes("1000"), Ok(1000));
        assert!(bytes("5 parsecs").is_err());
        let parse = |args: &[&str]| {
            let mut argv = vec!["mesh-collector"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).map_err(|e| e.to_string()).and_then(|c| c.validate())
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--forward-endpoint", "https://x:4317"]).is_err());
        assert!(parse(&["--trace-store-bytes", "1KiB"]).is_err());
    }
}
