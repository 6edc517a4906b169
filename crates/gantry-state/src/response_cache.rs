//! Where the `response_cache` policy keeps responses: a memory zone of this process (moka,
//! bounded in bytes) or Redis (shared by every gateway process using it), behind one
//! [`ResponseCacheStore`].
//!
//! The store knows nothing of HTTP caching rules; the policy decides what is fresh. A
//! [`CacheKey`] keeps the route, host and path readable, so a purge can select entries by them,
//! and puts everything else the policy keys on into a digest. Entries expire by the time to live
//! the policy gives (freshness plus how long a stale copy may still serve).
//!
//! Memory zones must outlive reloads, like limiter counters, and the admin API must reach them
//! to purge: [`Stores::response_caches`] gives the process's [`ResponseCaches`], which hands out
//! zones by name and bound and keeps the hit and miss counters.

mod codec;
mod memory;
mod vectors;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use codec::DecodeError;
pub use memory::MemoryZone;
pub use vectors::{cosine_similarity, Neighbour, VectorIndex, VectorStore};

use crate::{MemoryStore, RedisStore, StoreError, Stores};

/// Where one response (or one variant of it) is stored.
///
/// Route, host and path stay readable because purges select by them; the rest of what the key
/// covers (method, query, chosen headers, consumer, the values of the headers a `Vary` names)
/// is in `digest`, so keys stay short and no request header reaches the store in clear.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    route: Arc<str>,
    host: Box<str>,
    path: Box<str>,
    digest: Box<str>,
}

impl CacheKey {
    /// The key of `route`'s response for `host` and `path`; `digest` names everything else the
    /// key covers. Whitespace, which no valid host or path contains, is replaced so that the
    /// stored form splits back into its parts.
    pub fn new(route: Arc<str>, host: &str, path: &str, digest: &str) -> Self {
        Self { route, host: without_spaces(host), path: without_spaces(path), digest: without_spaces(digest) }
    }

    /// The key of one variant of this response: the entry selected by the values of the
    /// request headers that the response's `Vary` names, digested into `variant`.
    pub fn variant(&self, variant: &str) -> Self {
        Self { digest: format!("{}.{}", self.digest, without_spaces(variant)).into(), ..self.clone() }
    }

    /// The route.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The host, lower case, without port.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path, without query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The key as stored in Redis, after the configured prefix: `cache <route> <host> <path> <digest>`.
    pub fn storage_name(&self) -> String {
        format!("cache {} {} {} {}", self.route, self.host, self.path, self.digest)
    }

    /// Memory a key takes in a zone, roughly.
    fn weight(&self) -> usize {
        self.route.len() + self.host.len() + self.path.len() + self.digest.len() + 64
    }
}

fn without_spaces(text: &str) -> Box<str> {
    if text.bytes().any(|byte| byte.is_ascii_whitespace()) {
        text.replace(|c: char| c.is_ascii_whitespace(), "_").into()
    } else {
        text.into()
    }
}

/// A stored response with what the policy worked out about its freshness when storing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers as the upstream sent them, without hop-by-hop fields.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the response was received (RFC 9111 §4.2.3 `response_time`), on the wall clock:
    /// gateway processes sharing a Redis must agree on the time within a second or so.
    pub response_time: SystemTime,
    /// Its age when received (`corrected_initial_age`).
    pub initial_age: Duration,
    /// How long it is fresh, counted in age (RFC 9111 §4.2.1).
    pub freshness: Duration,
    /// How long past freshness it may be served while it is revalidated in the background.
    pub stale_while_revalidate: Duration,
    /// How long past freshness it may be served when the upstream fails.
    pub stale_if_error: Duration,
    /// Whether it must never be served stale unless the upstream fails and `stale_if_error`
    /// allows (`must-revalidate`, `proxy-revalidate`, `s-maxage`, `no-cache`).
    pub must_revalidate: bool,
}

impl CachedResponse {
    /// Its age at `now` (RFC 9111 §4.2.3 `current_age`).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Memory it takes in a zone, roughly.
    fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 16).sum();
        self.body.len() + headers + 128
    }
}

/// What is stored under a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheRecord {
    /// The response.
    Response(Arc<CachedResponse>),
    /// The response varies by the request headers `names` (its `Vary`): each variant is stored
    /// under [`CacheKey::variant`] of a name made from `generation` and the headers' values.
    /// Removing this record (a purge, an invalidation) orphans every variant at once: the next
    /// record has a new generation, so the old variants are never found again and expire.
    Vary {
        /// The request headers.
        names: Arc<[HeaderName]>,
        /// Part of every variant's key.
        generation: u64,
    },
}

impl CacheRecord {
    fn weight(&self) -> usize {
        match self {
            CacheRecord::Response(response) => response.weight(),
            CacheRecord::Vary { names, .. } => names.iter().map(|name| name.as_str().len() + 16).sum::<usize>() + 32,
        }
    }
}

