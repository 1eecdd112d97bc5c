//! Registering an instance: its record is put under the instance key, attached to a lease that
//! this task keeps alive. If the lease is lost (etcd restarted with fresh data, or a partition
//! outlived the TTL) the task registers again with a new lease; if the record is deleted behind
//! its back it writes it again. Dropping or [`Registration::deregister`]ing revokes the lease,
//! which removes the record at once.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::layout::Layout;
use crate::metrics::Metrics;
use crate::record::InstanceRecord;
use mesh_common::backoff::Backoff;

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct RegistrationConfig {
    /// Lease TTL: how long after the process dies its record disappears (default 10 s).
    pub ttl: Duration,
    /// How often the lease is refreshed (default 3 s, about a third of the TTL).
    pub keepalive_interval: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(10), keepalive_interval: Duration::from_secs(3) }
    }
}

/// A bad lease configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// etcd leases are whole seconds, at least 1 (etcd raises tiny TTLs to its own minimum).
    #[error("lease TTL {0:?} must be at least 1s")]
    Ttl(Duration),
    /// Keepalives must come well before the lease expires.
    #[error("keepalive interval {0:?} must be above 0 and below the lease TTL {1:?}")]
    Keepalive(Duration, Duration),
}

impl RegistrationConfig {
    /// Checks the relation between TTL and keepalive interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < Duration::from_secs(1) {
            return Err(ConfigError::Ttl(self.ttl));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.ttl {
            return Err(ConfigError::Keepalive(self.keepalive_interval, self.ttl));
        }
        Ok(())
    }
}

/// Where a registration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not yet in etcd.
    Registering,
    /// In etcd, attached to this lease.
    Registered {
        /// The lease id.
        lease: i64,
    },
    /// The last attempt failed; retrying with backoff.
    Retrying {
        /// Why the last attempt failed.
        error: String,
    },
}

/// A live registration. Drop it or call [`Registration::deregister`] to remove the instance.
#[derive(Debug)]
pub struct Registration {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    state: watch::Receiver<RegistrationState>,
    key: String,
}

impl Registration {
    /// Starts registering `record` in the background. Never fails: while etcd is unreachable the
    /// task retries, and [`Registration::state`] says so.
    pub fn start(
        client: Client,
        layout: &Layout,
        record: InstanceRecord,
        config: RegistrationConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let key = layout.instance(&record.service, &record.instance_id);
        let (state_tx, state) = watch::channel(RegistrationState::Registering);
        let (stop, stop_rx) = oneshot::channel();
        let value = record.encode();
        let task = Registrar { client, key: key.clone(), value, updates: None, config, metrics, state: state_tx };
        let task = tokio::spawn(task.run(stop_rx));
        Self { stop: Some(stop), task: Some(task), state, key }
    }

    /// Keeps any value at `key` on a lease of its own, the same way, and writes it again each
    /// time `value` changes (a proxy's status record). `metrics` count it apart from instances
    /// when given an undeclared [`Metrics::new`].
    pub fn publish(
        client: Client,
        key: String,
        mut value: watch::Receiver<Vec<u8>>,
        config: RegistrationConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (state_tx, state) = watch::channel(RegistrationState::Registering);
        let (stop, stop_rx) = oneshot::channel();
        let current = value.borrow_and_update().clone();
        let task = Registrar {
            client,
            key: key.clone(),
            value: current,
            updates: Some(value),
            config,
            metrics,
            state: state_tx,
        };
        let task = tokio::spawn(task.run(stop_rx));
        Self { stop: Some(stop), task: Some(task), state, key }
    }

    /// The etcd key of this instance's record.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Watches the registration's state.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Waits until the record is in etcd.
    pub async fn registered(&self) {
        let mut state = self.state.clone();
        // The sender lives as long as the task; if the task ended, there is nothing to wait for.
        let _ = state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })).await;
    }

    /// Removes the instance: stops keepalives and revokes the lease (bounded by the client's
    /// request timeout). Returns once etcd has answered or the attempt failed.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropping the sender also stops the task, which revokes the lease on its way out.
        self.stop.take();
    }
}

struct Registrar {
    client: Client,
    key: String,
    value: Vec<u8>,
    /// New values to write while registered (status records).
    updates: Option<watch::Receiver<Vec<u8>>>,
    config: RegistrationConfig,
    metrics: Arc<Metrics>,
    state: watch::Sender<RegistrationState>,
}

/// The next value to write; pending forever without updates or once their sender is gone.
async fn next_value(updates: Option<&mut watch::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    if let Some(rx) = updates
        && rx.changed().await.is_ok()
    {
        return Some(rx.borrow_and_update().clone());
    }
    std::future::pending().await
}

