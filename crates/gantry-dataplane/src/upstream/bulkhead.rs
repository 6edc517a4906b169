//! Per-upstream bulkheads: a bound on requests in flight to one upstream and on requests
//! waiting for a slot, so a slow upstream holds a bounded share of the gateway's connections
//! and memory instead of all of them.
//!
//! Slots are a tokio semaphore, whose waiters are served first come, first served.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The settings a bulkhead is built from; a reload that keeps them keeps the bulkhead and the
/// requests it is counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkheadSettings {
    /// Requests in flight at once.
    pub max_requests: u32,
    /// Requests that may wait for a slot.
    pub max_pending: u32,
    /// Longest wait for a slot.
    pub pending_timeout: Duration,
}

/// Slots of one upstream; outlives snapshots while its settings stay the same.
#[derive(Debug)]
pub struct Bulkhead {
    settings: BulkheadSettings,
    slots: Arc<Semaphore>,
    pending: AtomicU32,
    refused: AtomicU64,
}

/// A taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct BulkheadSlot {
    _permit: OwnedSemaphorePermit,
}

/// Why a request got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot was taken and `max_pending` requests were already waiting.
    QueueFull,
    /// The request waited `pending_timeout` without getting a slot.
    TimedOut,
}

impl Bulkhead {
    /// A bulkhead with every slot free.
    pub fn new(settings: BulkheadSettings) -> Self {
        Self {
            settings,
            slots: Arc::new(Semaphore::new(settings.max_requests as usize)),
            pending: AtomicU32::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> BulkheadSettings {
        self.settings
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A slot: at once when one is free, else after waiting behind the requests already
    /// waiting, when there is room to wait and one frees up within `pending_timeout`.
    pub async fn acquire(&self) -> Result<BulkheadSlot, Refusal> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(BulkheadSlot { _permit: permit });
        }
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        let _leave_queue = LeaveQueue(&self.pending);
        if waiting >= self.settings.max_pending {
            return Err(self.refuse(Refusal::QueueFull));
        }
        match tokio::time::timeout(self.settings.pending_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(BulkheadSlot { _permit: permit }),
            // The semaphore is never closed; a closed one is treated as a wait that ran out.
            Ok(Err(_)) | Err(_) => Err(self.refuse(Refusal::TimedOut)),
        }
    }

    fn refuse(&self, refusal: Refusal) -> Refusal {
        self.refused.fetch_add(1, Ordering::Relaxed);
        refusal
    }
}

/// Takes a request off the waiting count however its wait ends, also when the client goes
/// away and the waiting future is dropped.
struct LeaveQueue<'a>(&'a AtomicU32);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkhead(max_requests: u32, max_pending: u32, pending_timeout_ms: u64) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(BulkheadSettings {
            max_requests,
            max_pending,
            pending_timeout: Duration::from_millis(pending_timeout_ms),
        }))
    }

    #[tokio::test]
    async fn refuses_at_once_when_the_slots_and_the_queue_are_full() {
        let bulkhead = bulkhead(1, 0, 1000);
        let held = bulkhead.acquire().await.expect("a free slot");
        assert_eq!(bulkhead.acquire().await.expect_err("no room to wait"), Refusal::QueueFull);
        drop(held);
        bulkhead.acquire().await.expect("the slot is free again");
        assert_eq!(bulkhead.refused(), 1);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_freed_slot_or_times_out() {
        let bulkhead = bulkhead(1, 1, 200);
        let held = bulkhead.acquire().await.expect("a free slot");
        let waiter = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(bulkhead.acquire().await.expect_err("one already waits"), Refusal::QueueFull);
        drop(held);
        waiter.await.expect("joined").expect("the waiter got the freed slot");

        let held = bulkhead.acquire().await.expect("a free slot");
        assert_eq!(bulkhead.acquire().await.expect_err("nothing frees up"), Refusal::TimedOut);
        assert_eq!(bulkhead.pending.load(Ordering::Relaxed), 0, "the timed-out waiter left the queue");
        drop(held);
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order() {
        let bulkhead = bulkhead(1, 3, 5000);
        let held = bulkhead.acquire().await.expect("a free slot");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for index in 0..3 {
            let (bulkhead, order) = (bulkhead.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = bulkhead.acquire().await.expect("a slot in turn");
                order.lock().expect("order").push(index);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
            }));
            // Let each waiter queue before the next one arrives.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.expect("joined");
        }
        assert_eq!(*order.lock().expect("order"), vec![0, 1, 2]);
    }
}
