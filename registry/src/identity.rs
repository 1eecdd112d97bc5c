//! Service identities: `spiffe://<trust-domain>/svc/<service>`, what every mesh certificate
//! carries as its only URI SAN, and what peers check (WebPKI has no URI-SAN name check: this is
//! ours).

use std::fmt;
use std::str::FromStr;

use crate::name::ServiceName;

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "mesh.local";

/// A trust domain: a DNS-like name (`mesh.local`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

/// A malformed trust domain or identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a usable trust domain.
    #[error("invalid trust domain {0:?}: use lowercase letters, digits, '-' and '.'")]
    TrustDomain(String),
    /// Not `spiffe://<trust-domain>/svc/<service>`.
    #[error("invalid identity {0:?}: expected spiffe://<trust-domain>/svc/<service>")]
    Identity(String),
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        let ok = (1..=253).contains(&s.len())
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if ok { Ok(Self(s.to_string())) } else { Err(IdentityError::TrustDomain(s.to_string())) }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_string())
    }
}

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    trust_domain: TrustDomain,
    service: ServiceName,
}

impl Identity {
    /// The identity of `service` in `trust_domain`.
    pub fn new(trust_domain: TrustDomain, service: ServiceName) -> Self {
        Self { trust_domain, service }
    }

    /// The service part.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The URI form.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/svc/{}", self.trust_domain, self.service)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::Identity(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (domain, path) = rest.split_once('/').ok_or_else(bad)?;
        let service = path.strip_prefix("svc/").ok_or_else(bad)?;
        Ok(Self { trust_domain: domain.parse().map_err(|_| bad())?, service: service.parse().map_err(|_| bad())? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_reject_lookalikes() -> Result<(), Box<dyn std::error::Error>> {
        let id: Identity = "spiffe://mesh.local/svc/orders".parse()?;
        assert_eq!(id.service().as_str(), "orders");
        assert_eq!(id.to_string(), "spiffe://mesh.local/svc/orders");
        for bad in [
            "spiffe://mesh.local/svc/orders/extra",
            "spiffe://mesh.local/ns/orders",
            "https://mesh.local/svc/orders",
            "spiffe://MESH/svc/orders",
            "spiffe://mesh.local/svc/",
            "spiffe:///svc/orders",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
        Ok(())
    }
}
