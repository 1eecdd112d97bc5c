//! The circuit breaker of one destination service, per caller proxy: at most `max_in_flight`
//! calls at once (a call holds its slot until its response ends, retries included), at most
//! `max_pending` calls waiting for a slot, and a waiting call gives up at its deadline or the
//! fail-fast timeout. A call beyond both fails at once, so a service that slows down is not
//! buried under an ever-growing queue of calls in this proxy (and this proxy's memory stays
//! bounded).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_registry::policy::CircuitBreaker;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Every slot taken and the waiting line full.
    QueueFull,
    /// It waited for a slot until its deadline or the fail-fast timeout.
    WaitedOut,
}

/// Slots for calls to one service.
#[derive(Debug)]
pub(crate) struct Breaker {
    slots: Arc<Semaphore>,
    /// The slot count the semaphore was last sized to.
    size: Mutex<usize>,
    waiting: AtomicUsize,
}

impl Breaker {
    pub(crate) fn new(limits: &CircuitBreaker) -> Self {
        let size = limits.max_in_flight as usize;
        Self { slots: Arc::new(Semaphore::new(size)), size: Mutex::new(size), waiting: AtomicUsize::new(0) }
    }

    /// A slot for one call, waiting no later than `until` and only if fewer than `max_pending`
    /// already wait.
    pub(crate) async fn admit(&self, limits: &CircuitBreaker, until: Instant) -> Result<OwnedSemaphorePermit, Shed> {
        self.resize(limits.max_in_flight as usize);
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= limits.max_pending as usize {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::QueueFull);
        }
        let waited = tokio::time::timeout_at(until, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(Shed::WaitedOut),
        }
    }

    /// Follows a policy change of `max_in_flight`: more slots at once; fewer as free slots
    /// allow (calls in flight keep theirs).
    fn resize(&self, wanted: usize) {
        let mut size = self.size.lock();
        if *size == wanted {
            return;
        }
        if wanted > *size {
            self.slots.add_permits(wanted - *size);
            *size = wanted;
        } else {
            *size -= self.slots.forget_permits(*size - wanted);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beyond_the_slots_and_the_line_calls_fail_at_once() {
        let limits = CircuitBreaker { max_in_flight: 2, max_pending: 1 };
        let b = Arc::new(Breaker::new(&limits));
        let later = || Instant::now() + Duration::from_secs(1);
        let first = b.admit(&limits, later()).await;
        let second = b.admit(&limits, later()).await;
        assert!(first.is_ok() && second.is_ok());
        // The third waits in line; the fourth finds the line full.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.admit(&limits, later()).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.admit(&limits, later()).await.err(), Some(Shed::QueueFull));
        // A slot frees up: the waiter gets it.
        drop(first);
        assert_eq!(waiter.await.ok(), Some(Ok(())));
        // Nobody frees one: a waiter gives up at its deadline.
        let _held = b.admit(&limits, later()).await;
        assert_eq!(b.admit(&limits, later()).await.err(), Some(Shed::WaitedOut));
    }

    #[tokio::test]
    async fn a_policy_change_resizes_the_slots() {
        let small = CircuitBreaker { max_in_flight: 1, max_pending: 0 };
        let large = CircuitBreaker { max_in_flight: 3, max_pending: 0 };
        let b = Breaker::new(&small);
        let until = Instant::now();
        let held = b.admit(&small, until).await;
        assert!(held.is_ok());
        assert_eq!(b.admit(&small, until).await.err(), Some(Shed::QueueFull));
        let more: Vec<_> = [b.admit(&large, until).await, b.admit(&large, until).await].into();
        assert!(more.iter().all(Result::is_ok), "two more slots");
        drop(more);
        assert_eq!(b.admit(&small, until).await.err(), Some(Shed::QueueFull), "back to one slot, and it is taken");
        drop(held);
        assert!(b.admit(&small, until).await.is_ok());
    }
}
