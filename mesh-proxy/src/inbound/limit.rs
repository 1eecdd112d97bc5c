//! The inbound concurrency limit: how many calls the local app may have at once, learnt from the
//! app's own latency (after Netflix's concurrency-limits gradient and Envoy's adaptive concurrency
//! filter), so that a drowning app gets RESOURCE_EXHAUSTED with a pushback at the edge instead of
//! an ever-growing queue in front of it.
//!
//! ```text
//! a call holds a slot from admission to the app's response headers (or its failure)
//! every window (>= 100 ms and >= 10 answers):
//!   rtt      = median time to the app's response headers in the window
//!   min_rtt  = lowest window rtt since the last probe: the app's unloaded latency
//!   gradient = clamp((2 x min_rtt + 10 ms) / rtt, 0.5, 1)
//!   gradient < 1 (the app answers over twice as slowly as unloaded, and 10 ms more: it queues)
//!       limit = min(limit, peak in flight) x gradient + 4; from the second such window in a
//!       row the limit binds, until 1 s after the last
//!   otherwise, if the window used at least half the limit: limit + 4
//! every 10 s: min_rtt is measured afresh, so a slower app becomes the new normal instead of
//! an overload for ever: from the next window if the limit does not bind, otherwise from one
//! probe window that admits only 4 calls at once
//! ```
//!
//! The limit refuses calls only while it binds, that is while the app's latency says that it is
//! queueing: a burst against an app that copes is never refused, nor is a fast app whose latency
//! wanders by a few milliseconds with CPU scheduling. Under a steady overload it settles with the
//! app kept busy (goodput stays at its capacity) and the latency near the target above. A fixed limit
//! (`--inbound-concurrency-limit <n>`) always binds. The hot path is two atomic operations on
//! admission and one short lock per answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::telemetry::Telemetry;
use crate::telemetry::events::InboundLimitChanged;

/// A window closes after this long ...
const WINDOW: Duration = Duration::from_millis(100);
/// ... and at least this many answers.
const WINDOW_ANSWERS: u32 = 10;
/// Latencies kept per window for its median (the most recent ones).
const WINDOW_SAMPLES: usize = 256;
/// Latency up to this multiple of the unloaded one, plus `SLACK`, is not queueing ...
const TOLERANCE: f64 = 2.0;
/// ... so that a fast app whose latency only wanders with CPU scheduling (0.3 ms unloaded, 3 ms
/// under a benchmark that saturates the host) is never refused: a few milliseconds of waiting hurt
/// nobody; the queues worth shedding grow into tens and hundreds of milliseconds.
const SLACK: Duration = Duration::from_millis(10);
/// The most one window may cut the limit by.
const MIN_GRADIENT: f64 = 0.5;
/// Calls allowed to queue on top of what the gradient keeps.
const QUEUE: f64 = 4.0;
/// The adaptive limit's bounds (and a probe window's limit).
pub(crate) const MIN_LIMIT: u32 = 4;
pub(crate) const MAX_LIMIT: u32 = 1000;
/// Queueing windows in a row that make the limit bind ...
const QUEUEING_WINDOWS: u32 = 2;
/// ... and for how long after the last one.
const BIND_FOR: Duration = Duration::from_secs(1);
/// How often the unloaded latency is measured afresh.
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// Bounds of the pushback a refused call is given.
const PUSHBACK: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(1));

/// How the inbound side limits the calls in flight to the local app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitMode {
    /// Learnt from the app's latency; refuses only while the app queues (the default).
    Adaptive,
    /// At most this many calls at once, always.
    Fixed(u32),
    /// No limit beyond the listener's stream limits.
    Off,
}

impl std::str::FromStr for LimitMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adaptive" => Ok(Self::Adaptive),
            "off" => Ok(Self::Off),
            n => match n.parse::<u32>() {
                Ok(n) if n > 0 => Ok(Self::Fixed(n)),
                _ => Err(format!("{s:?} is not `adaptive`, `off` or a number of calls above 0")),
            },
        }
    }
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The limit it met.
    pub(crate) limit: u32,
    /// Whether the limit is learnt (or fixed).
    pub(crate) adaptive: bool,
    /// When the caller may try again: about the app's recent latency.
    pub(crate) pushback: Duration,
}

/// The limit in front of one app.
#[derive(Debug)]
pub(crate) struct ConcurrencyLimit {
    adaptive: bool,
    in_flight: AtomicU32,
    /// The most calls in flight in the current window.
    peak: AtomicU32,
    /// The limit admission checks.
    limit: AtomicU32,
    /// Until when the limit binds, in nanoseconds after `epoch` (`u64::MAX`: always).
    binding_until: AtomicU64,
    /// The last window's latency, microseconds (the pushback given).
    recent_micros: AtomicU64,
    epoch: Instant,
    learning: Mutex<Learning>,
    telemetry: Arc<Telemetry>,
}

