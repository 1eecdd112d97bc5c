//! Exponential backoff with jitter, for every retry loop in the mesh: etcd reconnects, certificate
//! requests, and endpoints that failed to connect.

use std::time::Duration;

/// Doubling delays from `min` to `max`, each randomised down by up to half, so that many
/// processes (or many endpoints) retrying after one failure do not come back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `min`; never waits more than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min, failures: 0 }
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
        self.failures = 0;
    }

    /// How long to wait after one more failure: the current step, minus up to half of it at
    /// random; the step then doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(1.0 - fastrand::f64() / 2.0)
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        for _ in 0..100 {
            let mut b = Backoff::new(ms(100), ms(400));
            let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
            assert!(delays[0] <= ms(100) && delays[0] >= ms(50), "{delays:?}");
            assert!(delays[1] <= ms(200) && delays[1] >= ms(100), "{delays:?}");
            assert!(delays[4] <= ms(400) && delays[4] >= ms(200), "{delays:?}");
            assert_eq!(b.failures(), 5);
            b.reset();
            assert!(b.next_delay() <= ms(100));
            assert_eq!(b.failures(), 1);
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let delays: std::collections::HashSet<_> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay()).collect();
        assert!(delays.len() > 40, "fifty processes do not retry in step: {} distinct delays", delays.len());
    }
}
