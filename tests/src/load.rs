//! Steady background load for churn tests: a few callers looping unary calls through a proxy,
//! every outcome recorded with its time. Bounded: each caller stops when told, or after 5 min.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::demo::v1::EchoRequest;
use mesh_proto::demo::v1::echo_client::EchoClient;
use tonic::transport::Channel;

/// Upper bound on how long a load may run.
const MAX_RUN: Duration = Duration::from_secs(300);

/// One call's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When the call ended.
    pub at: Instant,
    /// The instance that answered, or the status code and message.
    pub result: Result<String, (tonic::Code, String)>,
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `callers` loops sharing `client`'s connection, each pausing `pause` between calls.
    pub fn start(client: EchoClient<Channel>, callers: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks = (0..callers)
            .map(|_| {
                let (mut client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                        let request = EchoRequest { payload: vec![0; 100], ..Default::default() };
                        let result = match client.unary(request).await {
                            Ok(reply) => Ok(reply.into_inner().instance),
                            Err(status) => Err((status.code(), status.message().to_string())),
                        };
                        outcomes.push(Outcome { at: Instant::now(), result });
                        tokio::time::sleep(pause).await;
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the load and returns every outcome, in time order.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all.sort_by_key(|o| o.at);
        all
    }
}

/// The failed outcomes.
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.result.is_err()).collect()
}

/// Panics, listing the first failures, if any call failed.
pub fn assert_no_failures(outcomes: &[Outcome]) {
    let failed = failures(outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} calls failed; first: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
}
