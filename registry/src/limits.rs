//! Rate limits in a service policy, enforced by the service's own (inbound) proxies:
//!
//! ```json
//! "rate_limits": [
//!   { "name": "per-caller", "match": { "method": "/shop.Orders/*" }, "per": "caller", "per_second": 100 },
//!   { "name": "orders-total", "per": "service", "per_second": 1000, "burst": 200 }
//! ]
//! ```
//!
//! Every limit whose `match` fits a call (all calls without one) must admit it. `per` says whose
//! calls one token bucket counts: `instance` (each instance admits `per_second`), `caller` (each
//! instance admits `per_second` from each calling service) or `service` (the whole service
//! admits `per_second`: each instance enforces its share, `per_second / instances`, re-split as
//! instances join and leave, from the registry). `burst` is how many calls may come at once
//! after a quiet spell (default: one second's worth). A refused call gets RESOURCE_EXHAUSTED with
//! `grpc-retry-pushback-ms` (when a token will be there) and never reaches the app.

use serde::{Deserialize, Serialize};

use crate::routes::RouteMatch;

/// Most rate limits in one document.
pub const MAX_RATE_LIMITS: usize = 32;
/// Highest rate.
pub const MAX_PER_SECOND: u32 = 1_000_000;

/// One rate limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Unique in the document; the `limit` label of the refusals' counter.
    pub name: String,
    /// Which calls it counts; absent: all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    /// Whose calls one bucket counts.
    #[serde(default)]
    pub per: Scope,
    /// Calls per second admitted.
    pub per_second: u32,
    /// Calls admitted at once after a quiet spell; default `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Whose calls one token bucket counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each instance's calls.
    #[default]
    Instance,
    /// Each instance's calls from one calling service.
    Caller,
    /// All of the service's calls: each instance takes its share.
    Service,
}

impl RateLimit {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 63 {
            return Err("`name` must be 1-63 characters".into());
        }
        if !(1..=MAX_PER_SECOND).contains(&self.per_second) {
            return Err(format!("per_second must be 1-{MAX_PER_SECOND}"));
        }
        if self.burst.is_some_and(|b| !(1..=MAX_PER_SECOND).contains(&b)) {
            return Err(format!("burst must be 1-{MAX_PER_SECOND}"));
        }
        if let Some(m) = &self.matches {
            m.validate()?;
        }
        Ok(())
    }

    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }
}
