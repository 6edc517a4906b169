//! Prompt vectors of semantic caches (`ai_semantic_cache`): each stored answer's prompt as an
//! embedding vector, grouped by scope (route, model and, when configured, consumer), searched by
//! cosine similarity. The answers themselves live in a [`ResponseCacheStore`](super::ResponseCacheStore)
//! under ids the vectors point at.
//!
//! In memory a [`VectorIndex`] holds at most a given number of vectors over all its scopes, the
//! oldest going first. In Redis each scope is one list, newest first, trimmed to the bound and
//! expiring with its newest entry; a search reads the list and compares in the gateway. Both are
//! exact searches over every vector of the scope, fine for the thousands of entries such a
//! cache holds per model; a vector expires with the answer it points at.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::StoreCall;
use crate::RedisStore;

/// A stored vector close enough to the one searched for.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbour {
    /// The id the vector was stored with (its answer's).
    pub id: String,
    /// Cosine similarity to the vector searched for, from -1 to 1.
    pub similarity: f32,
}

/// The cosine similarity of two vectors; 0 when their lengths differ or either is all zeros.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut norm_a, mut norm_b) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    if norm_a == 0.0 || norm_b == 0.0 {
        return 0.0;
    }
    (dot / (norm_a.sqrt() * norm_b.sqrt())) as f32
}

/// One vector, its id and when it expires.
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    id: Box<str>,
    vector: Box<[f32]>,
    expires: SystemTime,
}

/// The closest of `candidates` to `vector`, at least `min_similarity`, best first, at most `limit`.
fn rank<'a>(
    candidates: impl Iterator<Item = &'a Stored>,
    vector: &[f32],
    min_similarity: f32,
    limit: usize,
    now: SystemTime,
) -> Vec<Neighbour> {
    let mut found: Vec<Neighbour> = candidates
        .filter(|stored| stored.expires > now)
        .filter_map(|stored| {
            let similarity = cosine_similarity(&stored.vector, vector);
            (similarity >= min_similarity).then(|| Neighbour { id: stored.id.to_string(), similarity })
        })
        .collect();
    found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    found.truncate(limit);
    found
}

#[derive(Debug, Default)]
struct IndexState {
    scopes: HashMap<Arc<str>, VecDeque<Stored>>,
    /// The scope of every stored vector, oldest first: the oldest vector overall is the first of
    /// the first scope named here.
    order: VecDeque<Arc<str>>,
}

/// Vectors in this process's memory, at most `max_entries` over all scopes; the oldest go first.
#[derive(Debug)]
pub struct VectorIndex {
    max_entries: usize,
    state: Mutex<IndexState>,
}

