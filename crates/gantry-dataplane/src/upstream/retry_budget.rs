//! Retry budgets: retries of one upstream capped at a share of its recent requests plus a
//! small floor, as in Envoy and Linkerd, so that when an upstream fails, retries cannot
//! multiply the load on it.
//!
//! The window is a ring of one-second buckets of atomic counters: counting costs two atomic
//! operations and no lock. A bucket is reused when its second comes round again; a count
//! racing with that reset may be lost, which only makes the budget a little approximate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::clock_origin;

/// Seconds of traffic a budget looks back on.
pub const WINDOW_SECONDS: u64 = 10;

/// The settings a budget is built from; a reload that keeps them keeps its counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetSettings {
    /// Retries allowed per request.
    pub ratio: f64,
    /// Retries per second allowed whatever the traffic.
    pub min_per_second: f64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second counted here, from [`clock_origin`] and starting at 1; 0 is never used.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The recent requests and retries of one upstream; outlives snapshots.
#[derive(Debug)]
pub struct RetryBudget {
    settings: RetryBudgetSettings,
    buckets: [Bucket; WINDOW_SECONDS as usize],
}

impl RetryBudget {
    /// A budget with nothing counted yet.
    pub fn new(settings: RetryBudgetSettings) -> Self {
        Self { settings, buckets: Default::default() }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> RetryBudgetSettings {
        self.settings
    }

    /// Counts a request's first try.
    pub fn record_request(&self, now: Instant) {
        self.current(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget: true, and counted, when the window has room for it.
    pub fn try_retry(&self, now: Instant) -> bool {
        let second = second_of(now);
        let (requests, retries) = self.totals(second);
        let allowed = self.settings.ratio * requests as f64 + self.settings.min_per_second * WINDOW_SECONDS as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn current(&self, now: Instant) -> &Bucket {
        self.bucket(second_of(now))
    }

    /// The bucket of `second`, emptied first when it still holds an older second.
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW_SECONDS) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second && bucket.second.compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Requests and retries in the window ending with `second`.
    fn totals(&self, second: u64) -> (u64, u64) {
        let oldest = second.saturating_sub(WINDOW_SECONDS - 1);
        self.buckets.iter().filter(|bucket| (oldest..=second).contains(&bucket.second.load(Ordering::Acquire))).fold(
            (0, 0),
            |(requests, retries), bucket| {
                (requests + bucket.requests.load(Ordering::Relaxed), retries + bucket.retries.load(Ordering::Relaxed))
            },
        )
    }
}

fn second_of(now: Instant) -> u64 {
    now.saturating_duration_since(clock_origin()).as_secs() + 1
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(ratio: f64, min_per_second: f64) -> RetryBudget {
        RetryBudget::new(RetryBudgetSettings { ratio, min_per_second })
    }

    #[test]
    fn the_floor_allows_min_per_second_times_the_window_without_traffic() {
        let budget = budget(0.0, 0.3);
        let now = clock_origin() + Duration::from_secs(100);
        assert!((0..3).all(|_| budget.try_retry(now)), "0.3/s over 10 s allows 3 retries");
        assert!(!budget.try_retry(now));
        // Still inside the window nine seconds later; free again once it has slid past.
        assert!(!budget.try_retry(now + Duration::from_secs(9)));
        assert!(budget.try_retry(now + Duration::from_secs(10)));
    }

    #[test]
    fn the_ratio_grows_the_budget_with_requests() {
        let budget = budget(0.2, 0.0);
        let now = clock_origin() + Duration::from_secs(50);
        assert!(!budget.try_retry(now), "no requests, no floor: no retries");
        for _ in 0..10 {
            budget.record_request(now);
        }
        assert!(budget.try_retry(now) && budget.try_retry(now), "20 % of 10 requests is 2 retries");
        assert!(!budget.try_retry(now));
        for _ in 0..5 {
            budget.record_request(now + Duration::from_secs(3));
        }
        assert!(budget.try_retry(now + Duration::from_secs(3)), "15 requests allow a third");
        assert!(!budget.try_retry(now + Duration::from_secs(3)));
    }

    #[test]
    fn old_buckets_are_reused_for_new_seconds() {
        let budget = budget(1.0, 0.0);
        let now = clock_origin() + Duration::from_secs(20);
        budget.record_request(now);
        assert!(budget.try_retry(now));
        // The same ring slot, a window later: the old counts are gone.
        let later = now + Duration::from_secs(WINDOW_SECONDS);
        assert!(!budget.try_retry(later));
        budget.record_request(later);
        assert!(budget.try_retry(later));
    }
}
