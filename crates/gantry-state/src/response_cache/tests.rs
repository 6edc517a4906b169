//! Response cache stores: memory zones (bound, expiry, sharing across reloads, purges) and the
//! Redis store against a real `redis-server`.

use std::time::{Duration, UNIX_EPOCH};

use gantry_config::{FieldPath, RedisSpec};
use gantry_testkit::redis::RedisServer;
use http::HeaderValue;

use super::*;

fn key(path: &str, digest: &str) -> CacheKey {
    CacheKey::new(Arc::from("products"), "shop.example", path, digest)
}

fn response(body: &'static [u8]) -> CacheRecord {
    let mut headers = HeaderMap::new();
    headers.insert("etag", HeaderValue::from_static("\"v1\""));
    CacheRecord::Response(Arc::new(CachedResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::from_static(body),
        response_time: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        initial_age: Duration::ZERO,
        freshness: Duration::from_secs(60),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        must_revalidate: false,
    }))
}

fn ready<T>(call: StoreCall<'_, T>) -> T {
    match call {
        StoreCall::Ready(result) => result.expect("memory never fails"),
        StoreCall::Pending(_) => panic!("a memory zone answers at once"),
    }
}

fn redis_stores(server: &RedisServer) -> Stores {
    let spec = RedisSpec {
        urls: vec![server.url()],
        cluster: false,
        username: None,
        password: None,
        pool_size: 2,
        timeout: gantry_config::Duration::from_millis(1000),
        connect_timeout: gantry_config::Duration::from_millis(1000),
        key_prefix: "test:".to_owned(),
    };
    let redis = RedisStore::new(&spec, &FieldPath::root()).expect("valid settings");
    Stores { redis: Some(Arc::new(redis)), ..Stores::in_memory() }
}

#[test]
fn keeps_a_response_until_its_time_to_live_ends() {
    let store = ResponseCacheStore::Memory(Arc::new(MemoryZone::new("test", 1 << 20)));
    ready(store.put(&key("/a", "d1"), response(b"a"), Duration::from_millis(150)));
    assert_eq!(ready(store.get(&key("/a", "d1"))), Some(response(b"a")));
    assert_eq!(ready(store.get(&key("/a", "d2"))), None, "another digest is another key");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ready(store.get(&key("/a", "d1"))), None, "expired");
}

#[test]
fn bounds_a_zone_by_the_bytes_of_its_entries() {
    static BODY: [u8; 10_000] = [b'x'; 10_000];
    let zone = MemoryZone::new("small", 100_000);
    for index in 0..50 {
        zone.insert(key(&format!("/{index}"), "d"), response(&BODY), Duration::from_secs(60));
    }
    let kept = zone.weighted_size();
    assert!(kept <= 100_000, "{kept} bytes kept in a zone of 100 000");
    assert!(kept >= 50_000, "the zone is used, not emptied: {kept} bytes");
}

#[test]
fn removing_a_key_leaves_its_neighbours() {
    let store = ResponseCacheStore::Memory(Arc::new(MemoryZone::new("test", 1 << 20)));
    ready(store.put(&key("/a", "d1"), response(b"a"), Duration::from_secs(60)));
    ready(store.put(&key("/a", "d2"), response(b"b"), Duration::from_secs(60)));
    assert_eq!(ready(store.remove(&key("/a", "d1"))), 1);
    assert_eq!(ready(store.get(&key("/a", "d1"))), None);
    assert_eq!(ready(store.get(&key("/a", "d2"))), Some(response(b"b")));
}

#[test]
fn purges_by_route_host_exact_path_and_prefix() {
    let zone = MemoryZone::new("test", 1 << 20);
    let other_route = CacheKey::new(Arc::from("orders"), "shop.example", "/products/1", "d");
    let other_host = CacheKey::new(Arc::from("products"), "admin.example", "/products/1", "d");
    for stored in [key("/products/1", "d"), key("/products/1", "d.v"), key("/products/2", "d"), key("/about", "d")] {
        zone.insert(stored, response(b"x"), Duration::from_secs(60));
    }
    zone.insert(other_route.clone(), response(b"x"), Duration::from_secs(60));
    zone.insert(other_host.clone(), response(b"x"), Duration::from_secs(60));

    let exact = PurgeFilter {
        route: "products".to_owned(),
        host: Some("shop.example".to_owned()),
        path: PathFilter::Exact("/products/1".to_owned()),
    };
    assert_eq!(zone.purge(&exact), 2, "the path's entry and its variant");
    assert!(zone.get(&key("/products/2", "d")).is_some());
    assert!(zone.get(&other_host).is_some(), "another host keeps its entry");

    let prefix =
        PurgeFilter { route: "products".to_owned(), host: None, path: PathFilter::Prefix("/products/".to_owned()) };
    assert_eq!(zone.purge(&prefix), 2, "/products/2 on shop.example and /products/1 on admin.example");
    assert!(zone.get(&key("/about", "d")).is_some());
    assert!(zone.get(&other_route).is_some(), "another route is never touched");

    let everything = PurgeFilter { route: "products".to_owned(), ..PurgeFilter::default() };
    assert_eq!(zone.purge(&everything), 1);
    assert!(zone.get(&other_route).is_some());
}