impl VectorIndex {
    /// An empty index holding at most `max_entries` vectors (at least one).
    pub fn new(max_entries: usize) -> Self {
        Self { max_entries: max_entries.max(1), state: Mutex::new(IndexState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `vector` under `id` to `scope` for `ttl`, evicting the oldest vectors past the bound.
    pub fn add(&self, scope: &str, id: &str, vector: &[f32], ttl: Duration) {
        let stored = Stored { id: id.into(), vector: vector.into(), expires: SystemTime::now() + ttl };
        let mut state = self.lock();
        let scope: Arc<str> = match state.scopes.get_key_value(scope) {
            Some((known, _)) => known.clone(),
            None => Arc::from(scope),
        };
        state.scopes.entry(scope.clone()).or_default().push_back(stored);
        state.order.push_back(scope);
        while state.order.len() > self.max_entries {
            let Some(oldest) = state.order.pop_front() else { break };
            if let Some(vectors) = state.scopes.get_mut(&oldest) {
                vectors.pop_front();
                if vectors.is_empty() {
                    state.scopes.remove(&oldest);
                }
            }
        }
    }

    /// The vectors of `scope` at least `min_similarity` to `vector`, best first, at most `limit`.
    pub fn nearest(&self, scope: &str, vector: &[f32], min_similarity: f32, limit: usize) -> Vec<Neighbour> {
        let state = self.lock();
        let Some(vectors) = state.scopes.get(scope) else { return Vec::new() };
        rank(vectors.iter(), vector, min_similarity, limit, SystemTime::now())
    }

    /// How many vectors it holds, expired ones included until they are evicted.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when it holds no vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where one semantic cache keeps its prompt vectors. Cheap to clone.
#[derive(Clone, Debug)]
pub enum VectorStore {
    /// This process's memory.
    Memory(Arc<VectorIndex>),
    /// Redis, shared by every gateway process configured with it.
    Redis {
        /// The store.
        redis: Arc<RedisStore>,
        /// Vectors kept per scope at most, the newest.
        max_entries: usize,
    },
}

impl VectorStore {
    /// The store's name in metrics and logs: `memory`, `redis`.
    pub fn name(&self) -> &'static str {
        match self {
            VectorStore::Memory(_) => "memory",
            VectorStore::Redis { .. } => "redis",
        }
    }

    /// Adds `vector` under `id` to `scope` for `ttl`.
    pub fn add(&self, scope: &str, id: &str, vector: &[f32], ttl: Duration) -> StoreCall<'static, ()> {
        match self {
            VectorStore::Memory(index) => {
                index.add(scope, id, vector, ttl);
                StoreCall::Ready(Ok(()))
            }
            VectorStore::Redis { redis, max_entries } => {
                let (redis, max_entries) = (redis.clone(), *max_entries);
                let name = storage_name(scope);
                let bytes = encode(&Stored { id: id.into(), vector: vector.into(), expires: SystemTime::now() + ttl });
                StoreCall::Pending(Box::pin(async move { redis.list_push(&name, &bytes, max_entries, ttl).await }))
            }
        }
    }

    /// The vectors of `scope` at least `min_similarity` to `vector`, best first, at most `limit`.
    pub fn nearest(
        &self,
        scope: &str,
        vector: &[f32],
        min_similarity: f32,
        limit: usize,
    ) -> StoreCall<'static, Vec<Neighbour>> {
        match self {
            VectorStore::Memory(index) => StoreCall::Ready(Ok(index.nearest(scope, vector, min_similarity, limit))),
            VectorStore::Redis { redis, max_entries } => {
                let (redis, max_entries) = (redis.clone(), *max_entries);
                let name = storage_name(scope);
                let vector = vector.to_vec();
                StoreCall::Pending(Box::pin(async move {
                    let items = redis.list_range(&name, max_entries).await?;
                    // An entry that cannot be read (another version's) is passed over.
                    let stored: Vec<Stored> = items.iter().filter_map(|item| decode(item)).collect();
                    Ok(rank(stored.iter(), &vector, min_similarity, limit, SystemTime::now()))
                }))
            }
        }
    }
}

/// The list of a scope in Redis, after the configured prefix.
fn storage_name(scope: &str) -> String {
    format!("semantic {}", scope.replace(|c: char| c.is_ascii_whitespace(), "_"))
}

/// Expiry (milliseconds since the epoch, 8 bytes big-endian), the id's length (1 byte), the id,
/// then the vector's numbers (4 bytes little-endian each).
fn encode(stored: &Stored) -> Vec<u8> {
    let millis =
        stored.expires.duration_since(UNIX_EPOCH).map_or(0, |at| u64::try_from(at.as_millis()).unwrap_or(u64::MAX));
    let id = &stored.id.as_bytes()[..stored.id.len().min(255)];
    let mut bytes = Vec::with_capacity(9 + id.len() + stored.vector.len() * 4);
    bytes.extend_from_slice(&millis.to_be_bytes());
    bytes.push(id.len() as u8);
    bytes.extend_from_slice(id);
    for number in &*stored.vector {
        bytes.extend_from_slice(&number.to_le_bytes());
    }
    bytes
}

fn decode(bytes: &[u8]) -> Option<Stored> {
    let millis = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let id_len = usize::from(*bytes.get(8)?);
    let id = std::str::from_utf8(bytes.get(9..9 + id_len)?).ok()?;
    let numbers = bytes.get(9 + id_len..)?;
    if numbers.len() % 4 != 0 {
        return None;
    }
    let vector: Box<[f32]> =
        numbers.chunks_exact(4).map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])).collect();
    Some(Stored { id: id.into(), vector, expires: UNIX_EPOCH + Duration::from_millis(millis) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_similarity_of_same_opposite_and_unrelated_vectors() {
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert!((cosine_similarity(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[1.0]), 0.0, "lengths differ");
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn finds_the_nearest_vectors_of_a_scope_above_the_threshold() {
        let index = VectorIndex::new(10);
        let ttl = Duration::from_secs(60);
        index.add("gpt", "a", &[1.0, 0.0, 0.0], ttl);
        index.add("gpt", "b", &[0.9, 0.1, 0.0], ttl);
        index.add("gpt", "c", &[0.0, 0.0, 1.0], ttl);
        index.add("other", "d", &[1.0, 0.0, 0.0], ttl);
        let found = index.nearest("gpt", &[1.0, 0.0, 0.0], 0.5, 5);
        let ids: Vec<&str> = found.iter().map(|neighbour| neighbour.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "best first; `c` is too far; `d` is another scope's");
        assert!((found[0].similarity - 1.0).abs() < 1e-6);
        assert_eq!(index.nearest("gpt", &[1.0, 0.0, 0.0], 0.5, 1).len(), 1, "limit");
        assert!(index.nearest("none", &[1.0, 0.0, 0.0], 0.0, 5).is_empty());
    }

    #[test]
    fn evicts_the_oldest_vectors_over_all_scopes_past_the_bound() {
        let index = VectorIndex::new(3);
        let ttl = Duration::from_secs(60);
        index.add("x", "x1", &[1.0, 0.0], ttl);
        index.add("y", "y1", &[1.0, 0.0], ttl);
        index.add("x", "x2", &[1.0, 0.0], ttl);
        index.add("y", "y2", &[1.0, 0.0], ttl);
        assert_eq!(index.len(), 3);
        let ids = |scope: &str| -> Vec<String> {
            let mut ids: Vec<String> =
                index.nearest(scope, &[1.0, 0.0], 0.0, 10).into_iter().map(|neighbour| neighbour.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids("x"), ["x2"], "x1 was the oldest");
        assert_eq!(ids("y"), ["y1", "y2"]);
    }

    #[test]
    fn leaves_out_expired_vectors() {
        let index = VectorIndex::new(10);
        index.add("gpt", "old", &[1.0, 0.0], Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        assert!(index.nearest("gpt", &[1.0, 0.0], 0.0, 5).is_empty());
    }

    #[test]
    fn stored_vectors_read_back_as_written() {
        let stored = Stored {
            id: "0123abcd".into(),
            vector: vec![0.5, -1.25, 3.0].into(),
            expires: UNIX_EPOCH + Duration::from_millis(1_767_225_600_123),
        };
        assert_eq!(decode(&encode(&stored)), Some(stored));
        assert_eq!(decode(b"short"), None);
    }
}
