//! Service policy: how callers' proxies treat calls to one service (timeouts, retries, the retry
//! budget), one versioned JSON document per destination service:
//!
//! ```text
//! <prefix>/v1/policies/<service>   {"version": "v1", "defaults": {...}, "methods": [...], "retry_budget": {...}}
//! ```
//!
//! ```json
//! {
//!   "version": "v1",
//!   "defaults": { "timeout_ms": 2000 },
//!   "methods": [
//!     { "match": "/shop.Orders/Get*", "idempotent": true, "per_try_timeout_ms": 200,
//!       "retry_on": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"], "max_attempts": 3 },
//!     { "match": "/shop.Orders/Place", "timeout_ms": 5000 }
//!   ],
//!   "retry_budget": { "ratio": 0.2, "min_per_second": 10 },
//!   "circuit_breaker": { "max_in_flight": 1000, "max_pending": 1000 }
//! }
//! ```
//!
//! A call's settings are the first `methods` entry whose `match` fits its path, with anything
//! the entry leaves out taken from `defaults`, and anything both leave out from the built-in
//! defaults ([`MethodSettings::default`]): no timeout of the mesh's own, not idempotent (so only
//! calls that never reached an app are retried), retry on UNAVAILABLE, at most 3 attempts.
//! Without a document, every call gets the built-in defaults. The JSON Schema of the document is
//! `docs/policy.schema.json`; the traffic-policy work extends this same document.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::method_matches;
use crate::layout::Layout;
use crate::name::ServiceName;

/// Largest document accepted, bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Most `methods` entries in one document.
pub const MAX_METHODS: usize = 256;
/// Longest timeout accepted (a day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Most attempts a call may be given (the first included).
pub const MAX_ATTEMPTS: u32 = 5;
/// Largest circuit breaker limit.
pub const MAX_IN_FLIGHT: u32 = 100_000;

/// The document version this build reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// The first version.
    #[serde(rename = "v1")]
    V1,
}

/// One service's policy document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePolicy {
    /// Always `"v1"` for now.
    pub version: Version,
    /// Settings for every method that no `methods` entry overrides.
    #[serde(default, skip_serializing_if = "MethodPolicy::is_empty")]
    pub defaults: MethodPolicy,
    /// Per-method settings; the first entry whose `match` fits a call applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodPolicy>,
    /// How many retries callers may add to this service's load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// How many calls each caller's proxy may have in flight to this service, and waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// Per caller proxy: calls in flight to the service at most, and calls waiting for a slot at
/// most; a call beyond both fails at once with UNAVAILABLE (`mesh-error: overloaded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Default 1000.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Default 1000.
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
}

fn default_max_in_flight() -> u32 {
    1000
}

fn default_max_pending() -> u32 {
    1000
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self { max_in_flight: default_max_in_flight(), max_pending: default_max_pending() }
    }
}

/// Settings for calls to some methods. Every field is optional; see the module docs for what an
/// absent field means.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodPolicy {
    /// Which calls (`/pkg.Service/Method`, `/pkg.Service/Prefix*`, or `*`); required in `methods`
    /// entries, not allowed in `defaults`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// The deadline of a call whose caller sent none (`grpc-timeout`), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How long one attempt may wait for the response headers before it is given up (and retried
    /// if the method is idempotent), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Safe to send twice: the call may be retried on `retry_on` statuses and per-try timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// The statuses that retry an idempotent call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<Code>>,
    /// Attempts at most, the first included (1-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// A gRPC status code other than OK, by its canonical name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// Retries allowed on top of the calls themselves: `ratio` of the calls of the last 10 s plus
/// `min_per_second` (so a quiet service can still retry).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// 0.0-1.0; default 0.2.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Default 10.
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
}

fn default_ratio() -> f64 {
    0.2
}

fn default_min_per_second() -> u32 {
    10
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { ratio: default_ratio(), min_per_second: default_min_per_second() }
    }
}

