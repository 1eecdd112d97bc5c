//! `meshctl probe URL`: a health probe for container healthchecks, so images need no curl or
//! wget. `http://host:port/path` passes on a 2xx answer to a GET; `tcp://host:port` passes when a
//! connection opens. Exit 0 when healthy, 1 otherwise (with the reason on stderr).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("probe target must be http://host:port/path or tcp://host:port, got {0:?}")]
    BadTarget(String),
    #[error("{target}: {cause}")]
    Failed { target: String, cause: String },
}

/// Probes `target` within `timeout`.
pub(crate) async fn run(target: &str, timeout: Duration) -> Result<(), ProbeError> {
    let failed = |cause: String| ProbeError::Failed { target: target.to_string(), cause };
    let (scheme, rest) = target.split_once("://").ok_or_else(|| ProbeError::BadTarget(target.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || !matches!(scheme, "http" | "tcp") {
        return Err(ProbeError::BadTarget(target.to_string()));
    }
    let probe = async {
        let mut tcp = TcpStream::connect(authority).await.map_err(|e| failed(format!("connect: {e}")))?;
        if scheme == "tcp" {
            return Ok(());
        }
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.map_err(|e| failed(format!("write: {e}")))?;
        let mut head = vec![0u8; 64];
        let n = tcp.read(&mut head).await.map_err(|e| failed(format!("read: {e}")))?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(s) if (200..300).contains(&s) => Ok(()),
            Some(s) => Err(failed(format!("HTTP {s}"))),
            None => Err(failed("not an HTTP answer".to_string())),
        }
    };
    tokio::time::timeout(timeout, probe).await.map_err(|_| failed(format!("no answer within {timeout:?}")))?
}
