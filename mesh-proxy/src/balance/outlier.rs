//! Outlier ejection: an endpoint that fails 5 times in a row (gateway-class failures: its proxy's
//! UNAVAILABLE, a broken or refused connection, a per-try timeout) is taken out of the balancer
//! for 30 s x the number of its ejections (at most 300 s), as long as no more than half of the
//! service's endpoints are out (never all of them). When its time is up it comes back on
//! probation: one call at a time until one succeeds (then it takes full load again) or fails (then
//! it is ejected again, for longer). An endpoint not ejected for 10 minutes starts over at 30 s.
//!
//! Success-rate outliers go the same way: every 10 s, an endpoint that answered at least 20 calls
//! and whose success rate is more than 20 points below the mean of the others' (those with 20
//! calls too) is ejected. This catches an endpoint that fails often but never 5 times in a row,
//! and leaves alone a service whose endpoints all fail alike (nothing to steer to).
//!
//! This is the state machine of one endpoint, on the caller's clock; the balancer decides whether
//! an ejection is allowed (the share of the service already out) and compares success rates.

use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failures that eject an endpoint.
pub(crate) const CONSECUTIVE_FAILURES: u32 = 5;
/// The first ejection's length; each further one adds as much.
pub(crate) const BASE_EJECTION: Duration = Duration::from_secs(30);
/// The longest ejection.
pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Most of a service's endpoints out at once, percent.
pub(crate) const MAX_EJECTED_PERCENT: usize = 50;
/// How often success rates are compared.
pub(crate) const RATE_INTERVAL: Duration = Duration::from_secs(10);
/// Calls in an interval below which an endpoint's success rate says nothing.
pub(crate) const RATE_MIN_CALLS: u32 = 20;
/// How far below the others' mean success rate an outlier is.
pub(crate) const RATE_GAP: f64 = 0.2;

/// What a failure or a success changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing worth telling.
    Unchanged,
    /// Taken out for this long.
    Ejected(Duration),
    /// A probe succeeded: back to full load.
    Returned,
}

/// One endpoint's standing.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    consecutive: u32,
    ejections: u32,
    until: Option<Instant>,
    /// Came back from an ejection and has not succeeded since.
    probation: bool,
    last_ejected: Option<Instant>,
    /// Successes and gateway-class failures in the current rate interval.
    interval: (u32, u32),
}

impl Outlier {
    /// Taken out of the balancer now.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| until > now)
    }

    /// Ejected, or back on probation: counts toward the service's share out.
    pub(crate) fn is_out(&self, now: Instant) -> bool {
        self.probation || self.is_ejected(now)
    }

    /// Back from an ejection and not yet proven: one call at a time.
    pub(crate) fn on_probation(&self, now: Instant) -> bool {
        self.probation && !self.is_ejected(now)
    }

    /// A gateway-class failure; `may_eject` says whether the service can spare this endpoint.
    pub(crate) fn failure(&mut self, now: Instant, may_eject: bool) -> Verdict {
        if self.is_ejected(now) {
            return Verdict::Unchanged;
        }
        self.interval.1 = self.interval.1.saturating_add(1);
        self.consecutive += 1;
        // A failed probe is out again at once (it already counts toward the share out); anyone
        // else after a run of failures, if the service can spare it.
        if self.probation || (self.consecutive >= CONSECUTIVE_FAILURES && may_eject) {
            return self.eject(now);
        }
        Verdict::Unchanged
    }

    /// Its success rate is an outlier; the service can spare it.
    pub(crate) fn rate_outlier(&mut self, now: Instant) -> Verdict {
        if self.is_out(now) { Verdict::Unchanged } else { self.eject(now) }
    }

    /// The successes and failures of the interval that ends now.
    pub(crate) fn take_interval(&mut self) -> (u32, u32) {
        std::mem::take(&mut self.interval)
    }

    fn eject(&mut self, now: Instant) -> Verdict {
        if self.last_ejected.is_some_and(|at| now.saturating_duration_since(at) > MAX_EJECTION + MAX_EJECTION) {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let length = BASE_EJECTION.saturating_mul(self.ejections).min(MAX_EJECTION);
        self.until = Some(now + length);
        self.last_ejected = Some(now);
        self.probation = true;
        self.consecutive = 0;
        Verdict::Ejected(length)
    }

    /// A success.
    pub(crate) fn success(&mut self, now: Instant) -> Verdict {
        self.consecutive = 0;
        self.interval.0 = self.interval.0.saturating_add(1);
        if self.on_probation(now) {
            self.probation = false;
            return Verdict::Returned;
        }
        Verdict::Unchanged
    }
}

