//! The stores against their contract: exact counts under concurrency, expiry, and the Redis
//! store against a real `redis-server` deciding like the memory store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gantry_config::{FieldPath, RedisSpec};
use gantry_testkit::redis::RedisServer;

use super::*;

fn redis_spec(url: &str) -> RedisSpec {
    RedisSpec {
        urls: vec![url.to_owned()],
        cluster: false,
        username: None,
        password: None,
        pool_size: 2,
        timeout: gantry_config::Duration::from_millis(500),
        connect_timeout: gantry_config::Duration::from_millis(500),
        key_prefix: "test:".to_owned(),
    }
}

fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::new(&redis_spec(&server.url()), &FieldPath::root()).expect("valid settings")
}

fn errors_of(spec: &RedisSpec) -> Vec<String> {
    match RedisStore::new(spec, &FieldPath::root().key("redis")) {
        Ok(_) => panic!("settings accepted that should be rejected: {:?}", spec.urls),
        Err(errors) => errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect(),
    }
}

#[test]
fn memory_store_admits_exactly_the_limit_to_many_threads_at_once() {
    let store = Arc::new(MemoryStore::default());
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, admitted) = (store.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    let hit = store.fixed_window_hit("one-key", Duration::from_secs(60), 5_000, 1);
                    let Hit::Ready(Ok(decision)) = hit else { panic!("the memory store decides at once") };
                    if decision.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 5_000, "16 000 attempts against a limit of 5 000");
}

#[test]
fn memory_store_keeps_keys_apart() {
    let store = MemoryStore::default();
    let decide = |key: &str| match store.gcra_hit(key, Duration::from_secs(1), 1, 1) {
        Hit::Ready(Ok(decision)) => decision.allowed,
        _ => panic!("the memory store decides at once"),
    };
    assert!(decide("a"));
    assert!(!decide("a"));
    assert!(decide("b"), "another key has its own allowance");
}

#[test]
fn memory_store_forgets_expired_keys() {
    let clock = ManualClock::default();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let hit = |key: &str| {
        let _ = store.fixed_window_hit(key, Duration::from_secs(1), 1, 1);
    };
    // Enough keys that every shard sweeps at least once after they expired.
    let keys = memory::SWEEP_EVERY as usize * 256;
    for i in 0..keys {
        hit(&format!("old-{i}"));
    }
    assert_eq!(store.len(), keys);
    clock.advance(Duration::from_secs(2));
    for i in 0..keys {
        hit(&format!("new-{i}"));
    }
    assert!(store.len() < keys * 2, "expired keys were swept: {} held", store.len());
    // An expired key counts as new even before it is swept.
    let decision = match store.fixed_window_hit("new-0", Duration::from_secs(1), 1, 1) {
        Hit::Ready(Ok(decision)) => decision,
        _ => panic!("the memory store decides at once"),
    };
    assert!(!decision.allowed, "new-0 is still in its window");
    clock.advance(Duration::from_secs(2));
    let Hit::Ready(Ok(decision)) = store.fixed_window_hit("new-0", Duration::from_secs(1), 1, 1) else {
        panic!("the memory store decides at once")
    };
    assert!(decision.allowed, "its window has ended");
}

#[test]
fn stores_without_node_settings_have_only_memory() {
    let stores = Stores::from_node(None).expect("no settings is valid");
    assert_eq!(stores.memory().name(), "memory");
    assert!(stores.redis().is_none());
}

