//! State that outlives a configuration snapshot: the counters of limiters, kept in this
//! process's memory ([`MemoryStore`]) or in Redis ([`RedisStore`]) so that every gateway
//! process shares them.
//!
//! A [`CounterStore`] offers one operation per limiting algorithm, each a single atomic step
//! (one lock of one shard in memory, one Lua script run in Redis): read the key's state, decide,
//! write it back. Policies build their keys, call the store per request and turn the
//! [`Decision`] into a response. [`Stores`] is created once per process, handed to policies at
//! build time and kept across reloads, so a reload resets no counter.
//!
//! Time comes from the store: the process clock for memory, Redis's own `TIME` for Redis, so
//! the clocks of several gateway nodes never need to agree. Calendar periods
//! ([`CounterStore::period_hit`]) are the exception: a day begins at midnight on the caller's
//! wall clock, so the caller names the period in the key and says when it ends.

#![warn(missing_docs)]

mod algorithm;
pub mod memory;
pub mod redis;
pub mod response_cache;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gantry_config::{ConfigErrors, NodeSpec};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use memory::{Clock, ManualClock, MemoryStore, SystemClock};
pub use redis::RedisStore;

/// How long a period's count is kept after the period ended, so that a node whose clock is a
/// little behind still finds the count of the period it is in (clocks are expected to agree
/// within seconds; this leaves minutes).
pub const PERIOD_GRACE: Duration = Duration::from_secs(5 * 60);

/// What a limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The request fits the limit and was counted.
    pub allowed: bool,
    /// Units still available right after this decision (0 when denied or used up).
    pub remaining: u64,
    /// Until the limiter is back to its full allowance: the window's end for windows, the
    /// time the bucket is full again for GCRA.
    pub reset_after: Duration,
    /// When denied: the wait before a request of the same cost would be allowed. Zero when
    /// allowed.
    pub retry_after: Duration,
}

/// Why a store could not decide. The policy then applies its `on_store_error` setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (no connection, connection refused or reset).
    #[error("the {store} store is unavailable: {reason}")]
    Unavailable {
        /// `redis`.
        store: &'static str,
        /// What failed, without any secret.
        reason: String,
    },
    /// The store did not answer in time.
    #[error("the {store} store did not answer within {after:?}")]
    Timeout {
        /// `redis`.
        store: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// The store answered with an error or something unexpected.
    #[error("the {store} store failed: {reason}")]
    Failed {
        /// `redis`.
        store: &'static str,
        /// The store's message.
        reason: String,
    },
}

/// A store's answer: at once (memory), or after a round trip (Redis). Deciding at once costs
/// no allocation.
pub enum Hit<'a> {
    /// Decided.
    Ready(Result<Decision, StoreError>),
    /// Decided when the future completes.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send + 'a>>),
}

impl Hit<'_> {
    /// Resolves the answer.
    pub async fn resolve(self) -> Result<Decision, StoreError> {
        match self {
            Hit::Ready(decision) => decision,
            Hit::Pending(future) => future.await,
        }
    }
}

/// Atomic limiter operations on counters named by string keys.
///
/// Each operation reads the key's state, decides whether a request of `cost` units fits, and
/// counts it only when it does, in one atomic step: concurrent callers (threads, or gateway
/// processes sharing a Redis) never both take the last unit. Keys of different algorithms
/// must differ; the caller includes the algorithm in the key. Expired state is removed by the
/// store (memory: evicted; Redis: key TTL).
pub trait CounterStore: Send + Sync + std::fmt::Debug + 'static {
    /// The store's name in metrics and logs: `memory`, `redis`.
    fn name(&self) -> &'static str;

    /// Fixed window: at most `limit` units per `window`. The window starts with the key's
    /// first request (not at a clock boundary), so keys reset at different times.
    fn fixed_window_hit<'a>(&'a self, key: &'a str, window: Duration, limit: u64, cost: u64) -> Hit<'a>;

    /// Sliding window, approximated from two fixed windows: the previous window's count,
    /// weighted by how much of it still overlaps the sliding window, plus the current one's.
    /// Exact when the previous window's requests were evenly spread.
    fn sliding_window_hit<'a>(&'a self, key: &'a str, window: Duration, limit: u64, cost: u64) -> Hit<'a>;

    /// GCRA (a token bucket without a refill timer): one unit every `emission_interval`, and
    /// up to `burst` units at once when idle. `reset_after` of an allowed decision minus
    /// `emission_interval × cost` is how long a leaky bucket would delay this request.
    fn gcra_hit<'a>(&'a self, key: &'a str, emission_interval: Duration, burst: u64, cost: u64) -> Hit<'a>;

    /// Calendar period: at most `limit` units in the period that `key` names (the caller puts
    /// the period's start in the key), which ends in `ends_in` by the caller's clock. The count
    /// is kept until then plus [`PERIOD_GRACE`]; a new period is a new key, starting at 0.
    /// `reset_after` is `ends_in`, and so is `retry_after` when denied.
    fn period_hit<'a>(&'a self, key: &'a str, ends_in: Duration, limit: u64, cost: u64) -> Hit<'a>;
}

