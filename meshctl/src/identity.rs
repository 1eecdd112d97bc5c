//! `meshctl identity --admin <addr>`: a proxy's identity and certificate expiry, from its admin
//! port; and the expiry checks `meshctl check` runs on a trust bundle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a proxy's `/identity` says.
#[derive(Debug, Deserialize, serde::Serialize)]
pub(crate) struct ProxyIdentity {
    pub(crate) mtls: bool,
    pub(crate) identity: Option<String>,
    pub(crate) not_after: Option<u64>,
    pub(crate) expires_in_seconds: Option<i64>,
}

/// Why a proxy's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityCmdError {
    #[error("cannot read /identity from the proxy admin port at {addr}: {cause}")]
    Admin { addr: String, cause: String },
}

/// GET `/identity` from a proxy's admin listener.
pub(crate) async fn fetch(addr: &str) -> Result<ProxyIdentity, IdentityCmdError> {
    let fail = |cause: String| IdentityCmdError::Admin { addr: addr.to_string(), cause };
    let request = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.write_all(b"GET /identity HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.map_err(|e| e.to_string())?;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).ok_or("no HTTP response")?;
        serde_json::from_str::<ProxyIdentity>(&body).map_err(|e| format!("unexpected answer: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .map_err(|_| fail("no answer within 5s".into()))?
        .map_err(fail)
}

/// Each certificate in a PEM bundle: (subject, not_after).
pub(crate) fn bundle_expiries(pem: &str) -> Result<Vec<(String, SystemTime)>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| e.to_string())?;
        let cert = block.parse_x509().map_err(|e| e.to_string())?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        out.push((cert.subject().to_string(), UNIX_EPOCH + Duration::from_secs(secs)));
    }
    if out.is_empty() {
        return Err("no certificate in the bundle".into());
    }
    Ok(out)
}