/// Which endpoints' success rates, from their `(successes, failures)` of one interval, are more
/// than [`RATE_GAP`] below the mean of the others' (counting only those with enough calls).
pub(crate) fn rate_outliers(counts: &[(u32, u32)]) -> Vec<usize> {
    let rates: Vec<Option<f64>> = counts
        .iter()
        .map(|&(ok, failed)| {
            let calls = ok.saturating_add(failed);
            (calls >= RATE_MIN_CALLS).then(|| f64::from(ok) / f64::from(calls))
        })
        .collect();
    (0..rates.len())
        .filter(|&i| {
            let Some(rate) = rates[i] else { return false };
            let others: Vec<f64> = rates.iter().enumerate().filter(|(j, _)| *j != i).filter_map(|(_, r)| *r).collect();
            #[allow(clippy::cast_precision_loss)] // A handful of endpoints.
            let mean = others.iter().sum::<f64>() / others.len() as f64;
            !others.is_empty() && rate < mean - RATE_GAP
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_rate_far_below_the_others_is_an_outlier() {
        // 50 % against 100 %: out. A service failing alike everywhere: nobody.
        assert_eq!(rate_outliers(&[(100, 0), (100, 0), (50, 50)]), [2]);
        assert!(rate_outliers(&[(50, 50), (50, 50), (50, 50)]).is_empty());
        // Within 20 points, or too few calls to tell, or no one to compare with: nobody.
        assert!(rate_outliers(&[(100, 0), (85, 15)]).is_empty());
        assert!(rate_outliers(&[(100, 0), (100, 0), (5, 10)]).is_empty());
        assert!(rate_outliers(&[(0, 100)]).is_empty());
        assert!(rate_outliers(&[(0, 100), (3, 0)]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_eject_for_growing_times_and_a_probe_brings_it_back() {
        let mut o = Outlier::default();
        for _ in 0..4 {
            assert_eq!(o.failure(Instant::now(), true), Verdict::Unchanged);
        }
        assert_eq!(o.success(Instant::now()), Verdict::Unchanged, "a success resets the count");
        for _ in 0..4 {
            o.failure(Instant::now(), true);
        }
        assert_eq!(o.failure(Instant::now(), true), Verdict::Ejected(BASE_EJECTION));
        assert!(o.is_ejected(Instant::now()) && o.is_out(Instant::now()));
        tokio::time::advance(BASE_EJECTION).await;
        assert!(!o.is_ejected(Instant::now()) && o.on_probation(Instant::now()), "back on probation");
        // The probe fails: out again at once, for twice as long.
        assert_eq!(o.failure(Instant::now(), true), Verdict::Ejected(BASE_EJECTION * 2));
        tokio::time::advance(BASE_EJECTION * 2).await;
        assert_eq!(o.success(Instant::now()), Verdict::Returned);
        assert!(!o.is_out(Instant::now()));
        // Repeat offenders are capped at 300 s.
        for _ in 0..20 {
            for _ in 0..CONSECUTIVE_FAILURES {
                o.failure(Instant::now(), true);
            }
            tokio::time::advance(MAX_EJECTION).await;
        }
        for _ in 0..CONSECUTIVE_FAILURES {
            o.failure(Instant::now(), true);
        }
        assert!(o.is_ejected(Instant::now() + MAX_EJECTION - Duration::from_secs(1)));
        assert!(!o.is_ejected(Instant::now() + MAX_EJECTION));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_the_service_cannot_spare_stays_in_and_a_long_healthy_one_starts_over() {
        let mut o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.failure(Instant::now(), false), Verdict::Unchanged);
        }
        assert!(!o.is_out(Instant::now()));
        assert_eq!(o.failure(Instant::now(), true), Verdict::Ejected(BASE_EJECTION), "spared once allowed");
        tokio::time::advance(BASE_EJECTION).await;
        o.success(Instant::now());
        tokio::time::advance(MAX_EJECTION * 3).await;
        for _ in 0..CONSECUTIVE_FAILURES {
            o.failure(Instant::now(), true);
        }
        assert!(!o.is_ejected(Instant::now() + BASE_EJECTION), "a long healthy endpoint starts again at 30 s");
    }
}
