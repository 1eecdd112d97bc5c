//! Authorization policy: which callers may call a service's gRPC methods.
//!
//! ```text
//! <prefix>/v1/authz/default          {"default": "allow-authenticated" | "deny"}
//! <prefix>/v1/authz/services/<svc>   {"rules": [{"name": "...", "from": ["frontend"], "methods": ["/pkg.Svc/*"]}]}
//! ```
//!
//! A service with a policy allows a call only if one of its rules matches the caller (a service
//! name, or `*` for any identity in the trust domain) and the method (`/pkg.Service/Method`,
//! `/pkg.Service/*`, or `*`). A service without a policy follows the mesh-wide default
//! (`allow-authenticated` when unset). Callers are identified by their mTLS certificate only.
//!
//! The same rules may live in the service's policy document instead (its `authorization` field,
//! [`crate::policy`]): one document per service for everything. There they take precedence over
//! the key above, which stays supported; moving them is one `meshctl apply` and one
//! `meshctl policy delete` (the README's migration step).

use serde::{Deserialize, Serialize};

use crate::document::method_matches;
use crate::identity::Identity;
use crate::layout::Layout;
use crate::name::ServiceName;

/// Largest policy accepted, bytes; most rules per policy.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Most rules in one policy.
pub const MAX_RULES: usize = 256;

/// What happens to a call to a service that has no policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultMode {
    /// Any caller with a mesh identity.
    #[default]
    AllowAuthenticated,
    /// Nobody.
    Deny,
}

/// The mesh-wide setting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshDefault {
    /// The default mode.
    pub default: DefaultMode,
}

/// One service's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Any matching rule allows the call.
    pub rules: Vec<Rule>,
}

/// One allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in denials and logs.
    pub name: String,
    /// Caller services, or `*` for any identity in the trust domain.
    pub from: Vec<String>,
    /// `/pkg.Service/Method`, `/pkg.Service/*`, or `*`.
    pub methods: Vec<String>,
}

/// A policy that cannot be used, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

impl Policy {
    /// Parses and checks a policy document (JSON).
    pub fn parse(bytes: &[u8]) -> Result<Self, PolicyError> {
        let policy: Self = crate::document::decode(bytes, MAX_POLICY_BYTES).map_err(PolicyError)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks what the types cannot say (rule names, caller names, method patterns).
    pub fn check(&self) -> Result<(), PolicyError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError(format!("more than {MAX_RULES} rules")));
        }
        for rule in &self.rules {
            let bad = |what: String| PolicyError(format!("rule {:?}: {what}", rule.name));
            if rule.name.is_empty() || rule.name.len() > 63 {
                return Err(bad("name must be 1-63 characters".into()));
            }
            if rule.from.is_empty() || rule.methods.is_empty() {
                return Err(bad("`from` and `methods` must each list at least one entry".into()));
            }
            for from in &rule.from {
                if from != "*" && from.parse::<ServiceName>().is_err() {
                    return Err(bad(format!("`from` entry {from:?} is neither a service name nor *")));
                }
            }
            for method in &rule.methods {
                if !valid_method_pattern(method) {
                    return Err(bad(format!("method {method:?}: use /pkg.Service/Method, /pkg.Service/* or *")));
                }
            }
        }
        Ok(())
    }
}

fn valid_method_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let Some(rest) = p.strip_prefix('/') else { return false };
    let Some((service, method)) = rest.split_once('/') else { return false };
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    ident(service) && (method == "*" || ident(method))
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, by this rule (or `default` for the mesh default).
    Allow(String),
    /// Denied, with the message for the caller.
    Deny(String),
}