/// Labels of `gantry_store_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    policy: &'static str,
    store: &'static str,
    /// What the policy did instead: `allow` or `deny`.
    action: &'static str,
}

/// Counters of store failures, by policy, store and the action taken. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct StoreMetrics {
    errors: Family<StoreErrorLabels, Counter>,
}

impl StoreMetrics {
    /// Counts a failed store call of `policy`, answered by `action` (`allow` or `deny`).
    pub fn count_error(&self, policy: &'static str, store: &'static str, action: &'static str) {
        self.errors.get_or_create(&StoreErrorLabels { policy, store, action }).inc();
    }

    /// How many failed calls were counted so far for these labels.
    pub fn errors(&self, policy: &'static str, store: &'static str, action: &'static str) -> u64 {
        self.errors.get_or_create(&StoreErrorLabels { policy, store, action }).get()
    }
}

/// Every store of the process, created once at start and kept across reloads.
#[derive(Clone, Debug)]
pub struct Stores {
    memory: Arc<MemoryStore>,
    redis: Option<Arc<RedisStore>>,
    metrics: StoreMetrics,
}

impl Default for Stores {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl Stores {
    /// Only the in-memory store.
    pub fn in_memory() -> Self {
        Self { memory: Arc::new(MemoryStore::default()), redis: None, metrics: StoreMetrics::default() }
    }

    /// The stores `node.stores` describes, plus the in-memory store. Nothing connects yet:
    /// Redis connects on first use (or [`Self::connect`]), so a gateway starts while Redis is down.
    pub fn from_node(node: Option<&NodeSpec>) -> Result<Self, ConfigErrors> {
        let mut stores = Self::in_memory();
        let redis = node.and_then(|node| node.stores.as_ref()).and_then(|stores| stores.redis.as_ref());
        if let Some(spec) = redis {
            let path = gantry_config::FieldPath::root().key("node").key("stores").key("redis");
            stores.redis = Some(Arc::new(RedisStore::new(spec, &path)?));
        }
        Ok(stores)
    }

    /// The same stores with `memory` as the in-memory store (tests use one with a manual clock).
    #[must_use]
    pub fn with_memory(mut self, memory: MemoryStore) -> Self {
        self.memory = Arc::new(memory);
        self
    }

    /// The in-memory store.
    pub fn memory(&self) -> Arc<dyn CounterStore> {
        self.memory.clone()
    }

    /// The Redis store, when `node.stores.redis` is configured.
    pub fn redis(&self) -> Option<Arc<dyn CounterStore>> {
        self.redis.clone().map(|redis| redis as Arc<dyn CounterStore>)
    }

    /// Store failure counters.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Registers the store metrics in `registry` (exposed by the admin API's `/metrics`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "gantry_store_errors",
            "Store calls that failed (unreachable, timed out, errored), by policy, store and the action taken instead (allow or deny)",
            self.metrics.errors.clone(),
        );
    }

    /// Opens the Redis connections now instead of at the first request, and logs the
    /// outcome. Never fails: an unreachable Redis is retried on use.
    pub async fn connect(&self) {
        if let Some(redis) = &self.redis {
            redis.connect().await;
        }
    }
}

#[cfg(test)]
mod tests;
