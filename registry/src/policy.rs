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

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::method_matches;
use crate::layout::Layout;
use crate::limits::{MAX_RATE_LIMITS, RateLimit};
use crate::name::ServiceName;
use crate::routes::{MAX_ROUTES, MAX_SUBSETS, Route, Selector};

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
    /// Named groups of the service's instances, by label ([`crate::routes`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, Selector>,
    /// Where calls go, in order; the first that fits a call takes it ([`crate::routes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Limits the service's own proxies enforce on calls to it ([`crate::limits`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// Which callers may call which methods (mTLS): the rules `meshctl policy` keeps at
    /// `<prefix>/v1/authz/services/<service>`, here instead, where they take precedence
    /// ([`crate::authz`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<crate::authz::Policy>,
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
    /// Send a second attempt to another instance when the first is slow (idempotent methods
    /// only); the first response wins and the other is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
}

/// When a hedged call's second attempt goes out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hedge {
    /// After this many milliseconds without response headers; absent: after the service's
    /// observed 95th percentile latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// When a hedge goes out, decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    /// After the service's observed 95th percentile.
    P95,
    /// After this long.
    After(Duration),
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

    /// Checks what the types cannot say (ranges, references, uniqueness): for a document decoded
    /// some other way than [`Self::parse`] (YAML, in `meshctl`).
    pub fn check(&self) -> Result<(), PolicyError> {
        self.validate()
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
            if entry.hedge.is_some() && entry.idempotent.or(self.defaults.idempotent) != Some(true) {
                return Err(at("hedge needs `idempotent: true`: a hedged call is sent twice".into()));
            }
        }
        if self.defaults.hedge.is_some() && self.defaults.idempotent != Some(true) {
            return Err(PolicyError("defaults: hedge needs `idempotent: true`: a hedged call is sent twice".into()));
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
        self.validate_routes()
    }

    fn validate_routes(&self) -> Result<(), PolicyError> {
        if self.subsets.len() > MAX_SUBSETS {
            return Err(PolicyError(format!("more than {MAX_SUBSETS} subsets")));
        }
        for (name, selector) in &self.subsets {
            if name.is_empty() || name.len() > 63 {
                return Err(PolicyError(format!("subsets: name {name:?} must be 1-63 characters")));
            }
            if selector.0.is_empty() {
                return Err(PolicyError(format!("subsets.{name}: give at least one label")));
            }
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(PolicyError(format!("more than {MAX_ROUTES} routes")));
        }
        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = |e: String| PolicyError(format!("routes[{i}] ({:?}): {e}", route.name));
            route.validate(&self.subsets).map_err(at)?;
            if !names.insert(&*route.name) {
                return Err(at("another route has this name".into()));
            }
            let settings = route.settings.as_ref();
            if settings.and_then(|s| s.hedge).is_some()
                && settings.and_then(|s| s.idempotent).or(self.defaults.idempotent) != Some(true)
            {
                return Err(at("settings: hedge needs `idempotent: true`: a hedged call is sent twice".into()));
            }
        }
        if let Some(authorization) = &self.authorization {
            authorization.check().map_err(|e| PolicyError(format!("authorization: {e}")))?;
        }
        if self.rate_limits.len() > MAX_RATE_LIMITS {
            return Err(PolicyError(format!("more than {MAX_RATE_LIMITS} rate limits")));
        }
        let mut names = HashSet::new();
        for (i, limit) in self.rate_limits.iter().enumerate() {
            let at = |e: String| PolicyError(format!("rate_limits[{i}] ({:?}): {e}", limit.name));
            limit.validate().map_err(at)?;
            if !names.insert(limit.name.as_str()) {
                return Err(at("another rate limit has this name".into()));
            }
        }
        Ok(())
    }

    /// The settings of a call to `path`.
    pub fn settings(&self, path: &str) -> MethodSettings {
        self.settings_on(path, None)
    }

    /// The settings of a call to `path` that took `route`: the route's own, then the method's.
    pub fn settings_on(&self, path: &str, route: Option<&Route>) -> MethodSettings {
        let entry = self.methods.iter().find(|m| m.matches.as_deref().is_some_and(|p| method_matches(p, path)));
        MethodSettings::resolve([route.and_then(|r| r.settings.as_ref()), entry, Some(&self.defaults)])
    }

    /// The first route that takes a call to `path` with headers `header(name)`, and its index in
    /// `routes`. Routes often test one header in turn (one route per tenant, per version): a
    /// header looked up for one route is not looked up again for the next.
    pub fn route<'p, 'h>(
        &'p self,
        path: &str,
        header: impl Fn(&http::HeaderName) -> Option<&'h [u8]>,
    ) -> Option<(usize, &'p Route)> {
        let last = std::cell::Cell::new(None);
        let lookup = |name: &'p http::HeaderName| match last.get() {
            Some((seen, value)) if seen == name => value,
            _ => {
                let value = header(name);
                last.set(Some((name, value)));
                value
            }
        };
        self.routes.iter().enumerate().find(|(_, r)| r.fits(path, lookup))
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
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, value) in [("timeout_ms", self.timeout_ms), ("per_try_timeout_ms", self.per_try_timeout_ms)] {
            if value.is_some_and(|ms| ms == 0 || ms > MAX_TIMEOUT_MS) {
                return Err(format!("{name} must be 1-{MAX_TIMEOUT_MS}"));
            }
        }
        if self.max_attempts.is_some_and(|n| n == 0 || n > MAX_ATTEMPTS) {
            return Err(format!("max_attempts must be 1-{MAX_ATTEMPTS}"));
        }
        if self.hedge.and_then(|h| h.delay_ms).is_some_and(|ms| ms == 0 || ms > MAX_TIMEOUT_MS) {
            return Err(format!("hedge.delay_ms must be 1-{MAX_TIMEOUT_MS}"));
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
    /// Whether and when a second attempt races the first (idempotent calls only).
    pub hedge: Option<HedgeDelay>,
}