/// The adaptive limit's state, updated once per window.
#[derive(Debug)]
struct Learning {
    limit: f64,
    min_rtt: Option<Duration>,
    window_start: Instant,
    answers: u32,
    samples: Vec<Duration>,
    next_probe: Instant,
    probing: bool,
    /// Queueing windows in a row.
    queueing: u32,
}

/// A call's slot: released when dropped.
#[derive(Debug)]
#[must_use = "the call holds its slot until this is dropped"]
pub(crate) struct Slot {
    limit: Arc<ConcurrencyLimit>,
    admitted: Instant,
}

impl Slot {
    /// The app answered (response headers): the latency is a sample.
    pub(crate) fn answered(self) {
        if self.limit.adaptive {
            self.limit.sample(self.admitted, Instant::now());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    /// The limit for `mode`; `None` when off.
    pub(crate) fn new(mode: LimitMode, telemetry: Arc<Telemetry>) -> Option<Arc<Self>> {
        let (adaptive, limit, binding_until) = match mode {
            LimitMode::Off => return None,
            LimitMode::Fixed(n) => (false, n, u64::MAX),
            LimitMode::Adaptive => (true, MAX_LIMIT, 0),
        };
        let now = Instant::now();
        InboundLimitChanged { limit, binding: None }.emit(&telemetry);
        Some(Arc::new(Self {
            adaptive,
            in_flight: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            limit: AtomicU32::new(limit),
            binding_until: AtomicU64::new(binding_until),
            recent_micros: AtomicU64::new(0),
            epoch: now,
            learning: Mutex::new(Learning {
                limit: f64::from(limit),
                min_rtt: None,
                window_start: now,
                answers: 0,
                samples: Vec::with_capacity(WINDOW_SAMPLES),
                next_probe: now + PROBE_EVERY,
                probing: false,
                queueing: 0,
            }),
            telemetry,
        }))
    }

    /// A slot for one call, or why not.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Slot, Refused> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = self.limit.load(Ordering::Relaxed);
        if in_flight > limit && self.binds(Instant::now()) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let recent = Duration::from_micros(self.recent_micros.load(Ordering::Relaxed));
            return Err(Refused { limit, adaptive: self.adaptive, pushback: recent.clamp(PUSHBACK.0, PUSHBACK.1) });
        }
        self.peak.fetch_max(in_flight, Ordering::Relaxed);
        Ok(Slot { limit: self.clone(), admitted: Instant::now() })
    }

