//! What a policy asks of the data plane to shadow a request: a copy sent to another upstream
//! whose answer nobody waits for, with a bound on the copies in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A copy of the request to send to `upstream`, put in [`Exchange::mirror`](crate::Exchange)
/// by a request hook. The data plane sends it beside the request itself, never delaying or
/// failing the client's exchange, and counts what became of it.
#[derive(Clone, Debug)]
pub struct MirrorRequest {
    /// The upstream the copy goes to, checked against the configuration by the policy.
    pub upstream: Arc<str>,
    /// Largest request body copied; a request with a longer body is not mirrored.
    pub max_body_bytes: u64,
    /// Time limit of the copy's exchange, from sending it to the end of its response.
    pub timeout: Duration,
    /// Copies in flight, shared by every request of the policy that asked.
    pub slots: Arc<MirrorSlots>,
}

/// A bound on the copies in flight at once. A copy that finds every slot taken is dropped
/// rather than queued, so shadow traffic can never pile up behind a slow mirror.
#[derive(Debug)]
pub struct MirrorSlots {
    max: usize,
    taken: AtomicUsize,
}

impl MirrorSlots {
    /// `max` slots, all free.
    pub fn new(max: usize) -> Self {
        Self { max, taken: AtomicUsize::new(0) }
    }

    /// Takes a slot, held until the returned guard is dropped; `None` when all are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<MirrorSlot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| (taken < self.max).then_some(taken + 1))
            .ok()
            .map(|_| MirrorSlot(self.clone()))
    }

    /// Slots taken now.
    pub fn in_flight(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// One copy's place among the [`MirrorSlots`], given back on drop.
#[derive(Debug)]
pub struct MirrorSlot(Arc<MirrorSlots>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_at_most_max_slots_and_takes_them_back_on_drop() {
        let slots = Arc::new(MirrorSlots::new(2));
        let first = slots.try_take().expect("a free slot");
        let second = slots.try_take().expect("a second free slot");
        assert!(slots.try_take().is_none(), "both slots are taken");
        assert_eq!(slots.in_flight(), 2);
        drop(first);
        assert_eq!(slots.in_flight(), 1);
        let third = slots.try_take().expect("the dropped slot is free again");
        drop((second, third));
        assert_eq!(slots.in_flight(), 0);
    }
}
