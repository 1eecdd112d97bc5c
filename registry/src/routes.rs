//! Traffic routing in a service policy: named **subsets** of a service's instances (by their
//! labels) and ordered **routes** that send matching calls to them.
//!
//! ```json
//! {
//!   "version": "v1",
//!   "subsets": { "stable": { "version": "v1" }, "canary": { "version": "v2" } },
//!   "routes": [
//!     { "name": "testers", "match": { "headers": [{ "name": "x-canary", "exact": "1" }] },
//!       "split": [{ "subset": "canary", "weight": 100 }] },
//!     { "name": "canary", "split": [{ "subset": "stable", "weight": 90 }, { "subset": "canary", "weight": 10 }],
//!       "sticky": { "header": "x-user" } }
//!   ]
//! }
//! ```
//!
//! A call takes the first route whose `match` fits it (its gRPC method, `/pkg.Service/Method` or
//! `/pkg.Service/Prefix*`, and every header condition: `exact`, `prefix`, `regex` over the whole
//! value, or `present: true|false`); a route without `match` takes every call. A call no route
//! takes goes to all instances, as without routes. The route's `split` picks a subset per call
//! by weight (weights add up to 100; an entry without `subset` means all instances), so a 1 %
//! canary works over one multiplexed connection. With `sticky`, the hash of a header's value
//! picks the subset instead of chance: one end user stays on one subset, in every proxy. A subset
//! that has no instances right now is left out of the draw and the others share its weight;
//! `meshctl apply` refuses a split to a subset without instances before it is stored.
//!
//! A route may carry `settings` (the `methods` entry fields: timeouts, retries, hedging) that
//! take precedence over the method's for the calls it takes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::document::method_matches;
use crate::policy::{Code, MethodPolicy};

/// Most routes in one document.
pub const MAX_ROUTES: usize = 100;
/// Most subsets in one document.
pub const MAX_SUBSETS: usize = 32;
/// Most header conditions in one route.
pub const MAX_HEADER_MATCHES: usize = 16;
/// Most entries in one split.
pub const MAX_SPLIT: usize = 16;
/// What a split's weights add up to.
pub const TOTAL_WEIGHT: u32 = 100;
/// Longest regular expression, bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// Largest compiled regular expression, bytes (the `regex` crate's size limit).
const MAX_REGEX_SIZE: usize = 256 * 1024;

/// Which instances a subset holds: those whose labels include all of these. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector(pub Arc<BTreeMap<String, String>>);

impl Selector {
    /// Whether an instance with `labels` belongs to the subset.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Shown in metrics, spans and `meshctl`; unique within the document.
    pub name: Arc<str>,
    /// Which calls; absent: every call.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    /// Where they go; absent: all instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Backend>,
    /// Keep one end user on one subset: the hash of this header's value picks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Timeouts, retries and hedging for the calls this route takes, over the method's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<MethodPolicy>,
    /// Faults injected into the calls this route takes (resilience testing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// A copy of a share of the route's calls, sent to a shadow; its answers are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// Where a route's calls are mirrored: a subset of this service, or another service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// A name from `subsets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::name::ServiceName>,
    /// Share of the route's calls, 0-100.
    pub percent: u32,
}

/// Faults the caller's proxy injects: a share of the calls is delayed, a share is failed without
/// being sent. Select the calls with the route's `match` (a test header, say) so only a test's own
/// calls are hurt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Held this long before they are sent (within their deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Answered at once with a status, never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// A delay fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// Share of the route's calls, 0-100.
    pub percent: u32,
    /// How long, milliseconds (1 to 60 000).
    pub ms: u64,
}

/// An abort fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// Share of the route's calls, 0-100.
    pub percent: u32,
    /// The gRPC status they get.
    pub code: Code,
}

/// Longest injected delay, milliseconds.
pub const MAX_FAULT_DELAY_MS: u64 = 60_000;

/// The calls a route takes: all conditions hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `/pkg.Service/Method`, `/pkg.Service/Prefix*` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Conditions on request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A condition on one request header (its first value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Lower case, as HTTP/2 sends it.
    pub name: HeaderKey,
    /// The value is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression (Rust `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Pattern>,
    /// The header is there (`true`) or not (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// One entry of a split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// A name from `subsets`; absent: all instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<Arc<str>>,
    /// Share of the route's calls; a split's weights add up to 100.
    pub weight: u32,
}

/// Where sticky routing reads the end user from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// The request header whose value names the end user (a call without it is split by chance).
    pub header: HeaderKey,
}

/// A request header's name, checked and parsed when the document is read: lower case, as HTTP/2
/// sends it. A call's lookup by it neither parses nor lower-cases the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderKey(http::HeaderName);

