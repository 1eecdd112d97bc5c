//! The proxy's own runtime, as metrics: how busy the tokio workers are, how often they park, how
//! deep the global queue is (sampled every interval with `tokio-metrics`), and, per listener, how
//! long its connection and stream tasks spend being polled and waiting to be polled.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use mesh_common::metrics::Declare;
use prometheus::{Counter, CounterVec, Gauge, IntCounter, IntCounterVec, IntGauge};
use tokio_metrics::{RuntimeMonitor, TaskMonitor};

use super::Telemetry;
use super::labels::Direction;

/// Polls longer than this count as slow (a task holding a worker).
const SLOW_POLL: Duration = Duration::from_millis(1);

/// Spawns tasks instrumented by one [`TaskMonitor`]: hyper's executor for a listener's streams.
#[derive(Clone, Debug)]
pub(crate) struct MonitoredExecutor(pub(crate) TaskMonitor);

impl<F> hyper::rt::Executor<F> for MonitoredExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(self.0.instrument(future));
    }
}

/// A task monitor for one listener's tasks.
pub(crate) fn task_monitor() -> TaskMonitor {
    let mut builder = TaskMonitor::builder();
    builder.with_slow_poll_threshold(SLOW_POLL);
    builder.build()
}

/// The runtime's families.
#[derive(Debug)]
pub(super) struct RuntimeFamilies {
    workers: IntGauge,
    live_tasks: IntGauge,
    busy_ratio: Gauge,
    busy_seconds: Counter,
    parks: IntCounter,
    global_queue: IntGauge,
    polls: IntCounterVec,
    poll_seconds: CounterVec,
    slow_polls: IntCounterVec,
    scheduled_seconds: CounterVec,
}

impl RuntimeFamilies {
    pub(super) fn declare(d: &mut Declare) -> prometheus::Result<Self> {
        Ok(Self {
            workers: d.gauge("mesh_runtime_workers", "Tokio worker threads.")?,
            live_tasks: d.gauge("mesh_runtime_live_tasks", "Tasks alive in the proxy's runtime.")?,
            busy_ratio: d.float_gauge(
                "mesh_runtime_busy_ratio",
                "Share of worker time spent running tasks over the last interval (0-1, all workers).",
            )?,
            busy_seconds: d.float_counter(
                "mesh_runtime_busy_seconds_total",
                "Worker time spent running tasks, summed over workers.",
            )?,
            parks: d.counter("mesh_runtime_parks_total", "Times a worker ran out of work and parked.")?,
            global_queue: d.gauge(
                "mesh_runtime_global_queue_depth",
                "Tasks waiting in the runtime's global queue at the last sample.",
            )?,
            polls: d.counter_vec(
                "mesh_task_polls_total",
                "Polls of the proxy's request tasks, by listener.",
                &["task"],
            )?,
            poll_seconds: d.float_counter_vec(
                "mesh_task_poll_seconds_total",
                "Time the proxy's request tasks spent being polled.",
                &["task"],
            )?,
            slow_polls: d.counter_vec(
                "mesh_task_slow_polls_total",
                "Polls of request tasks that took over 1 ms.",
                &["task"],
            )?,
            scheduled_seconds: d.float_counter_vec(
                "mesh_task_scheduled_seconds_total",
                "Time request tasks spent ready but waiting for a worker (run-queue delay).",
                &["task"],
            )?,
        })
    }
}

impl Telemetry {
    /// Samples the runtime and each listener's tasks every `interval` until the runtime stops.
    pub(crate) fn spawn_runtime_sampler(self: &Arc<Self>, tasks: Vec<(Direction, TaskMonitor)>, interval: Duration) {
        let telemetry = self.clone();
        let runtime = RuntimeMonitor::new(&tokio::runtime::Handle::current());
        tokio::spawn(async move {
            let families = &telemetry.runtime;
            let mut runtime_intervals = runtime.intervals();
            let mut task_intervals: Vec<_> = tasks.iter().map(|(dir, m)| (dir.as_str(), m.intervals())).collect();
            loop {
                tokio::time::sleep(interval).await;
                if let Some(r) = runtime_intervals.next() {
                    families.workers.set(i64::try_from(r.workers_count).unwrap_or(i64::MAX));
                    families.live_tasks.set(i64::try_from(r.live_tasks_count).unwrap_or(i64::MAX));
                    families.busy_ratio.set(r.busy_ratio());
                    families.busy_seconds.inc_by(r.total_busy_duration.as_secs_f64());
                    families.parks.inc_by(r.total_park_count);
                    families.global_queue.set(i64::try_from(r.global_queue_depth).unwrap_or(i64::MAX));
                }
                for (name, intervals) in &mut task_intervals {
                    let Some(t) = intervals.next() else { continue };
                    let name = [*name];
                    families.polls.with_label_values(&name).inc_by(t.total_poll_count);
                    families.poll_seconds.with_label_values(&name).inc_by(t.total_poll_duration.as_secs_f64());
                    families.slow_polls.with_label_values(&name).inc_by(t.total_slow_poll_count);
                    families
                        .scheduled_seconds
                        .with_label_values(&name)
                        .inc_by(t.total_scheduled_duration.as_secs_f64());
                }
            }
        });
    }
}