/// Why a kept-alive lease stopped being ours.
enum Ended {
    Stop,
    LeaseLost,
}

impl Registrar {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.config.keepalive_interval);
        loop {
            let lease = tokio::select! {
                _ = &mut stop => return,
                r = self.register() => r,
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(error) => {
                    self.metrics.registrations.with_label_values(&["error"]).inc();
                    tracing::warn!(key = %self.key, %error, "registration failed; retrying");
                    self.state.send_replace(RegistrationState::Retrying { error: error.to_string() });
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            self.metrics.registrations.with_label_values(&["ok"]).inc();
            tracing::info!(key = %self.key, lease, "registered");
            self.state.send_replace(RegistrationState::Registered { lease });
            match self.keep_alive(lease, &mut stop).await {
                Ended::Stop => {
                    self.revoke(lease).await;
                    return;
                }
                Ended::LeaseLost => {
                    self.metrics.leases_lost.inc();
                    tracing::warn!(key = %self.key, lease, "lease lost; registering again");
                    self.state.send_replace(RegistrationState::Registering);
                }
            }
        }
    }

    async fn register(&mut self) -> Result<i64, etcd_client::Error> {
        let ttl = i64::try_from(self.config.ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = self.client.lease_grant(ttl, None).await?.id();
        let put =
            self.client.put(self.key.as_str(), self.value.clone(), Some(PutOptions::new().with_lease(lease))).await;
        if let Err(error) = put {
            // Do not leave a lease behind; it would expire anyway.
            let _ = self.client.lease_revoke(lease).await;
            return Err(error);
        }
        Ok(lease)
    }

    /// Refreshes `lease` every interval until told to stop or the lease is gone. A lease is
    /// taken as gone when etcd says so (TTL 0) or when no keepalive succeeded for a whole TTL.
    async fn keep_alive(&mut self, lease: i64, stop: &mut oneshot::Receiver<()>) -> Ended {
        let mut tick = tokio::time::interval(self.config.keepalive_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = &mut *stop => return Ended::Stop,
                _ = tick.tick() => {}
                Some(value) = next_value(self.updates.as_mut()) => {
                    self.value = value;
                    let put = PutOptions::new().with_lease(lease);
                    if let Err(error) = self.client.put(self.key.as_str(), self.value.clone(), Some(put)).await {
                        // Written at the next registration, or the next change.
                        tracing::debug!(key = %self.key, %error, "could not update the record");
                    }
                    continue;
                }
            }
            match self.keep_alive_once(lease, &mut stream).await {
                Ok(ttl) if ttl > 0 => {
                    last_ok = Instant::now();
                    self.restore_record(lease).await;
                }
                Ok(_) => return Ended::LeaseLost,
                Err(error) => {
                    stream = None;
                    self.metrics.keepalive_failures.inc();
                    tracing::debug!(key = %self.key, lease, %error, "lease keepalive failed");
                    if last_ok.elapsed() >= self.config.ttl {
                        return Ended::LeaseLost;
                    }
                }
            }
        }
    }

    async fn keep_alive_once(
        &mut self,
        lease: i64,
        stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    ) -> Result<i64, String> {
        let bound = self.config.keepalive_interval;
        let round = async {
            if stream.is_none() {
                *stream = Some(self.client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?);
            }
            let Some((keeper, responses)) = stream.as_mut() else { unreachable!("set above") };
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match responses.message().await {
                Ok(Some(resp)) => Ok(resp.ttl()),
                Ok(None) => Err("keepalive stream closed".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(bound, round).await.map_err(|_| format!("no answer within {bound:?}"))?
    }

    /// Writes the record again if it vanished while its lease lives (someone deleted it).
    async fn restore_record(&mut self, lease: i64) {
        let txn = Txn::new().when([Compare::version(self.key.as_str(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            self.key.as_str(),
            self.value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        match self.client.txn(txn).await {
            Ok(resp) if resp.succeeded() => {
                self.metrics.records_restored.inc();
                tracing::warn!(key = %self.key, "own record was missing from etcd; written again");
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(key = %self.key, %error, "could not check own record"),
        }
    }

    async fn revoke(&mut self, lease: i64) {
        match self.client.lease_revoke(lease).await {
            Ok(_) => tracing::info!(key = %self.key, lease, "deregistered"),
            Err(error) => {
                tracing::warn!(key = %self.key, lease, %error, "could not revoke lease; the record expires with it")
            }
        }
    }
}