impl HeaderKey {
    /// Checks and parses `name`.
    pub fn new(name: &str) -> Result<Self, String> {
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(parsed) if name.bytes().all(allowed) => Ok(Self(parsed)),
            _ => Err(format!("header name {name:?}: use lower-case letters, digits, '-' and '_'")),
        }
    }

    /// The parsed name, for lookups in a request's headers.
    pub fn name(&self) -> &http::HeaderName {
        &self.0
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Serialize for HeaderKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HeaderKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

/// A regular expression anchored to the whole value, compiled when the document is read: a
/// pattern that does not compile fails the document there, at its line and column. It runs over
/// the value's bytes (no UTF-8 check per call); in its default Unicode mode, `.` and classes match
/// only well-formed UTF-8, so a value that is not UTF-8 fails a pattern such as `.*`.
#[derive(Clone, Debug)]
pub struct Pattern(Arc<regex::bytes::Regex>);

impl Pattern {
    /// Compiles `source`, anchored.
    pub fn new(source: &str) -> Result<Self, String> {
        if source.len() > MAX_REGEX_LEN {
            return Err(format!("regex is {} bytes, over the {MAX_REGEX_LEN}-byte limit", source.len()));
        }
        regex::bytes::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .map(|re| Self(Arc::new(re)))
            .map_err(|e| format!("regex {source:?} does not compile: {e}"))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        let anchored = self.0.as_str();
        &anchored[4..anchored.len() - 2]
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &[u8]) -> bool {
        self.0.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Self::new(&source).map_err(serde::de::Error::custom)
    }
}

impl RouteMatch {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(method) = &self.method
            && !crate::policy::valid_pattern(method)
        {
            return Err(format!("match.method {method:?}: use /pkg.Service/Method, /pkg.Service/Prefix* or *"));
        }
        if self.headers.len() > MAX_HEADER_MATCHES {
            return Err(format!("more than {MAX_HEADER_MATCHES} header conditions"));
        }
        for (i, h) in self.headers.iter().enumerate() {
            h.validate().map_err(|e| format!("match.headers[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// Whether a call to `path` with headers `header(name)` fits.
    pub fn fits<'p, 'h>(&'p self, path: &str, header: impl Fn(&'p http::HeaderName) -> Option<&'h [u8]>) -> bool {
        self.method.as_deref().is_none_or(|m| method_matches(m, path))
            && self.headers.iter().all(|h| h.fits(header(h.name.name())))
    }
}

impl HeaderMatch {
    fn fits(&self, value: Option<&[u8]>) -> bool {
        match (value, self) {
            (v, Self { present: Some(wanted), .. }) => v.is_some() == *wanted,
            (None, _) => false,
            (Some(v), Self { exact: Some(e), .. }) => v == e.as_bytes(),
            (Some(v), Self { prefix: Some(p), .. }) => v.starts_with(p.as_bytes()),
            (Some(v), Self { regex: Some(re), .. }) => re.is_match(v),
            (Some(_), _) => false,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let conditions = [self.exact.is_some(), self.prefix.is_some(), self.regex.is_some(), self.present.is_some()];
        if conditions.iter().filter(|c| **c).count() != 1 {
            return Err(format!("header {:?}: give exactly one of exact, prefix, regex, present", self.name.as_str()));
        }
        Ok(())
    }
}

impl Route {
    /// Checks the route on its own; `subsets` are the document's.
    pub(crate) fn validate(&self, subsets: &BTreeMap<String, Selector>) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 63 {
            return Err("`name` must be 1-63 characters".into());
        }
        if let Some(m) = &self.matches {
            m.validate()?;
        }
        if self.split.len() > MAX_SPLIT {
            return Err(format!("more than {MAX_SPLIT} split entries"));
        }
        for (i, backend) in self.split.iter().enumerate() {
            if let Some(subset) = &backend.subset
                && !subsets.contains_key(&**subset)
            {
                return Err(format!("split[{i}]: subset {subset:?} is not defined in `subsets`"));
            }
        }
        let total: u64 = self.split.iter().map(|b| u64::from(b.weight)).sum();
        if !self.split.is_empty() && total != u64::from(TOTAL_WEIGHT) {
            return Err(format!("split weights add up to {total}, not {TOTAL_WEIGHT}"));
        }
        if let Some(fault) = &self.fault {
            if fault.delay.is_some_and(|d| d.percent > 100 || d.ms == 0 || d.ms > MAX_FAULT_DELAY_MS) {
                return Err(format!("fault.delay: percent must be 0-100, ms 1-{MAX_FAULT_DELAY_MS}"));
            }
            if fault.abort.is_some_and(|a| a.percent > 100) {
                return Err("fault.abort: percent must be 0-100".into());
            }
        }
        if let Some(mirror) = &self.mirror {
            if mirror.percent > 100 {
                return Err("mirror.percent must be 0-100".into());
            }
            match (&mirror.subset, &mirror.service) {
                (Some(subset), None) if !subsets.contains_key(subset) => {
                    return Err(format!("mirror.subset {subset:?} is not defined in `subsets`"));
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err("mirror: give exactly one of subset, service".into()),
            }
        }
        if let Some(settings) = &self.settings {
            if settings.matches.is_some() {
                return Err("settings: `match` belongs to the route".into());
            }
            settings.validate().map_err(|e| format!("settings: {e}"))?;
        }
        Ok(())
    }

    /// Whether a call to `path` with headers `header(name)` takes this route.
    pub fn fits<'p, 'h>(&'p self, path: &str, header: impl Fn(&'p http::HeaderName) -> Option<&'h [u8]>) -> bool {
        self.matches.as_ref().is_none_or(|m| m.fits(path, header))
    }

    /// Picks a split entry: by `sticky_hash` if given, else by `chance` (uniform in 0..100),
    /// over the entries whose subset `serves` now. `None`: the split is empty (all instances) or
    /// none of its subsets has instances.
    pub fn pick(&self, sticky_hash: Option<u64>, chance: u32, serves: impl Fn(&Backend) -> bool) -> Option<&Backend> {
        let mut live = [false; MAX_SPLIT];
        let mut total = 0u64;
        for (i, backend) in self.split.iter().enumerate().take(MAX_SPLIT) {
            if backend.weight > 0 && serves(backend) {
                live[i] = true;
                total += u64::from(backend.weight);
            }
        }
        if total == 0 {
            return None;
        }
        // A point in 0..total: all entries live, it falls exactly as the weights say.
        let point = match sticky_hash {
            Some(hash) => hash % total,
            None => u64::from(chance) * total / u64::from(TOTAL_WEIGHT),
        };
        let mut upto = 0u64;
        for (i, backend) in self.split.iter().enumerate().take(MAX_SPLIT) {
            if live[i] {
                upto += u64::from(backend.weight);
                if point < upto {
                    return Some(backend);
                }
            }
        }
        None
    }
}

/// FNV-1a, 64 bits: the same user lands on the same subset in every proxy and every version.
pub fn sticky_hash(value: &[u8]) -> u64 {
    value.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: &str) -> Route {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&http::HeaderName) -> Option<&'a [u8]> {
        move |name| pairs.iter().find(|(k, _)| *k == name.as_str()).map(|(_, v)| v.as_bytes())
    }

    #[test]
    fn header_conditions_match_exactly_by_prefix_by_regex_and_by_presence() {
        let r = route(
            r#"{"name":"r","match":{"method":"/a.B/*","headers":[
                {"name":"x-a","exact":"1"},{"name":"x-b","prefix":"be"},{"name":"x-c","regex":"[0-9]+"},
                {"name":"x-d","present":false}]}}"#,
        );
        let all = [("x-a", "1"), ("x-b", "beta"), ("x-c", "42")];
        assert!(r.fits("/a.B/C", headers(&all)));
        assert!(!r.fits("/z.B/C", headers(&all)), "method");
        assert!(!r.fits("/a.B/C", headers(&[("x-a", "2"), ("x-b", "beta"), ("x-c", "42")])), "exact");
        assert!(!r.fits("/a.B/C", headers(&[("x-a", "1"), ("x-b", "alpha"), ("x-c", "42")])), "prefix");
        assert!(!r.fits("/a.B/C", headers(&[("x-a", "1"), ("x-b", "beta"), ("x-c", "42a")])), "regex is anchored");
        assert!(!r.fits("/a.B/C", headers(&[("x-a", "1"), ("x-b", "beta"), ("x-c", "4"), ("x-d", "")])), "absent");
        assert!(!r.fits("/a.B/C", headers(&[("x-b", "beta"), ("x-c", "42")])), "a missing header fails its condition");
        assert!(route(r#"{"name":"all"}"#).fits("/any.S/M", headers(&[])));
        assert_eq!(r.matches.as_ref().and_then(|m| m.headers[2].regex.as_ref()).map(Pattern::as_str), Some("[0-9]+"));
    }

    #[test]
    fn a_split_falls_as_its_weights_say_and_skips_subsets_without_instances() {
        let r = route(r#"{"name":"r","split":[{"subset":"a","weight":90},{"subset":"b","weight":10}]}"#);
        let picks = |serves: &dyn Fn(&Backend) -> bool| -> Vec<Option<Arc<str>>> {
            (0..100).map(|c| r.pick(None, c, serves).and_then(|b| b.subset.clone())).collect()
        };
        let all = picks(&|_| true);
        assert_eq!(all.iter().filter(|s| s.as_deref() == Some("b")).count(), 10, "exactly 10 of 100 points");
        let no_b = picks(&|b| b.subset.as_deref() != Some("b"));
        assert!(no_b.iter().all(|s| s.as_deref() == Some("a")), "b's share goes to a");
        assert!(picks(&|_| false).iter().all(Option::is_none), "nothing serves: no pick");
        // Sticky: the same user always gets the same entry; users spread by the weights.
        let user = |u: &str| r.pick(Some(sticky_hash(u.as_bytes())), 0, |_| true).and_then(|b| b.subset.clone());
        assert!((0..50).all(|_| user("alice") == user("alice")));
        let on_b = (0..10_000).filter(|i| user(&format!("user-{i}")).as_deref() == Some("b")).count();
        assert!((800..1200).contains(&on_b), "{on_b} of 10 000 users on the 10 % subset");
    }

    #[test]
    fn selectors_need_every_label() {
        let s: Selector = serde_json::from_str(r#"{"version":"v2","zone":"a"}"#).unwrap_or_default();
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(s.matches(&labels(&[("version", "v2"), ("zone", "a"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("version", "v2")])));
        assert!(Selector::default().matches(&labels(&[])));
    }
}
