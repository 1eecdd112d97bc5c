//! The ingress gateway's document: which outside requests go to which mesh service, and the
//! certificates its TLS listener serves.
//!
//! ```yaml
//! certificates:                   # chosen by SNI from each certificate's DNS names
//!   - { cert: /etc/mesh/gateway/api.crt, key: /etc/mesh/gateway/api.key }
//! routes:                         # the first that fits a request takes it
//!   - name: echo
//!     hosts: [api.example.com]    # exact, or `*.example.com`; absent: any host
//!     grpc_service: mesh.demo.v1.Echo   # gRPC: /mesh.demo.v1.Echo/<Method>
//!     service: echo
//!     subset: { version: v2 }     # optional: only instances with these labels
//!   - name: api
//!     path_prefix: /api/          # anything else: by path prefix
//!     service: web
//!     limits: { per_client: { per_second: 20 }, timeout_ms: 2000 }
//!   - name: page
//!     path_prefix: /              # or files the gateway serves itself (GET and HEAD)
//!     files: /srv/www
//! limits:                         # every route's, unless the route sets its own (field by field)
//!   per_client: { per_second: 100, burst: 200 }  # token bucket per client address and route
//!   per_route: { per_second: 5000 }              # one bucket for all of the route's requests
//!   max_request_bytes: 16777216                  # the request body as sent (default 16 MiB)
//!   timeout_ms: 30000                            # to the response headers; gRPC's deadline too
//! ```
//!
//! YAML (or JSON, which is YAML). A document that does not parse says the line and column; one that
//! parses but cannot be used names the entry and what is wrong. Nothing of a bad document is used.
//!
//! Routes can also live in etcd, at `<prefix>/v1/gateways/<gateway service>` (`meshctl gateway
//! apply`): a document of `routes:` only, which every gateway of that service puts after the routes
//! of its file. Everything else (certificates, token keys, CORS, limits) names the gateway's own
//! files or is its own, so it stays in the file.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ServiceName;
use crate::layout::Layout;
use crate::routes::Selector;

/// The largest document read.
pub const MAX_GATEWAY_BYTES: usize = 256 * 1024;
/// The most routes in a document.
pub const MAX_GATEWAY_ROUTES: usize = 512;
/// The most certificates in a document.
pub const MAX_CERTIFICATES: usize = 64;
/// A route's largest request body when no `max_request_bytes` is given.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;
/// The largest `max_request_bytes`.
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// The longest `timeout_ms`: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// A gateway's routes and certificates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayDocument {
    /// The TLS listener's certificates.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// In order: the first that fits a request takes it.
    #[serde(default)]
    pub routes: Vec<GatewayRoute>,
    /// Which web pages' scripts may call through the gateway (gRPC-Web from a browser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// How `authenticated` routes check their callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Every route's limits, unless a route sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Continue the trace of an outside request's `traceparent` (false: the gateway removes it
    /// and starts a new trace, so outside callers cannot choose trace ids or force sampling).
    #[serde(default, skip_serializing_if = "is_false")]
    pub trust_traceparent: bool,
    /// Write one JSON line per outside request to standard output.
    #[serde(default, skip_serializing_if = "is_false")]
    pub access_log: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The `route` label of requests no route takes (a route may not have this name).
pub const UNROUTED: &str = "unrouted";
/// The `route` label of CORS preflights, answered by the gateway (a route may not have this name).
pub const PREFLIGHT: &str = "preflight";

/// Limits on a route's requests. Each field absent from a route's `limits` is the document's, and
/// absent from both, unlimited (but `max_request_bytes`: [`DEFAULT_MAX_REQUEST_BYTES`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests from each client address (a token bucket per address and route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client: Option<Rate>,
    /// All of the route's requests (one token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_route: Option<Rate>,
    /// The largest request body, in bytes as the client sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// How long a request may wait for its response headers, ms; a gRPC call's deadline
    /// (`grpc-timeout`) is lowered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A token bucket: `per_second` requests, `burst` at once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second admitted.
    pub per_second: u32,
    /// Requests admitted at once; default `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Rate {
    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }

    fn validate(&self) -> Result<(), String> {
        let max = crate::limits::MAX_PER_SECOND;
        if !(1..=max).contains(&self.per_second) || self.burst.is_some_and(|b| !(1..=max).contains(&b)) {
            return Err(format!("per_second and burst must be 1-{max}"));
        }
        Ok(())
    }
}