#[test]
fn rejects_credentials_in_a_redis_url_without_repeating_them() {
    let errors = errors_of(&redis_spec("redis://user:hunter2-secret@127.0.0.1:6379"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("redis.urls[0]: "), "{errors:?}");
    assert!(errors[0].contains("`username` and `password`"), "{errors:?}");
    assert!(!errors[0].contains("hunter2"), "{errors:?}");
}

#[test]
fn rejects_unusable_redis_settings_at_their_paths() {
    let mut spec = redis_spec("http://127.0.0.1:6379");
    spec.pool_size = 0;
    let errors = errors_of(&spec);
    assert!(errors.iter().any(|e| e.starts_with("redis.urls[0]: not a Redis URL")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("redis.pool_size: ")), "{errors:?}");

    let mut spec = redis_spec("redis://127.0.0.1:1");
    spec.urls.push("redis://127.0.0.1:2".to_owned());
    let errors = errors_of(&spec);
    assert!(errors.iter().any(|e| e.starts_with("redis.urls: ") && e.contains("cluster: true")), "{errors:?}");

    let mut spec = redis_spec("redis://127.0.0.1:1");
    spec.urls.clear();
    assert!(errors_of(&spec).iter().any(|e| e.starts_with("redis.urls: ")));
}

#[tokio::test]
async fn redis_store_decides_like_the_memory_store() {
    let server = RedisServer::start();
    let redis = redis_store(&server);
    let memory = MemoryStore::default();
    let window = Duration::from_secs(60);
    for store in [&redis as &dyn CounterStore, &memory] {
        let mut fixed = Vec::new();
        let mut sliding = Vec::new();
        let mut gcra = Vec::new();
        for _ in 0..5 {
            fixed.push(store.fixed_window_hit("fixed", window, 3, 1).resolve().await.expect("decided"));
            sliding.push(store.sliding_window_hit("sliding", window, 3, 1).resolve().await.expect("decided"));
            gcra.push(store.gcra_hit("gcra", Duration::from_secs(20), 3, 1).resolve().await.expect("decided"));
        }
        let name = store.name();
        for decisions in [&fixed, &sliding, &gcra] {
            let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
            assert_eq!(allowed, [true, true, true, false, false], "{name}: {decisions:?}");
            let remaining: Vec<u64> = decisions.iter().map(|d| d.remaining).collect();
            assert_eq!(remaining, [2, 1, 0, 0, 0], "{name}: {decisions:?}");
        }
        // Times differ by the microseconds between calls; they must be close to the exact ones.
        let close =
            |actual: Duration, expected: Duration| actual <= expected && expected - actual < Duration::from_secs(2);
        assert!(close(fixed[3].retry_after, window), "{name}: {:?}", fixed[3]);
        assert!(close(gcra[2].reset_after, Duration::from_secs(60)), "{name}: {:?}", gcra[2]);
        assert!(close(gcra[3].retry_after, Duration::from_secs(20)), "{name}: {:?}", gcra[3]);
        // Into the next window, until the 3 counted now weigh 2: a third of it.
        assert!(close(sliding[3].retry_after, Duration::from_secs(80)), "{name}: {:?}", sliding[3]);
    }
    // The counters live under the prefix, with a TTL so Redis forgets them.
    let ttl = server.command(&["PTTL", "test:fixed"]);
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().expect("PTTL answers an integer");
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
}

#[tokio::test]
async fn redis_store_admits_exactly_the_limit_to_concurrent_callers() {
    let server = RedisServer::start();
    let store = Arc::new(redis_store(&server));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..50 {
                    let hit = store.fixed_window_hit("shared", Duration::from_secs(60), 300, 1);
                    if hit.resolve().await.expect("decided").allowed {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.expect("task");
    }
    assert_eq!(admitted, 300, "800 attempts against a limit of 300");
}

#[tokio::test]
async fn redis_store_reloads_its_scripts_after_the_server_forgot_them() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let first = store.gcra_hit("k", Duration::from_secs(1), 2, 1).resolve().await.expect("decided");
    assert!(first.allowed);
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).trim(), "+OK");
    let second = store.gcra_hit("k", Duration::from_secs(1), 2, 1).resolve().await.expect("NOSCRIPT is handled");
    assert!(second.allowed);
    assert_eq!(second.remaining, 0, "the state survived, only the script was reloaded");
}

