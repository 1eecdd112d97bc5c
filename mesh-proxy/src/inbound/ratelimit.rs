//! Rate limits on calls to the local service (`rate_limits` in its service policy,
//! `mesh_registry::limits`): token buckets, local to this instance, one per limit (`per:
//! instance`), per limit and calling service (`per: caller`), or one per limit holding this
//! instance's share of a service-wide rate (`per: service`: the rate divided by the service's
//! instances in the registry, re-split at the next call after one joins or leaves).
//!
//! A call must find a token in every limit whose `match` fits it; then it takes one from each.
//! Buckets survive policy changes that keep their limit as it was. Bounded: at most
//! [`MAX_CALLERS`] caller buckets per limit (idle ones are dropped first; beyond, the remaining
//! callers share one bucket).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use mesh_registry::limits::{RateLimit, Scope};
use mesh_registry::policy::ServicePolicy;
use parking_lot::Mutex;
use tokio::time::Instant;

/// How many instances the local service has in the registry (injected: from discovery).
pub(crate) type InstancesFn = Box<dyn Fn() -> usize + Send + Sync>;

/// Caller buckets per limit at most.
pub(crate) const MAX_CALLERS: usize = 1024;
/// The bucket of callers beyond [`MAX_CALLERS`].
const OTHER_CALLERS: &str = "";

/// A refusal: which limit, and when a token will be there.
#[derive(Debug)]
pub(crate) struct Limited {
    pub(crate) limit: String,
    pub(crate) per_second: f64,
    pub(crate) scope: Scope,
    pub(crate) pushback: Duration,
}

/// The local service's rate limits.
pub(crate) struct RateLimiter {
    instances: InstancesFn,
    state: Mutex<State>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The document the limits were built from.
    from: Option<Arc<ServicePolicy>>,
    limits: Vec<Limit>,
}

struct Limit {
    spec: RateLimit,
    one: Bucket,
    callers: HashMap<String, Bucket>,
}

/// Tokens refilled at a rate, up to a size (also the gateway's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(size: f64, now: Instant) -> Self {
        Self { tokens: size, at: now }
    }

    /// Takes the token [`Bucket::refill`] found.
    pub(crate) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// When it was last refilled (used).
    pub(crate) fn last_used(&self) -> Instant {
        self.at
    }

    /// Refills to `now`; returns how long until one token is there (zero: there is one).
    pub(crate) fn refill(&mut self, now: Instant, rate: f64, size: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(size);
        self.at = now;
        if self.tokens >= 1.0 { Duration::ZERO } else { Duration::from_secs_f64((1.0 - self.tokens) / rate) }
    }
}

impl RateLimiter {
    pub(crate) fn new(instances: InstancesFn) -> Self {
        Self { instances, state: Mutex::new(State::default()) }
    }

    /// Admits a call to `path` with `headers` from service `caller` under the rate limits of
    /// `policy` (the local service's policy in force), or says which limit refused it.
    pub(crate) fn admit(
        &self,
        policy: Option<&Arc<ServicePolicy>>,
        path: &str,
        headers: &HeaderMap,
        caller: &str,
    ) -> Result<(), Limited> {
        let Some(policy) = policy else { return Ok(()) };
        if policy.rate_limits.is_empty() {
            return Ok(());
        }
        let header = |name: &http::HeaderName| headers.get(name).map(http::HeaderValue::as_bytes);
        let now = Instant::now();
        let instances = || (self.instances)().max(1);
        let mut state = self.state.lock();
        state.follow(policy, now);
        // Every fitting limit must have a token before any is taken.
        let mut fitting = Vec::new();
        let mut share = None;
        for (i, limit) in state.limits.iter_mut().enumerate() {
            if !limit.spec.matches.as_ref().is_none_or(|m| m.fits(path, header)) {
                continue;
            }
            #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
            let divide = match limit.spec.per {
                Scope::Service => *share.get_or_insert_with(instances) as f64,
                Scope::Instance | Scope::Caller => 1.0,
            };
            let rate = f64::from(limit.spec.per_second) / divide;
            let size = (f64::from(limit.spec.burst()) / divide).max(1.0);
            let bucket = limit.bucket(caller, now);
            let wait = bucket.refill(now, rate, size);
            if !wait.is_zero() {
                let (limit, scope) = (limit.spec.name.clone(), limit.spec.per);
                return Err(Limited { limit, per_second: rate, scope, pushback: wait });
            }
            fitting.push(i);
        }
        for i in fitting {
            let limit = &mut state.limits[i];
            limit.bucket(caller, now).tokens -= 1.0;
        }
        Ok(())
    }
}

impl State {
    /// Rebuilds the limits when the document changed, keeping the buckets of unchanged limits.
    fn follow(&mut self, policy: &Arc<ServicePolicy>, now: Instant) {
        if self.from.as_ref().is_some_and(|from| Arc::ptr_eq(from, policy)) {
            return;
        }
        let mut old: HashMap<String, Limit> = self.limits.drain(..).map(|l| (l.spec.name.clone(), l)).collect();
        self.limits = policy
            .rate_limits
            .iter()
            .map(|spec| match old.remove(&spec.name) {
                Some(kept) if kept.spec == *spec => kept,
                _ => Limit {
                    spec: spec.clone(),
                    one: Bucket::full(f64::from(spec.burst()), now),
                    callers: HashMap::new(),
                },
            })
            .collect();
        self.from = Some(policy.clone());
    }
}

impl Limit {
    fn bucket(&mut self, caller: &str, now: Instant) -> &mut Bucket {
        if self.spec.per != Scope::Caller {
            return &mut self.one;
        }
        let full = Bucket::full(f64::from(self.spec.burst()), now);
        if !self.callers.contains_key(caller) && self.callers.len() >= MAX_CALLERS {
            // Drop the callers whose buckets have refilled (idle a second or more), else share.
            self.callers.retain(|_, b| now.saturating_duration_since(b.at) < Duration::from_secs(1));
            if self.callers.len() >= MAX_CALLERS {
                return self.callers.entry(OTHER_CALLERS.to_string()).or_insert(full);
            }
        }
        self.callers.entry(caller.to_string()).or_insert(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_admits_its_burst_then_its_rate_and_says_when_to_come_back() {
        let now = Instant::now();
        let mut b = Bucket::full(5.0, now);
        let mut admitted = 0;
        for _ in 0..10 {
            if b.refill(now, 10.0, 5.0).is_zero() {
                b.tokens -= 1.0;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5, "the burst");
        let wait = b.refill(now, 10.0, 5.0);
        assert_eq!(wait, Duration::from_millis(100), "one token every 100 ms at 10/s");
        // Over 10 s at 10/s: 100 more, never more than the burst at once.
        let mut at = now;
        for _ in 0..1000 {
            at += Duration::from_millis(10);
            if b.refill(at, 10.0, 5.0).is_zero() {
                b.tokens -= 1.0;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 105);
        b.refill(at + Duration::from_secs(60), 10.0, 5.0);
        assert!((b.tokens - 5.0).abs() < f64::EPSILON, "refills to its size only");
    }
}