impl Limits {
    /// These limits, with the fields they do not set taken from `defaults`.
    pub fn or(self, defaults: Option<&Self>) -> Self {
        let Some(d) = defaults else { return self };
        Self {
            per_client: self.per_client.or(d.per_client),
            per_route: self.per_route.or(d.per_route),
            max_request_bytes: self.max_request_bytes.or(d.max_request_bytes),
            timeout_ms: self.timeout_ms.or(d.timeout_ms),
        }
    }

    /// The largest request body.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(rate) = &self.per_client {
            rate.validate().map_err(|e| format!("per_client: {e}"))?;
        }
        if let Some(rate) = &self.per_route {
            rate.validate().map_err(|e| format!("per_route: {e}"))?;
        }
        if self.max_request_bytes.is_some_and(|b| !(1..=MAX_REQUEST_BYTES).contains(&b)) {
            return Err(format!("max_request_bytes must be 1-{MAX_REQUEST_BYTES}"));
        }
        if self.timeout_ms.is_some_and(|t| !(1..=MAX_TIMEOUT_MS).contains(&t)) {
            return Err(format!("timeout_ms must be 1-{MAX_TIMEOUT_MS}"));
        }
        Ok(())
    }
}

/// Edge authentication: a JWT bearer token (`Authorization: Bearer <token>`), RS256 or ES256,
/// signed by a key of the JWKS file, from the issuer, for one of the audiences, not expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The issuer's public keys, a JWK set (JSON); followed like the document.
    pub jwks_file: PathBuf,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// One of these must be in the token's `aud`.
    pub audiences: Vec<String>,
    /// The header that carries the token's `sub` to the service; whatever an outside caller sends
    /// in it is removed.
    #[serde(default = "default_subject_header")]
    pub subject_header: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u32,
}

fn default_subject_header() -> String {
    "x-mesh-subject".into()
}

fn default_leeway() -> u32 {
    30
}

impl Auth {
    fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer: give the `iss` tokens carry".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err("audiences: give at least one".into());
        }
        let header = &self.subject_header;
        if header.is_empty()
            || !header.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || matches!(header.as_str(), "authorization" | "host" | "te" | "connection" | "content-type")
            || header.starts_with("grpc-")
        {
            return Err(format!("subject_header {header:?}: use a lowercase header name of your own"));
        }
        if self.leeway_s > 300 {
            return Err("leeway_s: at most 300".into());
        }
        Ok(())
    }
}

/// Who may take a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    /// Anyone.
    #[default]
    Public,
    /// Callers with a valid token (the document's `auth`).
    Authenticated,
}

/// Cross-origin calls from browsers: preflights answered at the gateway, allowed origins told so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins (`https://app.example.com`, `http://localhost:8080`), or `*` for any.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight's answer, seconds.
    #[serde(default = "default_max_age")]
    pub max_age_s: u32,
}

fn default_max_age() -> u32 {
    600
}