/// Decides a call from `caller` to `path` on `service`.
pub fn decide(
    policy: Option<&Policy>,
    default: DefaultMode,
    service: &ServiceName,
    caller: Option<&Identity>,
    path: &str,
) -> Decision {
    let who = caller.map_or_else(|| "an unauthenticated caller".to_string(), ToString::to_string);
    let Some(caller) = caller else {
        return Decision::Deny(format!("mesh: permission denied: {who} may not call {path} on {service}"));
    };
    let Some(policy) = policy else {
        return match default {
            DefaultMode::AllowAuthenticated => Decision::Allow("default".into()),
            DefaultMode::Deny => Decision::Deny(format!(
                "mesh: permission denied: {who} may not call {path} on {service} (no policy for {service}; the mesh default is deny)"
            )),
        };
    };
    for rule in &policy.rules {
        let from = rule.from.iter().any(|f| f == "*" || f == caller.service().as_str());
        if from && rule.methods.iter().any(|m| method_matches(m, path)) {
            return Decision::Allow(rule.name.clone());
        }
    }
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    Decision::Deny(format!(
        "mesh: permission denied: {who} may not call {path} on {service} (policy for {service}: no rule allows it; rules: {})",
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    ))
}

impl Layout {
    /// Everything authorization: `<prefix>/v1/authz/`.
    pub fn authz(&self) -> String {
        format!("{}authz/", self.root())
    }

    /// The mesh-wide default.
    pub fn authz_default(&self) -> String {
        format!("{}default", self.authz())
    }

    /// One service's policy.
    pub fn authz_policy(&self, service: &ServiceName) -> String {
        format!("{}services/{service}", self.authz())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        format!("spiffe://mesh.local/svc/{s}").parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rules_allow_what_they_name_and_nothing_else() -> Result<(), PolicyError> {
        let policy = Policy::parse(
            br#"{"rules":[{"name":"frontend-greets","from":["frontend"],"methods":["/mesh.demo.v1.Backend/Greet"]},
                          {"name":"ops-all","from":["ops"],"methods":["*"]},
                          {"name":"any-health","from":["*"],"methods":["/grpc.health.v1.Health/*"]}]}"#,
        )?;
        let svc: ServiceName = "backend".parse().unwrap_or_else(|e| panic!("{e}"));
        let d = |caller: &str, path: &str| decide(Some(&policy), DefaultMode::Deny, &svc, Some(&id(caller)), path);
        assert_eq!(d("frontend", "/mesh.demo.v1.Backend/Greet"), Decision::Allow("frontend-greets".into()));
        assert!(
            matches!(d("frontend", "/mesh.demo.v1.Backend/Other"), Decision::Deny(m) if m.contains("frontend") && m.contains("no rule"))
        );
        assert!(matches!(d("intruder", "/mesh.demo.v1.Backend/Greet"), Decision::Deny(_)));
        assert_eq!(d("ops", "/x.Y/Z"), Decision::Allow("ops-all".into()));
        assert_eq!(d("anyone", "/grpc.health.v1.Health/Check"), Decision::Allow("any-health".into()));
        // No policy: the mesh default decides; no caller identity: never allowed.
        assert_eq!(
            decide(None, DefaultMode::AllowAuthenticated, &svc, Some(&id("x")), "/a.B/C"),
            Decision::Allow("default".into())
        );
        assert!(
            matches!(decide(None, DefaultMode::Deny, &svc, Some(&id("x")), "/a.B/C"), Decision::Deny(m) if m.contains("default is deny"))
        );
        assert!(matches!(decide(None, DefaultMode::AllowAuthenticated, &svc, None, "/a.B/C"), Decision::Deny(_)));
        Ok(())
    }

    #[test]
    fn malformed_policies_are_refused_with_what_is_wrong() {
        for (bad, says) in [
            (&br#"{"rules":[{"name":"r","from":["Bad_Name"],"methods":["*"]}]}"#[..], "neither a service"),
            (br#"{"rules":[{"name":"r","from":["a"],"methods":["/nope"]}]}"#, "use /pkg.Service/Method"),
            (br#"{"rules":[{"name":"r","from":[],"methods":["*"]}]}"#, "at least one"),
            (br#"{"rules":[{"name":"r","from":["a"],"methods":["*"],"extra":1}]}"#, "unknown field"),
            (b"not json", "expected"),
        ] {
            let err = Policy::parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{err}");
        }
    }
}