impl MethodPolicy {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A document that cannot be used, with what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service policy: {0}")]
pub struct PolicyError(pub String);

impl ServicePolicy {
    /// Parses and checks a document (JSON). Errors name the line and column, or the entry.
    pub fn parse(bytes: &[u8]) -> Result<Self, PolicyError> {
        let policy: Self = crate::document::decode(bytes, MAX_POLICY_BYTES).map_err(PolicyError)?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if self.methods.len() > MAX_METHODS {
            return Err(PolicyError(format!("more than {MAX_METHODS} methods entries")));
        }
        if self.defaults.matches.is_some() {
            return Err(PolicyError("defaults: `match` belongs in `methods` entries".into()));
        }
        self.defaults.validate().map_err(|e| PolicyError(format!("defaults: {e}")))?;
        for (i, entry) in self.methods.iter().enumerate() {
            let at = |e: String| PolicyError(format!("methods[{i}]: {e}"));
            match &entry.matches {
                None => return Err(at("`match` is required".into())),
                Some(m) if !valid_pattern(m) => {
                    return Err(at(format!("match {m:?}: use /pkg.Service/Method, /pkg.Service/Prefix* or *")));
                }
                Some(_) => {}
            }
            entry.validate().map_err(at)?;
        }
        if let Some(budget) = &self.retry_budget
            && !(0.0..=1.0).contains(&budget.ratio)
        {
            return Err(PolicyError(format!("retry_budget.ratio {} is not within 0.0-1.0", budget.ratio)));
        }
        if let Some(breaker) = &self.circuit_breaker
            && !(1..=MAX_IN_FLIGHT).contains(&breaker.max_in_flight)
        {
            return Err(PolicyError(format!("circuit_breaker.max_in_flight must be 1-{MAX_IN_FLIGHT}")));
        }
        if self.circuit_breaker.is_some_and(|b| b.max_pending > MAX_IN_FLIGHT) {
            return Err(PolicyError(format!("circuit_breaker.max_pending must be 0-{MAX_IN_FLIGHT}")));
        }
        Ok(())
    }

    /// The settings of a call to `path`.
    pub fn settings(&self, path: &str) -> MethodSettings {
        let entry = self.methods.iter().find(|m| m.matches.as_deref().is_some_and(|p| method_matches(p, path)));
        MethodSettings::resolve(entry, &self.defaults)
    }

    /// The retry budget (the default one when the document sets none).
    pub fn budget(&self) -> RetryBudget {
        self.retry_budget.unwrap_or_default()
    }

    /// The circuit breaker's limits (the defaults when the document sets none).
    pub fn breaker(&self) -> CircuitBreaker {
        self.circuit_breaker.unwrap_or_default()
    }
}

impl MethodPolicy {
    fn validate(&self) -> Result<(), String> {
        for (name, value) in [("timeout_ms", self.timeout_ms), ("per_try_timeout_ms", self.per_try_timeout_ms)] {
            if value.is_some_and(|ms| ms == 0 || ms > MAX_TIMEOUT_MS) {
                return Err(format!("{name} must be 1-{MAX_TIMEOUT_MS}"));
            }
        }
        if self.max_attempts.is_some_and(|n| n == 0 || n > MAX_ATTEMPTS) {
            return Err(format!("max_attempts must be 1-{MAX_ATTEMPTS}"));
        }
        Ok(())
    }
}

/// What applies to one call, every field decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSettings {
    /// The deadline when the caller sent none.
    pub timeout: Option<Duration>,
    /// The limit of one attempt's wait for response headers.
    pub per_try_timeout: Option<Duration>,
    /// Status codes and per-try timeouts may retry the call.
    pub idempotent: bool,
    /// The statuses that retry it, as a bit set of codes (bit n = code n).
    pub retry_on: u32,
    /// Attempts at most, the first included.
    pub max_attempts: u32,
}