/// Which entries a purge removes: every entry of `route`, narrowed to one host and to one path
/// or the paths under a prefix. Every method, query and variant of a path goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeFilter {
    /// The route whose entries go.
    pub route: String,
    /// Only entries for this host (lower case, without port).
    pub host: Option<String>,
    /// Which paths.
    pub path: PathFilter,
}

/// The paths a [`PurgeFilter`] selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PathFilter {
    /// Every path.
    #[default]
    Any,
    /// This path exactly.
    Exact(String),
    /// Every path starting with this.
    Prefix(String),
}

impl PurgeFilter {
    /// Whether the filter selects `key`.
    pub fn selects(&self, key: &CacheKey) -> bool {
        *key.route == *self.route
            && self.host.as_deref().is_none_or(|host| *key.host == *host)
            && match &self.path {
                PathFilter::Any => true,
                PathFilter::Exact(path) => *key.path == **path,
                PathFilter::Prefix(prefix) => key.path.starts_with(prefix.as_str()),
            }
    }

    /// A Redis `SCAN MATCH` pattern selecting the same stored names (after the key prefix).
    fn pattern(&self) -> String {
        let host = self.host.as_deref().map_or_else(|| "*".to_owned(), |host| glob_escape(&without_spaces(host)));
        let path = match &self.path {
            PathFilter::Any => "*".to_owned(),
            PathFilter::Exact(path) => glob_escape(&without_spaces(path)),
            PathFilter::Prefix(prefix) => format!("{}*", glob_escape(&without_spaces(prefix))),
        };
        // Route ids are `[A-Za-z0-9._-]`; escaped all the same, as the filter comes from a request.
        format!("cache {} {host} {path} *", glob_escape(&self.route))
    }
}

/// Escapes the characters Redis glob patterns give a meaning to.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A store's answer: at once (memory), or after a round trip (Redis).
pub enum StoreCall<'a, T> {
    /// Answered.
    Ready(Result<T, StoreError>),
    /// Answered when the future completes.
    Pending(Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>),
}

impl<T> StoreCall<'_, T> {
    /// Resolves the answer.
    pub async fn resolve(self) -> Result<T, StoreError> {
        match self {
            StoreCall::Ready(result) => result,
            StoreCall::Pending(future) => future.await,
        }
    }
}

/// Where one `response_cache` policy keeps its responses. Cheap to clone.
#[derive(Clone, Debug)]
pub enum ResponseCacheStore {
    /// A memory zone of this process.
    Memory(Arc<MemoryZone>),
    /// Redis, shared by every gateway process configured with it.
    Redis(Arc<RedisStore>),
}

impl ResponseCacheStore {
    /// The store's name in metrics and logs: `memory`, `redis`.
    pub fn name(&self) -> &'static str {
        match self {
            ResponseCacheStore::Memory(_) => "memory",
            ResponseCacheStore::Redis(_) => "redis",
        }
    }

    /// The record under `key`, if any and not expired.
    pub fn get(&self, key: &CacheKey) -> StoreCall<'static, Option<CacheRecord>> {
        match self {
            ResponseCacheStore::Memory(zone) => StoreCall::Ready(Ok(zone.get(key))),
            ResponseCacheStore::Redis(redis) => {
                let redis = redis.clone();
                let name = key.storage_name();
                StoreCall::Pending(Box::pin(async move {
                    match redis.cache_get(&name).await? {
                        None => Ok(None),
                        Some(bytes) => codec::decode(Bytes::from(bytes)).map(Some).map_err(|err| StoreError::Failed {
                            store: "redis",
                            reason: format!("unreadable cache entry: {err}"),
                        }),
                    }
                }))
            }
        }
    }

    /// Stores `record` under `key` for `ttl`, replacing what was there.
    pub fn put(&self, key: &CacheKey, record: CacheRecord, ttl: Duration) -> StoreCall<'static, ()> {
        match self {
            ResponseCacheStore::Memory(zone) => {
                zone.insert(key.clone(), record, ttl);
                StoreCall::Ready(Ok(()))
            }
            ResponseCacheStore::Redis(redis) => {
                let redis = redis.clone();
                let name = key.storage_name();
                let bytes = codec::encode(&record);
                StoreCall::Pending(Box::pin(async move { redis.cache_set(&name, &bytes, ttl).await }))
            }
        }
    }

    /// Removes the record under `key`; removing a `Vary` record orphans its variants.
    pub fn remove(&self, key: &CacheKey) -> StoreCall<'static, u64> {
        match self {
            ResponseCacheStore::Memory(zone) => StoreCall::Ready(Ok(zone.remove(key))),
            ResponseCacheStore::Redis(redis) => {
                let redis = redis.clone();
                let name = key.storage_name();
                StoreCall::Pending(Box::pin(async move { redis.cache_delete(&name).await }))
            }
        }
    }
}

/// Labels of `gantry_response_cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    /// `hit`, `miss`, `stale`, `revalidated`, `bypass`.
    status: &'static str,
}

