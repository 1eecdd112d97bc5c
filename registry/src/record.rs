//! The instance record: the JSON value stored at an instance key, and its strict decoder.
//!
//! Records are written by this crate only, but etcd is shared ground: anything under the prefix
//! is decoded as untrusted input. A value that fails any check is a [`DecodeError`]; callers skip
//! it, count it and keep every valid record.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::name::{Address, InstanceId, ServiceName};

/// Largest record accepted, in bytes. Real records are a few hundred bytes.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Most labels one instance may carry.
pub const MAX_LABELS: usize = 32;
/// Largest weight; the default is [`DEFAULT_WEIGHT`].
pub const MAX_WEIGHT: u32 = 10_000;
/// The weight of an instance that does not say.
pub const DEFAULT_WEIGHT: u32 = 100;

/// One instance of a service, as registered in etcd.
///
/// Unknown fields are tolerated (not `deny_unknown_fields`) so that a newer proxy can add fields
/// without older readers dropping its instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The service this instance belongs to.
    pub service: ServiceName,
    /// Unique within the service.
    pub instance_id: InstanceId,
    /// What peers dial (the instance's inbound proxy listener once meshed).
    pub address: Address,
    /// Free-form labels such as `version` and `zone`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Relative share of traffic, 0 (drained) to [`MAX_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The identity peers must see in the instance's certificate
    /// (`spiffe://<trust-domain>/svc/<service>`). Filled in by the identity layer.
    #[serde(default)]
    pub identity: Option<String>,
    /// When the instance (its proxy) started, RFC 3339 in UTC to the millisecond. A new value at
    /// the same address is a restart: callers drop what they knew of the old process.
    pub started_at: String,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// Why a value under the prefix is not a usable instance record. The variant names are the
/// closed set of `reason` label values on `mesh_registry_malformed_records_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The key is under the services prefix but is not `<service>/instances/<id>`.
    #[error("key is not an instance key")]
    UnexpectedKey,
    /// The value exceeds [`MAX_RECORD_BYTES`].
    #[error("record is {0} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    Oversized(usize),
    /// Not JSON, or a field is missing or has a bad value.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// The record names another service or instance than its key.
    #[error("record says {0}, its key says otherwise")]
    KeyMismatch(String),
}

impl DecodeError {
    /// The metric label for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnexpectedKey => "unexpected_key",
            Self::Oversized(_) => "oversized",
            Self::Invalid(_) => "invalid",
            Self::KeyMismatch(_) => "key_mismatch",
        }
    }
}

impl InstanceRecord {
    /// A record for an instance starting now, with the default weight and no labels.
    pub fn new(service: ServiceName, instance_id: InstanceId, address: Address) -> Self {
        Self {
            service,
            instance_id,
            address,
            labels: BTreeMap::new(),
            weight: DEFAULT_WEIGHT,
            identity: None,
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }

    /// Checks what serde cannot: label bounds, weight range and timestamp format.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.labels.len() > MAX_LABELS {
            return Err(DecodeError::Invalid(format!("more than {MAX_LABELS} labels")));
        }
        if let Some((k, v)) = self.labels.iter().find(|(k, v)| !valid_label(k, v)) {
            return Err(DecodeError::Invalid(format!("bad label {k:?}={v:?}")));
        }
        if self.weight > MAX_WEIGHT {
            return Err(DecodeError::Invalid(format!("weight {} over {MAX_WEIGHT}", self.weight)));
        }
        if humantime::parse_rfc3339_weak(&self.started_at).is_err() {
            return Err(DecodeError::Invalid(format!("started_at {:?} is not RFC 3339", self.started_at)));
        }
        Ok(())
    }

    /// Decodes and checks the value stored at `key`.
    pub fn decode(layout: &Layout, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let (service, id) = layout.parse_instance_key(key).ok_or(DecodeError::UnexpectedKey)?;
        if value.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::Oversized(value.len()));
        }
        let record: Self = serde_json::from_slice(value).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        record.validate()?;
        if record.service.as_str() != service || record.instance_id.as_str() != id {
            return Err(DecodeError::KeyMismatch(format!("{}/{}", record.service, record.instance_id)));
        }
        Ok(record)
    }

    /// The JSON stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain strings, integers and maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Label keys and values: 1-63 (values 0-63) characters of `[A-Za-z0-9._/-]`.
fn valid_label(key: &str, value: &str) -> bool {
    let ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    (1..=63).contains(&key.len()) && value.len() <= 63 && ok(key) && ok(value)
}

/// Parses `k=v,k=v` into labels, checking each.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("label {pair:?} is not key=value"))?;
        if !valid_label(k, v) {
            return Err(format!("label {pair:?}: keys and values are up to 63 of [A-Za-z0-9._/-]"));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::default()
    }

    const KEY: &str = "/mesh/v1/services/orders/instances/i-1";

    fn valid() -> String {
        r#"{"service":"orders","instance_id":"i-1","address":"127.0.0.1:4143","labels":{"version":"v1"},"weight":100,"identity":null,"started_at":"2026-11-27T10:00:00Z"}"#.to_string()
    }

    #[test]
    fn round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let r = InstanceRecord::decode(&layout(), KEY, valid().as_bytes())?;
        assert_eq!(r.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(InstanceRecord::decode(&layout(), KEY, &r.encode())?, r);
        Ok(())
    }

    #[test]
    fn refuses_every_kind_of_bad_value() {
        let cases: Vec<(&str, String, &str)> = vec![
            (KEY, "not json".into(), "invalid"),
            (KEY, "{}".into(), "invalid"),
            (KEY, valid().replace("127.0.0.1:4143", "127.0.0.1:0"), "invalid"),
            (KEY, valid().replace("\"weight\":100", "\"weight\":100000"), "invalid"),
            (KEY, valid().replace("2026-11-27T10:00:00Z", "yesterday"), "invalid"),
            (KEY, valid().replace("\"orders\"", "\"Orders\""), "invalid"),
            (KEY, valid().replace("\"i-1\"", "\"i-2\""), "key_mismatch"),
            (KEY, format!("{}{}", valid(), " ".repeat(MAX_RECORD_BYTES)), "oversized"),
            ("/mesh/v1/services/orders/bogus", valid(), "unexpected_key"),
        ];
        for (key, value, reason) in cases {
            let err = InstanceRecord::decode(&layout(), key, value.as_bytes()).err();
            assert_eq!(err.as_ref().map(DecodeError::reason), Some(reason), "{value:.80}");
        }
    }

    #[test]
    fn labels_parse_from_flags() {
        assert_eq!(parse_labels("version=v1, zone=a").map(|l| l.len()), Ok(2));
        assert!(parse_labels("version").is_err());
        assert!(parse_labels("k=v v").is_err());
        assert_eq!(parse_labels("").map(|l| l.len()), Ok(0));
    }
}