impl Default for MethodSettings {
    fn default() -> Self {
        Self {
            timeout: None,
            per_try_timeout: None,
            idempotent: false,
            retry_on: 1 << Code::Unavailable as u32,
            max_attempts: 3,
        }
    }
}

impl MethodSettings {
    fn resolve(entry: Option<&MethodPolicy>, defaults: &MethodPolicy) -> Self {
        let built_in = Self::default();
        let pick = |f: fn(&MethodPolicy) -> Option<u64>| entry.and_then(f).or_else(|| f(defaults));
        let retry_on = entry.and_then(|e| e.retry_on.as_ref()).or(defaults.retry_on.as_ref());
        Self {
            timeout: pick(|m| m.timeout_ms).map(Duration::from_millis),
            per_try_timeout: pick(|m| m.per_try_timeout_ms).map(Duration::from_millis),
            idempotent: entry.and_then(|e| e.idempotent).or(defaults.idempotent).unwrap_or(built_in.idempotent),
            retry_on: retry_on.map_or(built_in.retry_on, |codes| codes.iter().fold(0, |set, c| set | 1 << *c as u32)),
            max_attempts: entry.and_then(|e| e.max_attempts).or(defaults.max_attempts).unwrap_or(built_in.max_attempts),
        }
    }

    /// Whether a response with gRPC status `code` retries an idempotent call.
    pub fn retries_on(&self, code: u32) -> bool {
        code < 32 && self.retry_on & (1 << code) != 0
    }
}

fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let Some(rest) = p.strip_prefix('/') else { return false };
    let Some((service, method)) = rest.split_once('/') else { return false };
    let ident = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    !service.is_empty() && ident(service) && ident(method.strip_suffix('*').unwrap_or(method)) && !method.is_empty()
}

impl Layout {
    /// Every service's policy document: `<prefix>/v1/policies/`.
    pub fn policies(&self) -> String {
        format!("{}policies/", self.root())
    }

    /// One service's policy document.
    pub fn policy(&self, service: &ServiceName) -> String {
        format!("{}{service}", self.policies())
    }

