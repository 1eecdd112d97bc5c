//! The recent latency distribution of one destination's hedged calls, for the hedge delay (its
//! 95th percentile): log-scale buckets (four per doubling, 100 us to about 100 s) over two
//! rotating 10 s windows, so the percentile covers the last 10-20 s and follows changes.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long one window lasts.
const WINDOW: Duration = Duration::from_secs(10);
/// Buckets: bucket `i` holds latencies up to `FLOOR x 2^((i + 1) / 4)`.
const BUCKETS: usize = 80;
const FLOOR_MICROS: f64 = 100.0;
/// Fewer answers than this in the last two windows say nothing yet.
const MIN_SAMPLES: u32 = 20;

/// Latencies of the last 10-20 s.
#[derive(Debug)]
pub(crate) struct Latencies {
    windows: Mutex<Windows>,
}

#[derive(Debug)]
struct Windows {
    current: [u32; BUCKETS],
    previous: [u32; BUCKETS],
    started: Instant,
}

impl Windows {
    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < WINDOW {
            return;
        }
        self.previous = if age < 2 * WINDOW { self.current } else { [0; BUCKETS] };
        self.current = [0; BUCKETS];
        self.started = now;
    }
}

fn bucket(rtt: Duration) -> usize {
    let micros = rtt.as_secs_f64() * 1e6;
    let index = ((micros / FLOOR_MICROS).log2() * 4.0).floor();
    // Within 0..BUCKETS after the clamp; `as` saturates.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = index.clamp(0.0, (BUCKETS - 1) as f64) as usize;
    index
}

fn upper_bound(bucket: usize) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let exponent = (bucket + 1) as f64 / 4.0;
    Duration::from_secs_f64(FLOOR_MICROS * exponent.exp2() / 1e6)
}

impl Latencies {
    pub(crate) fn new(now: Instant) -> Self {
        Self { windows: Mutex::new(Windows { current: [0; BUCKETS], previous: [0; BUCKETS], started: now }) }
    }

    /// One answer's latency.
    pub(crate) fn record(&self, rtt: Duration, now: Instant) {
        let mut windows = self.windows.lock();
        windows.rotate(now);
        let at = bucket(rtt);
        windows.current[at] = windows.current[at].saturating_add(1);
    }

    /// The 95th percentile of the last 10-20 s (the upper bound of its bucket, at most 19 %
    /// over), once there are enough answers to tell.
    pub(crate) fn p95(&self, now: Instant) -> Option<Duration> {
        let mut windows = self.windows.lock();
        windows.rotate(now);
        let counts: Vec<u32> =
            windows.current.iter().zip(&windows.previous).map(|(a, b)| a.saturating_add(*b)).collect();
        let total: u32 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let wanted = u64::from(total) * 95 / 100;
        let mut seen = 0u64;
        for (i, count) in counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= wanted.max(1) {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_p95_follows_the_last_windows() {
        let l = Latencies::new(Instant::now());
        assert_eq!(l.p95(Instant::now()), None, "nothing to tell yet");
        // 96 fast answers and 4 slow ones: the p95 is the fast ones'.
        for i in 0..100 {
            let rtt = if i % 25 == 0 { Duration::from_millis(500) } else { Duration::from_millis(10) };
            l.record(rtt, Instant::now());
        }
        let p95 = l.p95(Instant::now()).unwrap_or_default();
        assert!(p95 >= Duration::from_millis(10) && p95 <= Duration::from_millis(12), "{p95:?}");
        // Everything slower now: after a window, the p95 is between; after two, the new one.
        tokio::time::advance(WINDOW).await;
        for _ in 0..200 {
            l.record(Duration::from_millis(100), Instant::now());
        }
        let p95 = l.p95(Instant::now()).unwrap_or_default();
        assert!(p95 >= Duration::from_millis(100) && p95 <= Duration::from_millis(120), "{p95:?}");
        tokio::time::advance(3 * WINDOW).await;
        assert_eq!(l.p95(Instant::now()), None, "old answers are forgotten");
    }

    #[test]
    fn buckets_cover_100us_to_minutes() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        for ms in [1, 7, 50, 333, 2000] {
            let rtt = Duration::from_millis(ms);
            let b = bucket(rtt);
            assert!(upper_bound(b) >= rtt && upper_bound(b) <= rtt.mul_f64(1.2), "{ms} ms in {b}");
        }
    }
}
