//! Peak-EWMA: a latency estimate that follows peaks at once and otherwise decays, toward each
//! faster sample (EWMA) and toward zero while no samples arrive, so that an endpoint that was
//! slow once and then stopped being picked is tried again (as in tower's and linkerd's
//! balancers).

use std::time::Duration;

use tokio::time::Instant;

/// One endpoint's latency estimate.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    rtt_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// Starts at `default_rtt` (the cost of an endpoint with no samples yet).
    pub(crate) fn new(default_rtt: Duration) -> Self {
        Self { rtt_ns: default_rtt.as_nanos() as f64, stamp: Instant::now() }
    }

    /// Decays the estimate for the time since it was last touched and returns it, in nanoseconds.
    pub(crate) fn decayed(&mut self, decay: Duration, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.rtt_ns *= (-elapsed / decay.as_nanos().max(1) as f64).exp();
        self.stamp = now;
        self.rtt_ns
    }

    /// A response took `rtt`: a slower one is taken at once (peak), a faster one blended in with
    /// a weight that grows with the time since the last sample.
    pub(crate) fn observe(&mut self, rtt: Duration, decay: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        if sample > self.rtt_ns {
            self.rtt_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            self.rtt_ns = self.rtt_ns * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }
}

/// How long a fastest response counts.
const FASTEST_WINDOW: Duration = Duration::from_secs(10);

/// The fastest response of about the last 10 s: what a call's remaining deadline must at least
/// cover for sending it to be worth anything.
#[derive(Debug, Default)]
pub(crate) struct RecentFastest {
    sample: Option<(Duration, Instant)>,
}

impl RecentFastest {
    /// A response took `rtt`.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        match self.sample {
            Some((fastest, at)) if rtt > fastest && now.saturating_duration_since(at) < FASTEST_WINDOW => {}
            _ => self.sample = Some((rtt, now)),
        }
    }

    /// The fastest recent response, if there was one lately.
    pub(crate) fn get(&self, now: Instant) -> Option<Duration> {
        self.sample.filter(|(_, at)| now.saturating_duration_since(*at) < FASTEST_WINDOW).map(|(rtt, _)| rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(1);

    fn ms(ns: f64) -> f64 {
        ns / 1e6
    }

    #[tokio::test(start_paused = true)]
    async fn the_fastest_response_counts_for_ten_seconds() {
        let mut f = RecentFastest::default();
        assert_eq!(f.get(Instant::now()), None);
        f.observe(Duration::from_millis(8), Instant::now());
        f.observe(Duration::from_millis(50), Instant::now());
        f.observe(Duration::from_millis(5), Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;
        f.observe(Duration::from_millis(40), Instant::now());
        assert_eq!(f.get(Instant::now()), Some(Duration::from_millis(5)), "slower samples do not replace it");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(f.get(Instant::now()), None, "too old to say anything");
        f.observe(Duration::from_millis(40), Instant::now());
        assert_eq!(f.get(Instant::now()), Some(Duration::from_millis(40)), "a new window starts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peak_is_taken_at_once_and_decays_with_time() {
        let mut e = PeakEwma::new(Duration::from_millis(30));
        e.observe(Duration::from_millis(500), DECAY);
        assert_eq!(ms(e.decayed(DECAY, Instant::now())), 500.0, "a slower sample is taken whole");
        tokio::time::advance(DECAY).await;
        let after_one = ms(e.decayed(DECAY, Instant::now()));
        assert!((after_one - 500.0 / std::f64::consts::E).abs() < 0.5, "one decay time: 1/e left, got {after_one}");
        tokio::time::advance(DECAY * 10).await;
        assert!(ms(e.decayed(DECAY, Instant::now())) < 0.01, "an endpoint no longer picked looks fast again");
    }

    #[tokio::test(start_paused = true)]
    async fn faster_samples_blend_in_by_the_time_since_the_last() {
        let mut e = PeakEwma::new(Duration::from_millis(100));
        // Back to back: a faster sample barely moves the estimate.
        e.observe(Duration::from_millis(10), DECAY);
        assert!(ms(e.decayed(DECAY, Instant::now())) > 99.0);
        // A decay time later it counts for 1 - 1/e of the estimate.
        tokio::time::advance(DECAY).await;
        let mut f = PeakEwma::new(Duration::from_millis(100));
        tokio::time::advance(DECAY).await;
        f.observe(Duration::from_millis(10), DECAY);
        let blended = ms(f.decayed(DECAY, Instant::now()));
        let expected = 100.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((blended - expected).abs() < 0.5, "{blended} vs {expected}");
    }
}