impl Cors {
    /// Whether a page from `origin` may call.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    fn validate(&self) -> Result<(), String> {
        if self.allowed_origins.is_empty() || self.allowed_origins.len() > 64 {
            return Err("allowed_origins: give 1-64 origins".into());
        }
        for origin in &self.allowed_origins {
            let valid = origin == "*"
                || origin.split_once("://").is_some_and(|(scheme, host)| {
                    matches!(scheme, "http" | "https")
                        && !host.is_empty()
                        && !host.contains('/')
                        && host.bytes().all(|b| b.is_ascii_graphic())
                });
            if !valid {
                return Err(format!("allowed_origins: {origin:?} is not `*` or scheme://host[:port]"));
            }
        }
        if self.max_age_s > 86_400 {
            return Err("max_age_s: at most 86400".into());
        }
        Ok(())
    }
}

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One route into the mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    /// Shown in metrics, logs and errors; unique within the document.
    pub name: Arc<str>,
    /// The hosts it takes (`:authority` or `Host`, without the port): exact names or `*.<suffix>`;
    /// empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A gRPC service by its full name (`pkg.Service`): paths `/pkg.Service/<Method>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// Any path that starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The mesh service the requests go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    /// Instead of a service: a directory whose files the gateway serves (the path after the
    /// route's prefix; `index.html` for a directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<PathBuf>,
    /// Only that service's instances with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<Selector>,
    /// `public` (the default) or `authenticated`.
    #[serde(default)]
    pub auth: RouteAuth,
    /// Its own limits (see [`GatewayDocument::limits_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// A document that cannot be used, with what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway document: {0}")]
pub struct GatewayError(pub String);

impl GatewayDocument {
    /// Parses (YAML or JSON) and checks a document.
    pub fn parse(bytes: &[u8]) -> Result<Self, GatewayError> {
        let document = Self::read(bytes)?;
        document.validate()?;
        Ok(document)
    }

    /// Parses without checking.
    fn read(bytes: &[u8]) -> Result<Self, GatewayError> {
        if bytes.len() > MAX_GATEWAY_BYTES {
            return Err(GatewayError(format!("{} bytes, over the {MAX_GATEWAY_BYTES}-byte limit", bytes.len())));
        }
        serde_norway::from_slice(bytes).map_err(|e| GatewayError(e.to_string()))
    }

    fn validate(&self) -> Result<(), GatewayError> {
        self.check(true)
    }

    /// Checks the document; `whole`: it is all there is (an authenticated route needs its `auth`).
    fn check(&self, whole: bool) -> Result<(), GatewayError> {
        if self.certificates.len() > MAX_CERTIFICATES {
            return Err(GatewayError(format!("more than {MAX_CERTIFICATES} certificates")));
        }
        if self.routes.len() > MAX_GATEWAY_ROUTES {
            return Err(GatewayError(format!("more than {MAX_GATEWAY_ROUTES} routes")));
        }
        if let Some(cors) = &self.cors {
            cors.validate().map_err(|e| GatewayError(format!("cors: {e}")))?;
        }
        if let Some(auth) = &self.auth {
            auth.validate().map_err(|e| GatewayError(format!("auth: {e}")))?;
        }
        if let Some(limits) = &self.limits {
            limits.validate().map_err(|e| GatewayError(format!("limits: {e}")))?;
        }
        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = |e: String| GatewayError(format!("routes[{i}] ({:?}): {e}", route.name));
            route.validate().map_err(at)?;
            if !names.insert(&*route.name) {
                return Err(at("another route has this name".into()));
            }
            if [UNROUTED, PREFLIGHT].contains(&&*route.name) {
                return Err(at("the name is reserved for requests no route takes".into()));
            }
            if whole && route.auth == RouteAuth::Authenticated && self.auth.is_none() {
                return Err(at("`auth: authenticated` needs the document's `auth` section".into()));
            }
        }
        Ok(())
    }

    /// Parses and checks a document of routes kept in etcd: `routes:` and nothing else.
    /// An `authenticated` route passes here; the file it joins must have `auth` ([`Self::with_routes`]).
    pub fn parse_routes(bytes: &[u8]) -> Result<Vec<GatewayRoute>, GatewayError> {
        let document = Self::read(bytes)?;
        document.check(false)?;
        let Self { certificates, routes, cors, auth, limits, trust_traceparent, access_log } = document;
        if !certificates.is_empty()
            || cors.is_some()
            || auth.is_some()
            || limits.is_some()
            || trust_traceparent
            || access_log
        {
            return Err(GatewayError(
                "only `routes` may come from etcd: certificates, auth, cors, limits, trust_traceparent and \
                 access_log belong to each gateway's file"
                    .into(),
            ));
        }
        Ok(routes)
    }

    /// This document with `routes` (from etcd) after its own, checked again as one document:
    /// route names unique across both, `auth: authenticated` only with this document's `auth`.
    pub fn with_routes(mut self, routes: &[GatewayRoute]) -> Result<Self, GatewayError> {
        if routes.is_empty() {
            return Ok(self);
        }
        let own = self.routes.len();
        self.routes.extend_from_slice(routes);
        self.validate().map_err(|GatewayError(e)| {
            GatewayError(format!("with the routes from etcd: {e} (routes[{own}] on are etcd's)"))
        })?;
        Ok(self)
    }

    /// The first route that takes a request for `host` (lowercase, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&GatewayRoute> {
        self.routes.iter().find(|r| r.fits(host, path))
    }

    /// A route's limits: its own, and the document's for the fields it does not set.
    pub fn limits_of(&self, route: &GatewayRoute) -> Limits {
        route.limits.unwrap_or_default().or(self.limits.as_ref())
    }
}