impl Default for MethodSettings {
    fn default() -> Self {
        Self {
            timeout: None,
            per_try_timeout: None,
            idempotent: false,
            retry_on: 1 << Code::Unavailable as u32,
            max_attempts: 3,
            hedge: None,
        }
    }
}

impl MethodSettings {
    /// Each field from the first layer that sets it (route, method entry, defaults), else built in.
    fn resolve(layers: [Option<&MethodPolicy>; 3]) -> Self {
        let built_in = Self::default();
        let layers = || layers.into_iter().flatten();
        let retry_on = layers().find_map(|m| m.retry_on.as_ref());
        Self {
            timeout: layers().find_map(|m| m.timeout_ms).map(Duration::from_millis),
            per_try_timeout: layers().find_map(|m| m.per_try_timeout_ms).map(Duration::from_millis),
            idempotent: layers().find_map(|m| m.idempotent).unwrap_or(built_in.idempotent),
            retry_on: retry_on.map_or(built_in.retry_on, |codes| codes.iter().fold(0, |set, c| set | 1 << *c as u32)),
            max_attempts: layers().find_map(|m| m.max_attempts).unwrap_or(built_in.max_attempts),
            hedge: layers()
                .find_map(|m| m.hedge)
                .map(|h| h.delay_ms.map_or(HedgeDelay::P95, |ms| HedgeDelay::After(Duration::from_millis(ms)))),
        }
    }

    /// Whether a response with gRPC status `code` retries an idempotent call.
    pub fn retries_on(&self, code: u32) -> bool {
        code < 32 && self.retry_on & (1 << code) != 0
    }
}