    /// The service a policy key belongs to, if it is one.
    pub fn parse_policy_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.policies()).filter(|s| !s.is_empty() && !s.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ServicePolicy {
        ServicePolicy::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_first_matching_entry_applies_over_the_defaults() {
        let p = parse(
            r#"{"version":"v1","defaults":{"timeout_ms":2000,"retry_on":["UNAVAILABLE","INTERNAL"]},
                "methods":[{"match":"/shop.Orders/Get*","idempotent":true,"per_try_timeout_ms":200,"max_attempts":4},
                           {"match":"/shop.Orders/*","timeout_ms":5000},
                           {"match":"/shop.Orders/GetOne","max_attempts":1}]}"#,
        );
        let get = p.settings("/shop.Orders/GetOne");
        assert!(get.idempotent);
        assert_eq!(get.max_attempts, 4, "the first match wins, not the most specific");
        assert_eq!(get.timeout, Some(Duration::from_secs(2)), "from the defaults");
        assert_eq!(get.per_try_timeout, Some(Duration::from_millis(200)));
        assert!(get.retries_on(13) && get.retries_on(14) && !get.retries_on(8));
        let place = p.settings("/shop.Orders/Place");
        assert!(!place.idempotent);
        assert_eq!(place.timeout, Some(Duration::from_secs(5)));
        let other = p.settings("/other.Svc/Call");
        assert_eq!(other.timeout, Some(Duration::from_secs(2)));
        assert_eq!(other.max_attempts, 3);
        assert_eq!(p.budget(), RetryBudget::default());
    }

    #[test]
    fn no_document_means_the_built_in_defaults() {
        let p = parse(r#"{"version":"v1"}"#);
        assert_eq!(p.settings("/a.B/C"), MethodSettings::default());
        let d = MethodSettings::default();
        assert!(!d.idempotent && d.timeout.is_none() && d.retries_on(14) && !d.retries_on(2));
    }

    #[test]
    fn malformed_documents_are_refused_with_what_is_wrong_and_where() {
        for (bad, says) in [
            (r#"{"version":"v2"}"#, "unknown variant `v2`"),
            (r#"{"version":"v1","defaults":{"timeout":5}}"#, "unknown field `timeout`"),
            (r#"{"version":"v1","methods":[{"idempotent":true}]}"#, "methods[0]: `match` is required"),
            (r#"{"version":"v1","methods":[{"match":"Get"}]}"#, "use /pkg.Service/Method"),
            (r#"{"version":"v1","methods":[{"match":"*","max_attempts":9}]}"#, "max_attempts must be 1-5"),
            (r#"{"version":"v1","defaults":{"per_try_timeout_ms":0}}"#, "per_try_timeout_ms must be"),
            (r#"{"version":"v1","defaults":{"match":"*"}}"#, "belongs in `methods`"),
            (r#"{"version":"v1","methods":[{"match":"*","retry_on":["OK"]}]}"#, "unknown variant `OK`"),
            (r#"{"version":"v1","retry_budget":{"ratio":1.5}}"#, "not within 0.0-1.0"),
            (r#"{"version":"v1","circuit_breaker":{"max_in_flight":0}}"#, "max_in_flight must be"),
            ("{\"version\":\"v1\",\n \"methods\": [}", "line 2"),
        ] {
            let err = ServicePolicy::parse(bad.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_published_schema_names_exactly_the_fields_the_parser_reads() {
        // Every object in the schema is closed, and a document using every property it lists
        // parses and comes back with the same keys: schema and parser cannot drift apart.
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/policy.schema.json")).unwrap_or_else(|e| panic!("{e}"));
        let full = r#"{"version":"v1",
            "defaults":{"timeout_ms":1,"per_try_timeout_ms":1,"idempotent":true,"retry_on":["UNAVAILABLE"],"max_attempts":2},
            "methods":[{"match":"*","timeout_ms":1,"per_try_timeout_ms":1,"idempotent":true,"retry_on":["INTERNAL"],"max_attempts":2}],
            "retry_budget":{"ratio":0.5,"min_per_second":3},
            "circuit_breaker":{"max_in_flight":10,"max_pending":5}}"#;
        let doc = serde_json::to_value(parse(full)).unwrap_or_else(|e| panic!("{e}"));
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            k.sort();
            k
        };
        let def = |name: &str| &schema["$defs"][name];
        for (in_schema, in_doc) in [
            (&schema, &doc),
            (def("method"), &doc["methods"][0]),
            (def("method"), &doc["defaults"]),
            (def("retry_budget"), &doc["retry_budget"]),
            (def("circuit_breaker"), &doc["circuit_breaker"]),
        ] {
            assert_eq!(in_schema["additionalProperties"], false);
            let mut listed = keys(&in_schema["properties"]);
            if in_doc == &doc["defaults"] {
                listed.retain(|k| k != "match");
            }
            assert_eq!(listed, keys(in_doc));
        }
        let codes: Vec<&str> =
            def("code")["enum"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), 16);
        for code in codes {
            let doc = format!(r#"{{"version":"v1","defaults":{{"retry_on":["{code}"]}}}}"#);
            assert!(ServicePolicy::parse(doc.as_bytes()).is_ok(), "{code}");
        }
    }

    #[test]
    fn keys_live_under_the_versioned_prefix() {
        let layout = Layout::default();
        let svc: ServiceName = "orders".parse().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(layout.policy(&svc), "/mesh/v1/policies/orders");
        assert_eq!(layout.parse_policy_key("/mesh/v1/policies/orders"), Some("orders"));
        assert_eq!(layout.parse_policy_key("/mesh/v1/policies/a/b"), None);
    }
}
