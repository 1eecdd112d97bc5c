//! The retry budget of one destination service: retries may add at most `ratio` of the calls of
//! the last 10 s, plus a reserve of `min_per_second` (a token bucket holding at most one
//! second's worth) so that a quiet service can still retry, as Finagle's and Linkerd's budgets
//! do. When every endpoint fails, the load reaching the service over any span of T seconds stays
//! within `(1 + ratio) x calls + min_per_second x (T + 1)` instead of multiplying by the attempt
//! count: the budget is what keeps retries from becoming a storm.
//!
//! Calls and the retries charged to the ratio are tallied in ten one-second slots; a retry takes
//! from the ratio while the window's calls allow it, else a token from the reserve, else it is
//! refused. Retries of calls that never reached an app are not charged (they add no load to any
//! app).

use std::time::Duration;

use mesh_registry::policy::RetryBudget;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Seconds in the window.
const WINDOW: u64 = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Seconds since the budget's epoch this slot counts.
    second: u64,
    calls: u64,
    /// Retries charged to the ratio.
    retries: u64,
}

/// The reserve: tokens refilled at `min_per_second`, at most one second's worth.
#[derive(Debug)]
struct Reserve {
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct State {
    slots: [Slot; WINDOW as usize],
    reserve: Reserve,
}

/// Calls and retries to one service over the last 10 s.
#[derive(Debug)]
pub(crate) struct Budget {
    epoch: Instant,
    state: Mutex<State>,
}

impl Budget {
    pub(crate) fn new(now: Instant) -> Self {
        let reserve = Reserve { tokens: 0.0, refilled: now };
        Self { epoch: now, state: Mutex::new(State { slots: [Slot::default(); WINDOW as usize], reserve }) }
    }

    /// A call was made.
    pub(crate) fn call(&self, now: Instant) {
        let second = self.second(now);
        current(&mut self.state.lock().slots, second).calls += 1;
    }

    /// Takes one retry from the budget, if it has one left.
    pub(crate) fn try_retry(&self, budget: &RetryBudget, now: Instant) -> bool {
        let second = self.second(now);
        let mut state = self.state.lock();
        let (calls, retries) = state
            .slots
            .iter()
            .filter(|s| s.second + WINDOW > second && s.second <= second)
            .fold((0, 0), |(c, r), s| (c + s.calls, r + s.retries));
        if (retries + 1) as f64 <= budget.ratio * calls as f64 {
            current(&mut state.slots, second).retries += 1;
            return true;
        }
        let rate = f64::from(budget.min_per_second);
        let reserve = &mut state.reserve;
        let refill = now.saturating_duration_since(reserve.refilled).as_secs_f64() * rate;
        reserve.tokens = (reserve.tokens + refill).min(rate);
        reserve.refilled = now;
        if reserve.tokens >= 1.0 {
            reserve.tokens -= 1.0;
            return true;
        }
        false
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }
}

/// The slot of `second`, emptied first if it last counted an older second.
fn current(slots: &mut [Slot; WINDOW as usize], second: u64) -> &mut Slot {
    let slot = &mut slots[(second % WINDOW) as usize];
    if slot.second != second {
        *slot = Slot { second, ..Slot::default() };
    }
    slot
}

/// The delay before retry number `retry` (1 for the first): full jitter over an exponential
/// ceiling, 10 ms doubling to 100 ms, as gRPC's retry policy does.
pub(crate) fn backoff(retry: u32) -> Duration {
    const BASE_MS: u64 = 10;
    const MAX_MS: u64 = 100;
    let ceiling = BASE_MS.saturating_mul(1 << retry.saturating_sub(1).min(10)).min(MAX_MS);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget { ratio, min_per_second }
    }

    #[test]
    fn at_steady_load_retries_reach_the_ratio_and_no_further() {
        let start = Instant::now();
        let b = Budget::new(start);
        let policy = budget(0.2, 10);
        // 100 calls/s for 30 s, each wanting a retry.
        let mut granted_last_10s = 0;
        for ms in (0..30_000).step_by(10) {
            let now = start + Duration::from_millis(ms);
            b.call(now);
            if b.try_retry(&policy, now) && ms >= 20_000 {
                granted_last_10s += 1;
            }
        }
        // 20 % of 1000 calls plus the 10/s reserve.
        assert!((280..=301).contains(&granted_last_10s), "{granted_last_10s}");
    }

    #[test]
    fn a_quiet_service_can_still_retry_at_the_reserve_rate() {
        let start = Instant::now();
        let b = Budget::new(start);
        let policy = budget(0.2, 10);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!b.try_retry(&policy, start), "the reserve fills with time");
        let granted = (0..1000).filter(|_| b.try_retry(&policy, at(5000))).count();
        assert_eq!(granted, 10, "at most one second's worth at once");
        assert!(!b.try_retry(&policy, at(5050)));
        assert!(b.try_retry(&policy, at(5100)), "one more every 100 ms");
        assert!(!Budget::new(start).try_retry(&budget(0.0, 0), at(9000)), "a zero budget never retries");
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_ceiling() {
        for _ in 0..200 {
            assert!(backoff(1) <= Duration::from_millis(10));
            assert!(backoff(2) <= Duration::from_millis(20));
            assert!(backoff(30) <= Duration::from_millis(100));
        }
        assert!((0..200).map(|_| backoff(3)).any(|d| d > Duration::from_millis(5)), "not stuck at zero");
    }

    proptest! {
        /// Whatever the traffic, the retries of any 10 s window ending with a granted retry
        /// never exceed `ratio` of the calls that window's grants were checked against (those
        /// of the 19 s up to it) plus the reserve's refill over the window and its one second
        /// of burst.
        #[test]
        fn never_more_retries_than_the_budget_allows(
            steps in proptest::collection::vec((0u64..700, 0u32..20, 0u32..30), 1..300),
            ratio in 0.0f64..=1.0,
            min_per_second in 0u32..20,
        ) {
            let start = Instant::now();
            let b = Budget::new(start);
            let policy = budget(ratio, min_per_second);
            let mut now = start;
            let mut per_second: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
            for (advance_ms, calls, wanted) in steps {
                now += Duration::from_millis(advance_ms);
                let second = now.duration_since(start).as_secs();
                for _ in 0..calls {
                    b.call(now);
                    per_second.entry(second).or_default().0 += 1;
                }
                for _ in 0..wanted {
                    if b.try_retry(&policy, now) {
                        per_second.entry(second).or_default().1 += 1;
                    }
                }
            }
            let granted_in: Vec<u64> = per_second.iter().filter(|(_, (_, r))| *r > 0).map(|(s, _)| *s).collect();
            for end in granted_in {
                let sum = |from: u64, pick: fn(&(u64, u64)) -> u64| {
                    per_second.range(from..=end).map(|(_, v)| pick(v)).sum::<u64>()
                };
                let retries = sum(end.saturating_sub(WINDOW - 1), |v| v.1);
                let calls = sum(end.saturating_sub(2 * WINDOW - 2), |v| v.0);
                let allowed = ratio * calls as f64 + f64::from(min_per_second) * (WINDOW + 1) as f64;
                prop_assert!(retries as f64 <= allowed, "window ending {end}: {retries} retries, {calls} calls");
            }
        }
    }
}