#[tokio::test]
async fn redis_store_reports_an_unreachable_server_quickly_and_recovers() {
    let mut server = RedisServer::start();
    let store = redis_store(&server);
    assert!(store.fixed_window_hit("k", Duration::from_secs(60), 10, 1).resolve().await.expect("up").allowed);
    server.stop();
    let started = std::time::Instant::now();
    let err = store.fixed_window_hit("k", Duration::from_secs(60), 10, 1).resolve().await.expect_err("Redis is down");
    assert!(
        matches!(err, StoreError::Unavailable { store: "redis", .. } | StoreError::Timeout { store: "redis", .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    server.restart();
    gantry_testkit::eventually("the store to reconnect", || async {
        store.fixed_window_hit("k", Duration::from_secs(60), 10, 1).resolve().await.ok()
    })
    .await;
}

#[tokio::test]
async fn a_redis_store_whose_server_never_came_up_fails_fast_between_attempts() {
    let spec = redis_spec("redis://127.0.0.1:1");
    let store = RedisStore::new(&spec, &FieldPath::root()).expect("valid settings");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let err = store.gcra_hit("k", Duration::from_secs(1), 1, 1).resolve().await.expect_err("nothing listens");
        assert!(matches!(err, StoreError::Unavailable { .. } | StoreError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_redis_cluster_store_counts_each_key_exactly_on_the_node_owning_its_slot() {
    let cluster = gantry_testkit::redis::RedisCluster::start(3);
    let mut spec = redis_spec("unused");
    spec.urls = cluster.urls();
    spec.cluster = true;
    let store = Arc::new(RedisStore::new(&spec, &FieldPath::root()).expect("valid cluster settings"));
    // 30 keys spread over the slots, 8 concurrent callers each trying 5 times per key: 40
    // attempts per key against a limit of 3.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut admitted = vec![0u32; 30];
                for _ in 0..5 {
                    for (key, count) in admitted.iter_mut().enumerate() {
                        let key = format!("tenant-{key}");
                        let decision = store.fixed_window_hit(&key, Duration::from_secs(60), 3, 1).resolve().await;
                        *count += u32::from(decision.expect("the cluster decides").allowed);
                    }
                }
                admitted
            })
        })
        .collect();
    let mut totals = vec![0u32; 30];
    for task in tasks {
        for (total, admitted) in totals.iter_mut().zip(task.await.expect("task")) {
            *total += admitted;
        }
    }
    assert!(totals.iter().all(|&total| total == 3), "{totals:?}");
    let holding = cluster.nodes().iter().filter(|node| node.command(&["DBSIZE"]).trim() != ":0").count();
    assert_eq!(holding, 3, "the keys are spread over every node");

    // A node that forgot the scripts loads them again.
    for node in cluster.nodes() {
        assert_eq!(node.command(&["SCRIPT", "FLUSH"]).trim(), "+OK");
    }
    let decision = store.gcra_hit("after-flush", Duration::from_secs(1), 1, 1).resolve().await;
    assert!(decision.expect("NOSCRIPT is handled in a cluster too").allowed);
}

fn decided(hit: Hit<'_>) -> Decision {
    match hit {
        Hit::Ready(Ok(decision)) => decision,
        _ => panic!("the memory store decides at once"),
    }
}

#[test]
fn memory_store_counts_a_period_until_its_end_plus_the_grace() {
    let clock = ManualClock::default();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let ends_in = Duration::from_secs(3_600);
    let key = "quota:day:2026-12-03:alice";
    let decisions: Vec<Decision> = (0..3).map(|_| decided(store.period_hit(key, ends_in, 2, 1))).collect();
    assert_eq!(decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(), [true, true, false]);
    assert_eq!(decisions[2].retry_after, ends_in);
    assert!(decided(store.period_hit("quota:day:2026-12-04:alice", ends_in, 2, 1)).allowed, "the next period");

    // A node whose clock is behind still finds the count after the period ended elsewhere.
    clock.advance(ends_in + PERIOD_GRACE - Duration::from_secs(1));
    assert!(!decided(store.period_hit(key, Duration::from_secs(1), 2, 1)).allowed);
    clock.advance(Duration::from_secs(2));
    assert!(decided(store.period_hit(key, Duration::from_secs(1), 2, 1)).allowed, "forgotten after the grace");
}

#[tokio::test]
async fn redis_store_counts_a_period_like_the_memory_store_and_keeps_it_past_its_end() {
    let server = RedisServer::start();
    let redis = redis_store(&server);
    let memory = MemoryStore::default();
    let ends_in = Duration::from_secs(7_200);
    for store in [&redis as &dyn CounterStore, &memory] {
        let mut decisions = Vec::new();
        for _ in 0..4 {
            decisions.push(store.period_hit("quota:2026-12-03:a", ends_in, 3, 1).resolve().await.expect("decided"));
        }
        let name = store.name();
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false], "{name}: {decisions:?}");
        let remaining: Vec<u64> = decisions.iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, [2, 1, 0, 0], "{name}: {decisions:?}");
        assert_eq!(decisions[3].retry_after, ends_in, "{name}: the caller's end, exactly");
        assert_eq!(decisions[0].reset_after, ends_in, "{name}");
        let costly = store.period_hit("quota:2026-12-03:b", ends_in, 3, 2).resolve().await.expect("decided");
        assert_eq!((costly.allowed, costly.remaining), (true, 1), "{name}: a cost of 2");
        let over = store.period_hit("quota:2026-12-03:b", ends_in, 3, 2).resolve().await.expect("decided");
        assert_eq!((over.allowed, over.remaining), (false, 1), "{name}: 2 more do not fit in 1");
    }
    assert_eq!(server.command(&["GET", "test:quota:2026-12-03:a"]).trim(), "$1\r\n3");
    let ttl = server.command(&["PTTL", "test:quota:2026-12-03:a"]);
    let ttl: u64 = ttl.trim().trim_start_matches(':').parse().expect("PTTL answers an integer");
    let kept = u64::try_from((ends_in + PERIOD_GRACE).as_millis()).expect("small");
    assert!(ttl <= kept && ttl > kept - 5_000, "kept until the end plus the grace: {ttl} ms");
}

/// Two stores on one server stand for two gateway processes.
#[tokio::test]
async fn redis_stores_of_two_processes_admit_exactly_a_periods_limit_together() {
    let server = RedisServer::start();
    let stores = [Arc::new(redis_store(&server)), Arc::new(redis_store(&server))];
    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let store = stores[index % 2].clone();
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..50 {
                    let hit = store.period_hit("quota:month:2026-12-01:shared", Duration::from_secs(86_400), 300, 1);
                    if hit.resolve().await.expect("decided").allowed {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.expect("task");
    }
    assert_eq!(admitted, 300, "800 attempts against a limit of 300");
    assert_eq!(server.command(&["GET", "test:quota:month:2026-12-01:shared"]).trim(), "$3\r\n300");
}