impl GatewayRoute {
    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 63 || !self.name.bytes().all(label_char) {
            return Err("name must be 1-63 characters of a-z, 0-9, `-` and `_`".into());
        }
        match (&self.grpc_service, &self.path_prefix) {
            (Some(_), Some(_)) | (None, None) => return Err("give one of `grpc_service` and `path_prefix`".into()),
            (Some(service), None) if !valid_grpc_service(service) => {
                return Err(format!("grpc_service {service:?}: use the full name, `package.Service`"));
            }
            (None, Some(prefix)) if !prefix.starts_with('/') || prefix.bytes().any(|b| b.is_ascii_control()) => {
                return Err(format!("path_prefix {prefix:?} must start with `/`"));
            }
            _ => {}
        }
        match (&self.service, &self.files) {
            (Some(_), Some(_)) | (None, None) => return Err("give one of `service` and `files`".into()),
            (None, Some(_)) if self.subset.is_some() => return Err("`subset` goes with `service`".into()),
            (None, Some(_)) if self.grpc_service.is_some() => return Err("`files` goes with `path_prefix`".into()),
            (None, Some(dir)) if !dir.is_absolute() => {
                return Err(format!("files {:?}: give an absolute directory", dir.display()));
            }
            _ => {}
        }
        if self.hosts.len() > 64 {
            return Err("more than 64 hosts".into());
        }
        for host in &self.hosts {
            if !valid_host_pattern(host) {
                return Err(format!("host {host:?}: use a lowercase DNS name or `*.<suffix>`"));
            }
        }
        if let Some(subset) = &self.subset
            && subset.0.is_empty()
        {
            return Err("subset: give at least one label".into());
        }
        if let Some(limits) = &self.limits {
            limits.validate().map_err(|e| format!("limits: {e}"))?;
        }
        Ok(())
    }

    /// Whether it takes a request for `host` (lowercase, no port) and `path`.
    pub fn fits(&self, host: &str, path: &str) -> bool {
        self.host_pattern(host).is_some()
            && match (&self.grpc_service, &self.path_prefix) {
                (Some(service), _) => path
                    .strip_prefix('/')
                    .and_then(|p| p.strip_prefix(service.as_str()))
                    .is_some_and(|rest| rest.starts_with('/')),
                (None, Some(prefix)) => path.starts_with(prefix.as_str()),
                (None, None) => false,
            }
    }

    /// Which of the route's hosts takes `host`: the exact name or the `*.<suffix>` pattern as
    /// written, `*` for a route that takes any host (the `host` label of the gateway's metrics:
    /// one of the document's, whatever outside clients send).
    pub fn host_pattern(&self, host: &str) -> Option<&str> {
        if self.hosts.is_empty() {
            return Some("*");
        }
        self.hosts.iter().map(String::as_str).find(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => host.strip_suffix(suffix).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => *pattern == host,
        })
    }
}

