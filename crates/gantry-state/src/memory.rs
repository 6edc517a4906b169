//! Counters in this process's memory: exact within the process, shared by nothing else.
//!
//! Runs per request: hashes the key to one of many shards and holds that shard's lock only for
//! a map lookup and a few arithmetic steps, so threads limiting different keys rarely meet.
//! Expired keys are swept from a shard every [`SWEEP_EVERY`] new keys, which bounds memory by
//! the number of keys live in one window rather than by every key ever seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::algorithm::{self, Outcome, State};
use crate::{CounterStore, Hit, PERIOD_GRACE};

/// New keys inserted into a shard between two sweeps of its expired keys.
pub const SWEEP_EVERY: u64 = 1024;

/// Where the memory store reads the time, in microseconds.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Microseconds since some fixed origin; never goes backwards.
    fn now_micros(&self) -> u64;
}

/// The process clock: the wall clock read once at start, advanced by the monotonic clock, so a
/// wall-clock step (NTP) never moves windows.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
    origin_micros: u64,
}

impl Default for SystemClock {
    fn default() -> Self {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self { origin: Instant::now(), origin_micros: u64::try_from(since_epoch.as_micros()).unwrap_or(0) }
    }
}

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.origin_micros.saturating_add(elapsed)
    }
}

/// A clock moved by hand, for tests. Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(u64::try_from(by.as_micros()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One key's state and when it may be forgotten.
#[derive(Debug)]
struct Entry {
    state: State,
    expires: u64,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<String, Entry>,
    inserted_since_sweep: u64,
}

/// Limiter counters in memory, sharded by key.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock::default()))
    }
}

impl MemoryStore {
    /// A store reading the time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        // Four shards per core: two threads rarely want the same one.
        let cores = std::thread::available_parallelism().map_or(4, usize::from);
        let count = (cores * 4).next_power_of_two();
        Self { shards: (0..count).map(|_| Mutex::new(Shard::default())).collect(), clock }
    }

    /// Keys held now, expired or not yet swept included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).entries.len())
            .sum()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn step(&self, key: &str, decide: impl FnOnce(Option<State>, u64) -> Outcome) -> Hit<'static> {
        let index = (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) & (self.shards.len() - 1);
        // A panic while holding the lock cannot leave an entry half-written (each is replaced
        // whole), so a poisoned shard is still consistent.
        let mut shard = self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = self.clock.now_micros();
        let current = shard.entries.get(key).filter(|entry| entry.expires > now).map(|entry| entry.state);
        let outcome = decide(current, now);
        if let Some((state, expires)) = outcome.state {
            match shard.entries.get_mut(key) {
                Some(entry) => *entry = Entry { state, expires },
                None => {
                    shard.entries.insert(key.to_owned(), Entry { state, expires });
                    shard.inserted_since_sweep += 1;
                    if shard.inserted_since_sweep >= SWEEP_EVERY {
                        shard.inserted_since_sweep = 0;
                        shard.entries.retain(|_, entry| entry.expires > now);
                    }
                }
            }
        }
        Hit::Ready(Ok(outcome.decision))
    }
}

impl CounterStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn fixed_window_hit<'a>(&'a self, key: &'a str, window: Duration, limit: u64, cost: u64) -> Hit<'a> {
        self.step(key, |state, now| algorithm::fixed_window(state, now, window, limit, cost))
    }

    fn sliding_window_hit<'a>(&'a self, key: &'a str, window: Duration, limit: u64, cost: u64) -> Hit<'a> {
        self.step(key, |state, now| algorithm::sliding_window(state, now, window, limit, cost))
    }

    fn gcra_hit<'a>(&'a self, key: &'a str, emission_interval: Duration, burst: u64, cost: u64) -> Hit<'a> {
        self.step(key, |state, now| algorithm::gcra(state, now, emission_interval, burst, cost))
    }

    fn period_hit<'a>(&'a self, key: &'a str, ends_in: Duration, limit: u64, cost: u64) -> Hit<'a> {
        let keep_for = ends_in.saturating_add(PERIOD_GRACE);
        self.step(key, |state, now| algorithm::period(state, now, ends_in, keep_for, limit, cost))
    }
}