    fn binds(&self, now: Instant) -> bool {
        let until = self.binding_until.load(Ordering::Relaxed);
        until == u64::MAX || until > self.nanos(now)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn sample(&self, admitted: Instant, now: Instant) {
        let mut learning = self.learning.lock();
        let l = &mut *learning;
        if l.probing && admitted < l.window_start {
            // Queued before the probe: not what a few calls in flight cost.
            return;
        }
        let rtt = now.saturating_duration_since(admitted);
        if l.samples.len() < WINDOW_SAMPLES {
            l.samples.push(rtt);
        } else {
            l.samples[l.answers as usize % WINDOW_SAMPLES] = rtt;
        }
        l.answers += 1;
        if l.answers < WINDOW_ANSWERS || now.saturating_duration_since(l.window_start) < WINDOW {
            return;
        }
        let mid = l.samples.len() / 2;
        let rtt = *l.samples.select_nth_unstable(mid).1;
        l.samples.clear();
        l.answers = 0;
        l.window_start = now;
        self.recent_micros.store(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let peak = f64::from(self.peak.swap(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed));
        let was_binding = self.binds(now);

        let min_rtt = if l.probing {
            // The probe window's latency, at a few calls in flight, is the unloaded one.
            l.probing = false;
            l.next_probe = now + PROBE_EVERY;
            rtt
        } else if now >= l.next_probe {
            if was_binding {
                // Measure at a few calls in flight: the next window admits only MIN_LIMIT.
                l.probing = true;
                self.limit.store(MIN_LIMIT, Ordering::Relaxed);
                self.binding_until.store(self.nanos(now + BIND_FOR), Ordering::Relaxed);
                return;
            }
            // The app copes: what it answers in now is its normal.
            l.next_probe = now + PROBE_EVERY;
            rtt
        } else {
            l.min_rtt.map_or(rtt, |m| m.min(rtt))
        };
        l.min_rtt = Some(min_rtt);

        let target = TOLERANCE * min_rtt.as_secs_f64() + SLACK.as_secs_f64();
        let gradient = (target / rtt.as_secs_f64().max(1e-9)).clamp(MIN_GRADIENT, 1.0);
        if gradient < 1.0 {
            l.limit = (l.limit.min(peak) * gradient + QUEUE).clamp(f64::from(MIN_LIMIT), f64::from(MAX_LIMIT));
            l.queueing += 1;
            // One slow window may be a change of mix (slower methods for a moment); two in a
            // row are a queue.
            if l.queueing >= QUEUEING_WINDOWS {
                self.binding_until.store(self.nanos(now + BIND_FOR), Ordering::Relaxed);
            }
        } else {
            l.queueing = 0;
            if peak >= l.limit / 2.0 {
                l.limit = (l.limit + QUEUE).min(f64::from(MAX_LIMIT));
            }
        }
        // Whole calls; `as` saturates and the value is within the bounds above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let limit = l.limit.round() as u32;
        self.limit.store(limit, Ordering::Relaxed);
        let binding = self.binds(now);
        let changed = (binding != was_binding).then_some((binding, rtt, min_rtt));
        InboundLimitChanged { limit, binding: changed }.emit(&self.telemetry);
    }

    /// The limit admission checks now (for tests and the gauge).
    #[cfg(test)]
    fn current(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn limit(mode: LimitMode) -> Arc<ConcurrencyLimit> {
        let telemetry = Telemetry::new(&prometheus::Registry::new(), false).unwrap_or_else(|e| panic!("{e}"));
        ConcurrencyLimit::new(mode, telemetry).expect("on")
    }

    /// What a simulated run saw.
    #[derive(Debug, Default)]
    struct Run {
        offered: u64,
        refused: u64,
        answered: u64,
        /// The longest the app's own line got.
        max_queue: usize,
        /// Answers in the last half of the run.
        late_answered: u64,
        /// The slowest answer in the last half, from admission.
        late_slowest: Duration,
    }

    /// An app that works on `capacity` calls at once, `service` each, and lines up the rest (a
    /// thread pool's queue), offered `per_ms` calls each millisecond for `run` (paused time).
    async fn simulate(
        limit: &Arc<ConcurrencyLimit>,
        capacity: usize,
        service: Duration,
        per_ms: f64,
        run: Duration,
    ) -> Run {
        let mut out = Run::default();
        let mut line: VecDeque<(Slot, Instant)> = VecDeque::new();
        let mut working: Vec<(Slot, Instant, Instant)> = Vec::new();
        let (start, mut owed) = (Instant::now(), 0.0);
        while start.elapsed() < run {
            let now = Instant::now();
            let late = now.duration_since(start) > run / 2;
            owed += per_ms;
            while owed >= 1.0 {
                owed -= 1.0;
                out.offered += 1;
                match limit.admit() {
                    Ok(slot) => line.push_back((slot, now)),
                    Err(refused) => {
                        assert!(refused.pushback >= PUSHBACK.0 && refused.pushback <= PUSHBACK.1);
                        out.refused += 1;
                    }
                }
            }
            let mut i = 0;
            while i < working.len() {
                if working[i].2 <= now {
                    let (slot, admitted, _) = working.swap_remove(i);
                    slot.answered();
                    out.answered += 1;
                    if late {
                        out.late_answered += 1;
                        out.late_slowest = out.late_slowest.max(now - admitted);
                    }
                } else {
                    i += 1;
                }
            }
            while working.len() < capacity {
                let Some((slot, admitted)) = line.pop_front() else { break };
                working.push((slot, admitted, now + service));
            }
            out.max_queue = out.max_queue.max(line.len());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_that_copes_is_never_refused_even_in_bursts() {
        let limit = limit(LimitMode::Adaptive);
        // Half the app's capacity (4 x 20 ms = 200/s), steady.
        let run = simulate(&limit, 4, Duration::from_millis(20), 0.1, Duration::from_secs(20)).await;
        assert_eq!(run.refused, 0, "{run:?}");
        // Bursts of 300 calls at once into an app with room for them.
        let run = simulate(&limit, 1000, Duration::from_millis(5), 300.0, Duration::from_millis(3)).await;
        assert_eq!(run.refused, 0, "{run:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn twice_the_capacity_is_shed_with_the_app_kept_busy_and_its_line_short() {
        let limit = limit(LimitMode::Adaptive);
        let capacity = 4.0 / 20.0; // calls per ms
        let run = simulate(&limit, 4, Duration::from_millis(20), 2.0 * capacity, Duration::from_secs(30)).await;
        // Goodput: over 90 % of capacity in the second half (probes included).
        let goodput = run.late_answered as f64 / 15_000.0;
        assert!(goodput >= 0.9 * capacity, "goodput {goodput}/ms: {run:?}");
        // About half is refused, and what is admitted waits a bounded time.
        assert!(run.refused * 10 >= run.offered * 4, "{run:?}");
        assert!(run.late_slowest <= Duration::from_millis(200), "{run:?}");
        assert!(run.max_queue <= 200, "{run:?}");
        let settled = limit.current();
        assert!((4..=40).contains(&settled), "limit {settled}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_limit_the_same_overload_queues_without_bound() {
        // The control for the test above: the same app and load with nothing in front of it.
        let limit = limit(LimitMode::Fixed(MAX_LIMIT));
        let capacity = 4.0 / 20.0;
        let run = simulate(&limit, 4, Duration::from_millis(20), 2.0 * capacity, Duration::from_secs(30)).await;
        assert!(run.late_slowest > Duration::from_secs(2), "{run:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_stops_binding_once_the_overload_ends() {
        let limit = limit(LimitMode::Adaptive);
        let run = simulate(&limit, 4, Duration::from_millis(20), 0.4, Duration::from_secs(5)).await;
        assert!(run.refused > 0, "{run:?}");
        let run = simulate(&limit, 4, Duration::from_millis(20), 0.1, Duration::from_secs(2)).await;
        // The line drains within a second or two; after that nothing is refused.
        let run_after = simulate(&limit, 4, Duration::from_millis(20), 0.1, Duration::from_secs(10)).await;
        assert_eq!(run_after.refused, 0, "{run:?} then {run_after:?}");
        // And a burst into the idle app is let through.
        let burst = simulate(&limit, 4, Duration::from_millis(20), 50.0, Duration::from_millis(1)).await;
        assert_eq!(burst.refused, 0, "{burst:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_that_became_slower_is_a_new_normal_not_an_overload() {
        let limit = limit(LimitMode::Adaptive);
        simulate(&limit, 8, Duration::from_millis(5), 0.2, Duration::from_secs(5)).await;
        // Its latency grows eightfold at the same low load (a slower dependency, a new release):
        // within the probe interval the limit stops refusing.
        simulate(&limit, 64, Duration::from_millis(40), 0.2, Duration::from_secs(12)).await;
        let run = simulate(&limit, 64, Duration::from_millis(40), 0.2, Duration::from_secs(10)).await;
        assert_eq!(run.refused, 0, "{run:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_moment_of_slower_calls_is_not_an_overload() {
        let limit = limit(LimitMode::Adaptive);
        simulate(&limit, 1000, Duration::from_millis(2), 1.0, Duration::from_secs(3)).await;
        // For one window the calls are ten times slower (another method's turn) ...
        simulate(&limit, 1000, Duration::from_millis(20), 1.0, Duration::from_millis(130)).await;
        // ... then fast again, in a burst: nothing is refused.
        let burst = simulate(&limit, 1000, Duration::from_millis(2), 25.0, Duration::from_millis(4)).await;
        assert_eq!(burst.refused, 0, "{burst:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_app_slowed_by_a_busy_host_is_not_refused() {
        // 1 ms unloaded; then a closed-loop benchmark saturates the host's CPU: hundreds of calls
        // in flight, each taking 6 ms. Six times slower, but milliseconds: nothing to shed.
        let limit = limit(LimitMode::Adaptive);
        simulate(&limit, 1000, Duration::from_millis(1), 1.0, Duration::from_secs(3)).await;
        let run = simulate(&limit, 1000, Duration::from_millis(6), 48.0, Duration::from_secs(3)).await;
        assert_eq!(run.refused, 0, "{run:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_limit_always_binds() {
        let limit = limit(LimitMode::Fixed(3));
        let slots: Vec<Slot> = (0..3).map(|_| limit.admit().expect("room")).collect();
        let refused = limit.admit().expect_err("full");
        assert_eq!((refused.limit, refused.adaptive), (3, false));
        drop(slots);
        let _slot = limit.admit().expect("room again");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("adaptive".parse(), Ok(LimitMode::Adaptive));
        assert_eq!("off".parse(), Ok(LimitMode::Off));
        assert_eq!("64".parse(), Ok(LimitMode::Fixed(64)));
        assert!("0".parse::<LimitMode>().is_err());
        assert!("fast".parse::<LimitMode>().unwrap_err().contains("adaptive"));
    }
}
