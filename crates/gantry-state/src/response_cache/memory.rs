//! A memory zone: responses in this process's memory, bounded by their size in bytes (moka,
//! weighing each entry by its body, headers and key), each expiring after its own time to live.

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::{CacheKey, CacheRecord, PurgeFilter};

/// A stored record and how long it lives.
#[derive(Clone, Debug)]
struct Entry {
    record: CacheRecord,
    ttl: Duration,
}

/// Each entry expires after its own time to live, counted again when it is replaced.
struct EntryTtl;

impl Expiry<CacheKey, Entry> for EntryTtl {
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(&self, _: &CacheKey, entry: &Entry, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Responses kept in this process, at most `max_bytes` of them; the least used go first.
pub struct MemoryZone {
    name: String,
    entries: Cache<CacheKey, Entry>,
}

impl std::fmt::Debug for MemoryZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryZone").field("name", &self.name).field("entries", &self.entries.entry_count()).finish()
    }
}

impl MemoryZone {
    /// An empty zone.
    pub fn new(name: &str, max_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &Entry| {
                u32::try_from(key.weight() + entry.record.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(EntryTtl)
            .build();
        Self { name: name.to_owned(), entries }
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The record under `key`, unless it expired.
    pub fn get(&self, key: &CacheKey) -> Option<CacheRecord> {
        self.entries.get(key).map(|entry| entry.record)
    }

    /// Stores `record` under `key` for `ttl`. A record larger than the whole zone is not kept.
    pub fn insert(&self, key: CacheKey, record: CacheRecord, ttl: Duration) {
        self.entries.insert(key, Entry { record, ttl });
    }

    /// Removes the record under `key`; returns how many entries went (0 or 1).
    pub fn remove(&self, key: &CacheKey) -> u64 {
        u64::from(self.entries.remove(key).is_some())
    }

    /// Removes what `filter` selects; returns how many entries went.
    pub fn purge(&self, filter: &PurgeFilter) -> u64 {
        let doomed: Vec<_> =
            self.entries.iter().map(|(stored, _)| stored).filter(|stored| filter.selects(stored)).collect();
        for stored in &doomed {
            self.entries.invalidate(&**stored);
        }
        doomed.len() as u64
    }

    /// Bytes the zone holds now, roughly (moka settles its count in the background).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}