#[test]
fn hands_out_one_zone_per_name_and_bound_while_a_policy_holds_it() {
    let stores = Stores::in_memory();
    let first = stores.response_caches().memory_zone("default", 1 << 20);
    let again = stores.clone().response_caches().memory_zone("default", 1 << 20);
    assert!(Arc::ptr_eq(&first, &again), "a reload finds the zone the running policies use");
    let resized = stores.response_caches().memory_zone("default", 2 << 20);
    assert!(!Arc::ptr_eq(&first, &resized), "another bound is another zone");
    assert_eq!(stores.response_caches().live_zones().len(), 2);
    drop((first, again));
    assert_eq!(stores.response_caches().live_zones().len(), 1, "a zone no policy holds is gone");

    let other = Stores::in_memory();
    assert!(
        !Arc::ptr_eq(&other.response_caches(), &stores.response_caches()),
        "other stores (another gateway in the same test process) have their own caches"
    );
}

#[test]
fn counts_requests_by_route_and_status() {
    let stores = Stores::in_memory();
    let route: Arc<str> = Arc::from("products");
    stores.response_caches().count(&route, "hit");
    stores.response_caches().count(&route, "hit");
    stores.response_caches().count(&route, "miss");
    assert_eq!(stores.response_caches().counted("products", "hit"), 2);
    assert_eq!(stores.response_caches().counted("products", "miss"), 1);
    let mut registry = Registry::default();
    stores.register_response_cache_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    assert!(text.contains("gantry_response_cache_requests_total{route=\"products\",status=\"hit\"} 2"), "{text}");
}

#[test]
fn writes_purge_patterns_that_match_only_the_selected_names() {
    let filter = PurgeFilter {
        route: "products".to_owned(),
        host: Some("shop.example".to_owned()),
        path: PathFilter::Prefix("/a*b[1]/".to_owned()),
    };
    assert_eq!(filter.pattern(), "cache products shop.example /a\\*b\\[1\\]/* *");
    let any = PurgeFilter { route: "products".to_owned(), ..PurgeFilter::default() };
    assert_eq!(any.pattern(), "cache products * * *");
}

#[tokio::test]
async fn redis_keeps_responses_with_their_time_to_live_and_purges_by_prefix() {
    let server = RedisServer::start();
    let stores = redis_stores(&server);
    let store = stores.response_cache_redis().expect("redis configured");
    assert_eq!(store.get(&key("/products/1", "d")).resolve().await, Ok(None));

    store.put(&key("/products/1", "d"), response(b"one"), Duration::from_secs(60)).resolve().await.expect("stored");
    store.put(&key("/products/2", "d"), response(b"two"), Duration::from_millis(300)).resolve().await.expect("stored");
    let names: Arc<[HeaderName]> = Arc::from(vec![HeaderName::from_static("accept-language")]);
    let vary = CacheRecord::Vary { names, generation: 7 };
    store.put(&key("/about", "d"), vary.clone(), Duration::from_secs(60)).resolve().await.expect("stored");

    assert_eq!(store.get(&key("/products/1", "d")).resolve().await, Ok(Some(response(b"one"))));
    assert_eq!(store.get(&key("/about", "d")).resolve().await, Ok(Some(vary)));
    let ttl = server.command(&["PTTL", "test:cache products shop.example /products/1 d"]);
    let ttl: u64 = ttl.trim_start_matches(':').trim().parse().expect("a number of milliseconds");
    assert!((59_000..=60_000).contains(&ttl), "the key expires with the entry: {ttl} ms");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.get(&key("/products/2", "d")).resolve().await, Ok(None), "expired in Redis");

    store.put(&key("/products/2", "d"), response(b"two"), Duration::from_secs(60)).resolve().await.expect("stored");
    let filter =
        PurgeFilter { route: "products".to_owned(), host: None, path: PathFilter::Prefix("/products/".to_owned()) };
    assert_eq!(stores.purge_response_caches(&filter).await, Ok(2));
    assert_eq!(store.get(&key("/products/1", "d")).resolve().await, Ok(None));
    assert!(store.get(&key("/about", "d")).resolve().await.expect("answers").is_some(), "outside the prefix");
    assert_eq!(store.remove(&key("/about", "d")).resolve().await, Ok(1));
    assert_eq!(store.get(&key("/about", "d")).resolve().await, Ok(None));
}