pub(crate) fn valid_pattern(p: &str) -> bool {
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
        assert_eq!(other.hedge, None);
        assert_eq!(p.budget(), RetryBudget::default());
        let hedged = parse(
            r#"{"version":"v1","methods":[{"match":"/a.B/Fixed","idempotent":true,"hedge":{"delay_ms":40}},
                                           {"match":"/a.B/*","idempotent":true,"hedge":{}}]}"#,
        );
        assert_eq!(hedged.settings("/a.B/Fixed").hedge, Some(HedgeDelay::After(Duration::from_millis(40))));
        assert_eq!(hedged.settings("/a.B/Other").hedge, Some(HedgeDelay::P95));
    }

    #[test]
    fn routes_testing_one_header_in_turn_look_it_up_once_and_still_see_every_header() {
        let mut routes: Vec<String> = (0..19)
            .map(|i| format!(r#"{{"name":"t{i}","match":{{"headers":[{{"name":"x-tenant","exact":"{i}"}}]}}}}"#))
            .collect();
        routes.insert(5, r#"{"name":"b","match":{"headers":[{"name":"x-b","present":true}]}}"#.into());
        let p = parse(&format!(r#"{{"version":"v1","routes":[{}]}}"#, routes.join(",")));
        let lookups = std::cell::Cell::new(0);
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            let lookups = &lookups;
            move |name: &http::HeaderName| {
                lookups.set(lookups.get() + 1);
                pairs.iter().find(|(k, _)| *k == name.as_str()).map(|(_, v)| v.as_bytes())
            }
        };
        let name = |found: Option<(usize, &Route)>| found.map(|(_, r)| r.name.to_string());
        assert_eq!(name(p.route("/a.B/C", headers(&[("x-tenant", "18")]))), Some("t18".into()));
        assert_eq!(lookups.get(), 3, "x-tenant before and after x-b, and x-b");
        assert_eq!(name(p.route("/a.B/C", headers(&[("x-tenant", "7"), ("x-b", "")]))), Some("b".into()));
        assert_eq!(name(p.route("/a.B/C", headers(&[("x-tenant", "99")]))), None);
    }

    #[test]
    fn a_route_picks_by_method_and_header_and_its_settings_come_first() {
        let p = parse(
            r#"{"version":"v1","defaults":{"timeout_ms":2000},
                "methods":[{"match":"/a.B/*","idempotent":true,"max_attempts":4}],
                "subsets":{"v2":{"version":"v2"}},
                "routes":[{"name":"testers","match":{"headers":[{"name":"x-canary","exact":"1"}]},
                           "split":[{"subset":"v2","weight":100}],"settings":{"timeout_ms":50}},
                          {"name":"gets","match":{"method":"/a.B/Get*"}}]}"#,
        );
        let none = |_: &http::HeaderName| None;
        let canary = |name: &http::HeaderName| (name == "x-canary").then_some(&b"1"[..]);
        let testers = p.route("/a.B/Put", canary).map(|(_, r)| r);
        assert_eq!(testers.map(|r| &*r.name), Some("testers"));
        assert_eq!(p.route("/a.B/GetX", none).map(|(i, r)| (i, &*r.name)), Some((1, "gets")));
        assert!(p.route("/a.B/Put", none).is_none(), "no route: all instances");
        let s = p.settings_on("/a.B/Put", testers);
        assert_eq!(s.timeout, Some(Duration::from_millis(50)), "the route's own");
        assert_eq!(s.max_attempts, 4, "then the method's");
        assert!(s.idempotent);
        assert_eq!(p.settings_on("/a.B/Put", None).timeout, Some(Duration::from_secs(2)), "then the defaults");
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
            (r#"{"version":"v1","methods":[{"match":"*","hedge":{}}]}"#, "hedge needs `idempotent: true`"),
            (r#"{"version":"v1","defaults":{"hedge":{"delay_ms":5}}}"#, "hedge needs"),
            (
                r#"{"version":"v1","methods":[{"match":"*","idempotent":true,"hedge":{"delay_ms":0}}]}"#,
                "hedge.delay_ms",
            ),
            (
                r#"{"version":"v1","methods":[{"match":"*","idempotent":true,"hedge":{"after":5}}]}"#,
                "unknown field `after`",
            ),
            ("{\"version\":\"v1\",\n \"methods\": [}", "line 2"),
            (r#"{"version":"v1","routes":[{"name":"r","split":[{"subset":"v2","weight":100}]}]}"#, "not defined"),
            (
                r#"{"version":"v1","subsets":{"a":{"v":"1"}},"routes":[{"name":"r","split":[{"subset":"a","weight":90}]}]}"#,
                "add up to 90, not 100",
            ),
            (r#"{"version":"v1","routes":[{"name":"r","colour":1}]}"#, "unknown field `colour`"),
            (
                "{\"version\":\"v1\",\n\"routes\":[{\"name\":\"r\",\n\"match\":{\"headers\":[{\"name\":\"x\",\"regex\":\"(\"}]}}]}",
                "does not compile",
            ),
            (
                "{\"version\":\"v1\",\n\"routes\":[{\"name\":\"r\",\n\"match\":{\"headers\":[{\"name\":\"x\",\"regex\":\"(\"}]}}]}",
                "line 3",
            ),
            (r#"{"version":"v1","routes":[{"name":"r"},{"name":"r"}]}"#, "another route has this name"),
            (
                r#"{"version":"v1","routes":[{"name":"r","match":{"headers":[{"name":"X-A","exact":"1"}]}}]}"#,
                "lower-case",
            ),
            (
                r#"{"version":"v1","routes":[{"name":"r","match":{"headers":[{"name":"x a","present":true}]}}]}"#,
                "\"x a\"",
            ),
            (
                r#"{"version":"v1","routes":[{"name":"r","split":[{"weight":100}],"sticky":{"header":"X-User"}}]}"#,
                "lower-case",
            ),
            (
                r#"{"version":"v1","routes":[{"name":"r","match":{"headers":[{"name":"x","exact":"1","prefix":"1"}]}}]}"#,
                "exactly one of",
            ),
            (
                r#"{"version":"v1","routes":[{"name":"r","fault":{"abort":{"percent":101,"code":"INTERNAL"}}}]}"#,
                "0-100",
            ),
            (r#"{"version":"v1","subsets":{"a":{}}}"#, "at least one label"),
            (r#"{"version":"v1","rate_limits":[{"name":"l","per_second":0}]}"#, "per_second must be"),
            (
                r#"{"version":"v1","authorization":{"rules":[{"name":"a","from":["Web!"],"methods":["*"]}]}}"#,
                "authorization: invalid policy: rule \"a\"",
            ),
            (r#"{"version":"v1","rate_limits":[{"name":"l","per":"user","per_second":1}]}"#, "unknown variant `user`"),
            (
                r#"{"version":"v1","rate_limits":[{"name":"l","per_second":1},{"name":"l","per_second":2}]}"#,
                "another rate limit has this name",
            ),
            (r#"{"version":"v1","routes":[{"name":"r","mirror":{"percent":5}}]}"#, "exactly one of subset, service"),
            (r#"{"version":"v1","routes":[{"name":"r","mirror":{"subset":"x","percent":5}}]}"#, "not defined"),
            (r#"{"version":"v1","routes":[{"name":"r","mirror":{"service":"Bad!","percent":5}}]}"#, "line 1"),
            (r#"{"version":"v1","routes":[{"name":"r","settings":{"hedge":{}}}]}"#, "hedge needs"),
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
            "defaults":{"timeout_ms":1,"per_try_timeout_ms":1,"idempotent":true,"retry_on":["UNAVAILABLE"],"max_attempts":2,"hedge":{"delay_ms":3}},
            "methods":[{"match":"*","timeout_ms":1,"per_try_timeout_ms":1,"idempotent":true,"retry_on":["INTERNAL"],"max_attempts":2,"hedge":{"delay_ms":3}}],
            "retry_budget":{"ratio":0.5,"min_per_second":3},
            "circuit_breaker":{"max_in_flight":10,"max_pending":5},
            "subsets":{"canary":{"version":"v2"}},
            "routes":[{"name":"r","match":{"method":"/a.B/*","headers":[{"name":"x-a","regex":"1|2"}]},
                       "split":[{"subset":"canary","weight":100}],"sticky":{"header":"x-user"},
                       "settings":{"timeout_ms":5},
                       "fault":{"delay":{"percent":1,"ms":2},"abort":{"percent":3,"code":"INTERNAL"}},
                       "mirror":{"service":"shadow","percent":5}},
                      {"name":"m","mirror":{"subset":"canary","percent":5}}],
            "rate_limits":[{"name":"l","match":{"method":"*"},"per":"caller","per_second":5,"burst":9}],
            "authorization":{"rules":[{"name":"a","from":["web"],"methods":["/a.B/*"]}]}}"#;
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
            (def("hedge"), &doc["defaults"]["hedge"]),
            (def("route"), &doc["routes"][0]),
            (def("route_match"), &doc["routes"][0]["match"]),
            (def("backend"), &doc["routes"][0]["split"][0]),
            (def("sticky"), &doc["routes"][0]["sticky"]),
            (def("fault"), &doc["routes"][0]["fault"]),
            (def("rate_limit"), &doc["rate_limits"][0]),
            (def("authorization"), &doc["authorization"]),
            (def("authorization_rule"), &doc["authorization"]["rules"][0]),
            (&def("fault")["properties"]["delay"], &doc["routes"][0]["fault"]["delay"]),
            (&def("fault")["properties"]["abort"], &doc["routes"][0]["fault"]["abort"]),
        ] {
            assert_eq!(in_schema["additionalProperties"], false);
            let mut listed = keys(&in_schema["properties"]);
            if in_doc == &doc["defaults"] {
                listed.retain(|k| k != "match");
            }
            assert_eq!(listed, keys(in_doc));
        }
        // A mirror goes to a subset or a service: both are in the schema and read.
        assert_eq!(keys(&def("mirror")["properties"]), ["percent", "service", "subset"]);
        assert_eq!(keys(&doc["routes"][0]["mirror"]), ["percent", "service"]);
        assert_eq!(keys(&doc["routes"][1]["mirror"]), ["percent", "subset"]);
        // A header condition holds one of four tests; each is in the schema and read.
        let header = def("header_match");
        assert_eq!(header["additionalProperties"], false);
        assert_eq!(keys(&header["properties"]), ["exact", "name", "prefix", "present", "regex"]);
        for test in [r#""exact":"1""#, r#""prefix":"1""#, r#""regex":"1""#, r#""present":true"#] {
            let doc = format!(
                r#"{{"version":"v1","routes":[{{"name":"r","match":{{"headers":[{{"name":"x",{test}}}]}}}}]}}"#
            );
            assert!(ServicePolicy::parse(doc.as_bytes()).is_ok(), "{test}");
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