impl Layout {
    /// Every gateway service's routes: `<prefix>/v1/gateways/`.
    pub fn gateways(&self) -> String {
        format!("{}gateways/", self.root())
    }

    /// The routes of the gateways of service `service`.
    pub fn gateway(&self, service: &ServiceName) -> String {
        format!("{}{service}", self.gateways())
    }
}

fn label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

fn valid_grpc_service(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

fn valid_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The labels of a subset, as given in a document (for messages).
pub fn describe(subset: &Selector) -> String {
    let labels: &BTreeMap<String, String> = &subset.0;
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
certificates:
  - { cert: /c/api.crt, key: /c/api.key }
routes:
  - name: echo-v2
    hosts: [beta.example.com]
    grpc_service: mesh.demo.v1.Echo
    service: echo
    subset: { version: v2 }
  - name: echo
    grpc_service: mesh.demo.v1.Echo
    service: echo
  - name: wild
    hosts: ["*.example.com"]
    path_prefix: /api/
    service: api
"#;

    fn doc() -> GatewayDocument {
        GatewayDocument::parse(DOC.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_first_route_that_fits_takes_the_request() {
        let doc = doc();
        let name = |host, path| doc.route(host, path).map(|r| r.name.to_string());
        assert_eq!(name("beta.example.com", "/mesh.demo.v1.Echo/Unary").as_deref(), Some("echo-v2"));
        assert_eq!(name("localhost", "/mesh.demo.v1.Echo/Unary").as_deref(), Some("echo"));
        assert_eq!(name("x.example.com", "/api/users").as_deref(), Some("wild"));
        assert_eq!(name("example.com", "/api/users"), None, "a wildcard needs a label before its suffix");
        assert_eq!(name("xexample.com", "/api/users"), None);
        assert_eq!(name("localhost", "/mesh.demo.v1.EchoMore/Unary"), None, "a service name is whole");
        assert_eq!(name("localhost", "/mesh.demo.v1.Echo"), None);
        assert_eq!(doc.certificates[0].key, PathBuf::from("/c/api.key"));
        assert_eq!(describe(doc.routes[0].subset.as_ref().unwrap_or_else(|| unreachable!())), "version=v2");
        let cors = GatewayDocument::parse(b"cors: { allowed_origins: [\"http://localhost:8080\"] }")
            .unwrap_or_else(|e| panic!("{e}"))
            .cors
            .unwrap_or_else(|| unreachable!());
        assert!(cors.allows("http://localhost:8080") && !cors.allows("http://evil.test"));
        assert_eq!(cors.max_age_s, 600);
    }

    #[test]
    fn routes_from_etcd_come_after_the_files_and_are_checked_with_them() {
        let routes = GatewayDocument::parse_routes(b"routes:\n  - { name: extra, path_prefix: /x/, service: x }\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let merged = doc().with_routes(&routes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merged.routes.last().map(|r| &*r.name), Some("extra"));
        assert_eq!(merged.route("any.test", "/x/y").map(|r| &*r.name), Some("extra"));
        // Only routes, and no name twice.
        let error =
            |bytes: &[u8]| GatewayDocument::parse_routes(bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error(b"access_log: true\nroutes: []\n").contains("only `routes`"));
        assert!(error(b"routes:\n  - { name: a, path_prefix: x, service: e }\n").contains("path_prefix"));
        assert!(
            error(b"routes:\n  - { name: a,\n      nope: 1 }\n").contains("line 3"),
            "{}",
            error(b"routes:\n  - { name: a,\n      nope: 1 }\n")
        );
        let twice = GatewayDocument::parse_routes(b"routes: [{ name: echo, path_prefix: /, service: e }]")
            .unwrap_or_else(|e| panic!("{e}"));
        let clash = doc().with_routes(&twice).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(clash.contains("another route has this name") && clash.contains("etcd"), "{clash}");
        let secure =
            GatewayDocument::parse_routes(b"routes: [{ name: s, path_prefix: /, service: e, auth: authenticated }]")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(doc().with_routes(&secure).is_err(), "authenticated needs the file's auth section");
        assert_eq!(
            Layout::default().gateway(&"api-gateway".parse().unwrap_or_else(|e| panic!("{e:?}"))),
            "/mesh/v1/gateways/api-gateway"
        );
    }

    #[test]
    fn the_host_label_is_the_documents_pattern_not_the_callers_name() {
        let doc = doc();
        let pattern = |host, path| doc.route(host, path).and_then(|r| r.host_pattern(host)).map(str::to_string);
        assert_eq!(pattern("x.example.com", "/api/users").as_deref(), Some("*.example.com"));
        assert_eq!(pattern("beta.example.com", "/mesh.demo.v1.Echo/Unary").as_deref(), Some("beta.example.com"));
        assert_eq!(pattern("anything.test", "/mesh.demo.v1.Echo/Unary").as_deref(), Some("*"));
        assert!(!doc.trust_traceparent && !doc.access_log, "both off unless set");
        let on =
            GatewayDocument::parse(b"trust_traceparent: true\naccess_log: true\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(on.trust_traceparent && on.access_log);
        for reserved in [UNROUTED, PREFLIGHT] {
            let text = format!("routes: [{{ name: {reserved}, path_prefix: /, service: e }}]");
            let error = GatewayDocument::parse(text.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("reserved"), "{reserved}: {error}");
        }
    }

    #[test]
    fn bad_documents_say_where_and_what() {
        let cases = [
            ("routes:\n  - name: a\n    grpc_service: a.B\n    service: echo\n    color: red\n", "line 5"),
            ("routes:\n  - name: a\n    grpc_service: [\n", "line"),
            ("routes:\n  - { name: a, service: echo }\n", "routes[0] (\"a\"): give one of"),
            ("routes:\n  - { name: a, service: echo, grpc_service: a.B, path_prefix: / }\n", "give one of"),
            ("routes:\n  - { name: a, service: echo, grpc_service: /a.B/ }\n", "grpc_service \"/a.B/\""),
            ("routes:\n  - { name: a, service: echo, path_prefix: api }\n", "must start with `/`"),
            ("routes:\n  - { name: a, service: Echo!, path_prefix: / }\n", "line 2"),
            ("routes:\n  - { name: a, hosts: [Api.com], service: e, path_prefix: / }\n", "host \"Api.com\""),
            ("routes:\n  - { name: a, hosts: ['*'], service: e, path_prefix: / }\n", "host \"*\""),
            ("routes:\n  - { name: A, service: e, path_prefix: / }\n", "name must be"),
            ("routes:\n  - { name: a, service: e, path_prefix: /, subset: {} }\n", "subset: give at least one"),
            ("cors: { allowed_origins: [example.com] }\n", "cors: allowed_origins: \"example.com\""),
            ("routes:\n  - { name: a, path_prefix: / }\n", "give one of `service` and `files`"),
            (
                "routes:\n  - { name: a, path_prefix: /, service: e, auth: authenticated }\n",
                "needs the document's `auth`",
            ),
            ("routes:\n  - { name: a, path_prefix: /, service: e, auth: maybe }\n", "line 2"),
            ("auth: { jwks_file: /j, issuer: i, audiences: [] }\n", "auth: audiences"),
            ("auth: { jwks_file: /j, issuer: i, audiences: [a], subject_header: Authorization }\n", "subject_header"),
            ("auth: { jwks_file: /j, issuer: i, audiences: [a], subject_header: grpc-status }\n", "subject_header"),
            ("routes:\n  - { name: a, path_prefix: /, service: e, files: /w }\n", "give one of `service`"),
            ("routes:\n  - { name: a, path_prefix: /, files: www }\n", "absolute"),
            ("routes:\n  - { name: a, path_prefix: /, files: /w, subset: { v: a } }\n", "`subset` goes with"),
            ("cors: { allowed_origins: [] }\n", "cors: allowed_origins: give"),
            ("limits: { per_client: { per_second: 0 } }\n", "limits: per_client: per_second and burst"),
            ("limits: { per_route: { per_second: 5, burst: 0 } }\n", "limits: per_route"),
            ("limits: { max_request_bytes: 0 }\n", "max_request_bytes must be"),
            ("limits: { timeout_ms: 0 }\n", "timeout_ms must be"),
            ("limits: { per_client: 5 }\n", "line 1"),
            (
                "routes:\n  - { name: a, path_prefix: /, service: e, limits: { timeout_ms: 99999999 } }\n",
                "routes[0] (\"a\"): limits: timeout_ms",
            ),
            ("cors: { allowed_origins: [\"http://a/b\"] }\n", "is not `*`"),
            (
                "routes:\n  - { name: a, service: e, path_prefix: / }\n  - { name: a, service: f, path_prefix: / }\n",
                "routes[1] (\"a\"): another route",
            ),
        ];
        for (text, expected) in cases {
            match GatewayDocument::parse(text.as_bytes()) {
                Ok(doc) => panic!("accepted {text:?}: {doc:?}"),
                Err(e) => assert!(e.to_string().contains(expected), "{text:?}: {e} (expected {expected:?})"),
            }
        }
        let huge = vec![b' '; MAX_GATEWAY_BYTES + 1];
        assert!(GatewayDocument::parse(&huge).is_err_and(|e| e.to_string().contains("over the")));
    }

    #[test]
    fn a_route_takes_the_documents_limits_for_what_it_does_not_set() {
        let doc = GatewayDocument::parse(
            b"limits: { per_client: { per_second: 10 }, timeout_ms: 500 }\n\
              routes:\n\
              - { name: own, path_prefix: /a, service: e, limits: { per_client: { per_second: 2, burst: 4 } } }\n\
              - { name: inherits, path_prefix: /, service: e }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let own = doc.limits_of(&doc.routes[0]);
        assert_eq!(own.per_client, Some(Rate { per_second: 2, burst: Some(4) }));
        assert_eq!((own.timeout_ms, own.per_route), (Some(500), None));
        assert_eq!(own.max_request_bytes(), DEFAULT_MAX_REQUEST_BYTES);
        let inherits = doc.limits_of(&doc.routes[1]);
        assert_eq!(inherits.per_client.map(|r| r.burst()), Some(10));
        let none = GatewayDocument::parse(b"routes: [{ name: a, path_prefix: /, service: e }]")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.limits_of(&none.routes[0]), Limits::default());
    }

    #[test]
    fn the_compose_demos_document_is_valid_and_routes_the_demo() {
        let doc = GatewayDocument::parse(include_bytes!("../../compose/gateway/gateway.yaml"))
            .unwrap_or_else(|e| panic!("compose/gateway/gateway.yaml: {e}"));
        let service = |path| doc.route("localhost", path).and_then(|r| r.service.as_ref()).map(|s| s.to_string());
        assert_eq!(service("/mesh.demo.v1.Echo/Unary").as_deref(), Some("store"));
        assert_eq!(service("/mesh.demo.v1.Frontend/Hello").as_deref(), Some("frontend"));
        assert!(doc.route("localhost", "/index.html").is_some_and(|r| r.files.is_some()));
    }

    #[test]
    fn json_is_accepted_and_an_empty_document_routes_nothing() {
        let json = r#"{"routes":[{"name":"a","path_prefix":"/","service":"web"}]}"#;
        let doc = GatewayDocument::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.route("any", "/x").and_then(|r| r.service.as_ref()).map(|s| s.as_str()), Some("web"));
        let empty = GatewayDocument::parse(b"{}").unwrap_or_else(|e| panic!("{e}"));
        assert!(empty.route("any", "/").is_none());
    }
}