#[tokio::test]
async fn redis_reports_an_unreadable_entry_as_a_failure() {
    let server = RedisServer::start();
    let store = redis_stores(&server).response_cache_redis().expect("redis configured");
    server.command(&["SET", "test:cache products shop.example /x d", "not a cache entry"]);
    let answer = store.get(&key("/x", "d")).resolve().await;
    assert!(matches!(answer, Err(StoreError::Failed { store: "redis", .. })), "{answer:?}");
}

#[tokio::test]
async fn redis_cluster_purges_on_every_primary() {
    let cluster = gantry_testkit::redis::RedisCluster::start(3);
    let spec = RedisSpec {
        urls: cluster.urls(),
        cluster: true,
        username: None,
        password: None,
        pool_size: 1,
        timeout: gantry_config::Duration::from_millis(2000),
        connect_timeout: gantry_config::Duration::from_millis(2000),
        key_prefix: "test:".to_owned(),
    };
    let redis = RedisStore::new(&spec, &FieldPath::root()).expect("valid settings");
    let stores = Stores { redis: Some(Arc::new(redis)), ..Stores::in_memory() };
    let store = stores.response_cache_redis().expect("redis configured");
    // Forty paths spread over the slots, so over the three primaries.
    for index in 0..40 {
        let stored = key(&format!("/products/{index}"), "d");
        store.put(&stored, response(b"x"), Duration::from_secs(60)).resolve().await.expect("stored");
    }
    store.put(&key("/about", "d"), response(b"x"), Duration::from_secs(60)).resolve().await.expect("stored");
    let holding: usize =
        cluster.nodes().iter().filter(|node| node.command(&["DBSIZE"]).trim_start_matches(':').trim() != "0").count();
    assert!(holding >= 2, "the keys are spread over several primaries");

    let filter =
        PurgeFilter { route: "products".to_owned(), host: None, path: PathFilter::Prefix("/products/".to_owned()) };
    assert_eq!(stores.purge_response_caches(&filter).await, Ok(40));
    assert_eq!(store.get(&key("/products/7", "d")).resolve().await, Ok(None));
    assert!(store.get(&key("/about", "d")).resolve().await.expect("answers").is_some());
}

#[tokio::test]
async fn redis_keeps_the_newest_vectors_of_each_scope_and_finds_the_nearest() {
    let server = RedisServer::start();
    let Some(ResponseCacheStore::Redis(redis)) = redis_stores(&server).response_cache_redis() else {
        panic!("redis configured");
    };
    let store = VectorStore::Redis { redis, max_entries: 2 };
    let ttl = Duration::from_secs(60);
    assert_eq!(store.nearest("ai gpt", &[1.0, 0.0], 0.0, 5).resolve().await, Ok(Vec::new()));
    store.add("ai gpt", "first", &[1.0, 0.0], ttl).resolve().await.expect("stored");
    store.add("ai gpt", "close", &[0.9, 0.1], ttl).resolve().await.expect("stored");
    store.add("ai gpt", "far", &[0.0, 1.0], ttl).resolve().await.expect("stored");
    store.add("ai other", "elsewhere", &[1.0, 0.0], ttl).resolve().await.expect("stored");

    let found = store.nearest("ai gpt", &[1.0, 0.0], 0.5, 5).resolve().await.expect("answers");
    let ids: Vec<&str> = found.iter().map(|neighbour| neighbour.id.as_str()).collect();
    assert_eq!(ids, ["close"], "`first` was trimmed off past the bound of 2; `far` is below 0.5");
    assert!(found[0].similarity > 0.99);
    assert_eq!(server.command(&["LLEN", "test:semantic ai_gpt"]).trim_start_matches(':').trim(), "2");
    let ttl = server.command(&["PTTL", "test:semantic ai_gpt"]);
    let ttl: u64 = ttl.trim_start_matches(':').trim().parse().expect("a number of milliseconds");
    assert!((59_000..=60_000).contains(&ttl), "the list expires with its newest vector: {ttl} ms");
}

#[test]
fn vector_indexes_are_shared_by_name_and_bound() {
    let caches = ResponseCaches::default();
    let index = caches.vector_index("ai", 10);
    index.add("s", "a", &[1.0], Duration::from_secs(60));
    assert_eq!(caches.vector_index("ai", 10).len(), 1, "the same index");
    assert!(caches.vector_index("ai", 20).is_empty(), "another bound starts an empty index");
}