/// A route id as a label value, shared with the exchange rather than copied per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RouteLabel(Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// What the response caches of one process share: memory zones, by name and bound, alive as
/// long as a policy uses them, and the counters of cache outcomes.
#[derive(Debug, Default)]
pub struct ResponseCaches {
    zones: Mutex<HashMap<(String, u64), Weak<MemoryZone>>>,
    vector_indexes: Mutex<HashMap<(String, usize), Weak<VectorIndex>>>,
    requests: Family<RequestLabels, Counter>,
}

impl ResponseCaches {
    /// The memory zone `name` bounded to `max_bytes`: the one policies already use, or a new
    /// empty one. A zone is named by both, so changing a bound starts an empty zone rather than
    /// resizing one that policies of the running configuration still use.
    pub fn memory_zone(&self, name: &str, max_bytes: u64) -> Arc<MemoryZone> {
        let mut zones = self.zones.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        zones.retain(|_, zone| zone.strong_count() > 0);
        let key = (name.to_owned(), max_bytes);
        if let Some(zone) = zones.get(&key).and_then(Weak::upgrade) {
            return zone;
        }
        let zone = Arc::new(MemoryZone::new(name, max_bytes));
        zones.insert(key, Arc::downgrade(&zone));
        zone
    }

    /// The vector index `name` of semantic caches, bounded to `max_entries`: shared like a
    /// memory zone, by name and bound, and kept across reloads while a policy uses it.
    pub fn vector_index(&self, name: &str, max_entries: usize) -> Arc<VectorIndex> {
        let mut indexes = self.vector_indexes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        indexes.retain(|_, index| index.strong_count() > 0);
        let key = (name.to_owned(), max_entries);
        if let Some(index) = indexes.get(&key).and_then(Weak::upgrade) {
            return index;
        }
        let index = Arc::new(VectorIndex::new(max_entries));
        indexes.insert(key, Arc::downgrade(&index));
        index
    }

    /// The memory zones some policy uses now.
    pub fn live_zones(&self) -> Vec<Arc<MemoryZone>> {
        let zones = self.zones.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        zones.values().filter_map(Weak::upgrade).collect()
    }

    /// Counts one request of `route` that the cache answered or passed with `status`
    /// (`hit`, `miss`, `stale`, `revalidated`, `bypass`).
    pub fn count(&self, route: &Arc<str>, status: &'static str) {
        self.requests.get_or_create(&RequestLabels { route: RouteLabel(route.clone()), status }).inc();
    }

    /// How many requests of `route` were counted with `status`.
    pub fn counted(&self, route: &str, status: &'static str) -> u64 {
        self.requests.get_or_create(&RequestLabels { route: RouteLabel(route.into()), status }).get()
    }
}

/// The memory store of some [`Stores`], and their response caches.
type CachesOfStores = (Weak<MemoryStore>, Arc<ResponseCaches>);

/// The [`ResponseCaches`] of each [`Stores`], found by the identity of its memory store, so that
/// they live exactly as long as the stores and every clone of them shares one.
// A side table rather than a field of `Stores`, whose constructor other stores' work changes.
static RESPONSE_CACHES: LazyLock<Mutex<Vec<CachesOfStores>>> = LazyLock::new(|| Mutex::new(Vec::new()));

impl Stores {
    /// The response caches of these stores: created on first use, shared by every clone.
    pub fn response_caches(&self) -> Arc<ResponseCaches> {
        let mut table = RESPONSE_CACHES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        table.retain(|(memory, _)| memory.strong_count() > 0);
        if let Some((_, caches)) =
            table.iter().find(|(memory, _)| std::ptr::eq(memory.as_ptr(), Arc::as_ptr(&self.memory)))
        {
            return caches.clone();
        }
        let caches = Arc::new(ResponseCaches::default());
        table.push((Arc::downgrade(&self.memory), caches.clone()));
        caches
    }

    /// The Redis store for response caches, when `node.stores.redis` is configured.
    pub fn response_cache_redis(&self) -> Option<ResponseCacheStore> {
        self.redis.clone().map(ResponseCacheStore::Redis)
    }

    /// Removes what `filter` selects from every memory zone in use and from Redis (when
    /// configured); returns how many entries went. Memory zones are this process's only: other
    /// gateway processes keep theirs.
    pub async fn purge_response_caches(&self, filter: &PurgeFilter) -> Result<u64, StoreError> {
        let mut purged = 0;
        for zone in self.response_caches().live_zones() {
            purged += zone.purge(filter);
        }
        if let Some(redis) = &self.redis {
            purged += redis.cache_purge(&filter.pattern()).await?;
        }
        Ok(purged)
    }

    /// Registers `gantry_response_cache_requests_total` in `registry`.
    pub fn register_response_cache_metrics(&self, registry: &mut Registry) {
        registry.register(
            "gantry_response_cache_requests",
            "Requests on routes with a response cache, by route and cache status (hit, miss, stale, revalidated, bypass)",
            self.response_caches().requests.clone(),
        );
    }
}

#[cfg(test)]
mod tests;
