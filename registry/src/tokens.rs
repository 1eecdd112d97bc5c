//! Join tokens: how a workload proves which service it may be. The operator creates a token for
//! one service (`meshctl token create orders`); the certificate authority issues a certificate for
//! that service, and only that service, to whoever presents it, until it expires or is revoked.
//!
//! A token is `mesh1.<id>.<secret>`. etcd holds `<prefix>/v1/tokens/<id>` with the service, the
//! expiry and a SHA-256 of the secret (never the secret): revoking deletes the key.

use std::time::{Duration, SystemTime};

use etcd_client::{Client, GetOptions};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::name::ServiceName;

/// What etcd stores per token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The only service this token can obtain an identity for.
    pub service: ServiceName,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; the token is refused after this.
    pub expires_at: String,
}

/// Why a token was refused. The variant names are the `reason` label values of the CA's
/// refusal counter; callers see one message for all of them but the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `mesh1.<id>.<secret>`.
    #[error("malformed join token")]
    Malformed,
    /// No such token (never created, or revoked).
    #[error("unknown or revoked join token")]
    Unknown,
    /// The secret does not match.
    #[error("unknown or revoked join token")]
    BadSecret,
    /// Past its expiry.
    #[error("join token expired at {0}")]
    Expired(String),
    /// The stored record cannot be read.
    #[error("join token record is corrupt: {0}")]
    Corrupt(String),
    /// etcd could not be asked.
    #[error("cannot check the join token: {0}")]
    Etcd(String),
}

impl TokenError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::BadSecret => "bad_secret",
            Self::Expired(_) => "expired",
            Self::Corrupt(_) => "corrupt",
            Self::Etcd(_) => "unavailable",
        }
    }
}

/// A created token: the string to hand to the workload, and its id (for revoking).
#[derive(Debug, Clone)]
pub struct Created {
    /// `mesh1.<id>.<secret>`: show once, store nowhere.
    pub token: String,
    /// The id.
    pub id: String,
    /// The record stored in etcd.
    pub record: TokenRecord,
}

fn random_hex(bytes: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).map_err(|_| TokenError::Etcd("no randomness available".into()))?;
    Ok(hex::encode(buf))
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()))
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Creates a token for `service`, valid for `ttl`.
pub async fn create(
    client: &mut Client,
    layout: &Layout,
    service: &ServiceName,
    ttl: Duration,
) -> Result<Created, TokenError> {
    let id = random_hex(8)?;
    let secret = random_hex(32)?;
    let now = SystemTime::now();
    let record = TokenRecord {
        service: service.clone(),
        secret_sha256: sha256_hex(&secret),
        created_at: rfc3339(now),
        expires_at: rfc3339(now + ttl),
    };
    let value = serde_json::to_vec(&record).map_err(|e| TokenError::Corrupt(e.to_string()))?;
    client.put(format!("{}{id}", layout.tokens()), value, None).await.map_err(|e| TokenError::Etcd(e.to_string()))?;
    Ok(Created { token: format!("mesh1.{id}.{secret}"), id, record })
}

/// Revokes token `id`; returns whether it existed.
pub async fn revoke(client: &mut Client, layout: &Layout, id: &str) -> Result<bool, TokenError> {
    let resp =
        client.delete(format!("{}{id}", layout.tokens()), None).await.map_err(|e| TokenError::Etcd(e.to_string()))?;
    Ok(resp.deleted() > 0)
}

/// Every token's id and record (secrets are not stored, so none are shown).
pub async fn list(client: &mut Client, layout: &Layout) -> Result<Vec<(String, TokenRecord)>, TokenError> {
    let resp = client
        .get(layout.tokens(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| TokenError::Etcd(e.to_string()))?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let id = key.trim_start_matches(&layout.tokens()).to_string();
        match serde_json::from_slice::<TokenRecord>(kv.value()) {
            Ok(record) => out.push((id, record)),
            Err(e) => tracing::warn!(%key, error = %e, "skipping a corrupt token record"),
        }
    }
    Ok(out)
}

/// Checks `token` at time `now`: the service it binds, or why it is refused.
pub async fn verify(
    client: &mut Client,
    layout: &Layout,
    token: &str,
    now: SystemTime,
) -> Result<ServiceName, TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some("mesh1"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() > 256 {
        return Err(TokenError::Malformed);
    }
    let resp =
        client.get(format!("{}{id}", layout.tokens()), None).await.map_err(|e| TokenError::Etcd(e.to_string()))?;
    let kv = resp.kvs().first().ok_or(TokenError::Unknown)?;
    let record: TokenRecord = serde_json::from_slice(kv.value()).map_err(|e| TokenError::Corrupt(e.to_string()))?;
    let presented = sha256_hex(secret);
    if !constant_time_eq(presented.as_bytes(), record.secret_sha256.as_bytes()) {
        return Err(TokenError::BadSecret);
    }
    let expires = humantime::parse_rfc3339_weak(&record.expires_at).map_err(|e| TokenError::Corrupt(e.to_string()))?;
    if now >= expires {
        return Err(TokenError::Expired(record.expires_at));
    }
    Ok(record.service)
}
