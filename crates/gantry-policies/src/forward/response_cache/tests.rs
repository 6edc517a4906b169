//! The cache's decisions through its hooks, with stores of its own per test: what is stored,
//! how entries answer, revalidation, stale answers, the lock and the settings' checks.

use std::time::Duration;

use gantry_policy_api::response_body::{take_background_request, take_response_body_action, ResponseBodyAction};
use gantry_policy_api::testing::{build_policy_error, build_policy_with_stores, exchange_from};
use gantry_policy_api::{Flow, Policy, RegisteredPolicy};
use gantry_state::Stores;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<ResponseCache>()
}

/// A cache built from `settings` with stores of its own.
fn cache(settings: &str) -> (Arc<dyn Policy>, Stores) {
    let stores = Stores::in_memory();
    let policy = build_policy_with_stores(entry(), settings, "", &stores).unwrap_or_else(|errors| panic!("{errors}"));
    (policy, stores)
}

fn get(path: &str, headers: &[(&'static str, &str)]) -> RequestParts {
    let mut builder = http::Request::get(path).header("host", "shop.example:8080");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn with_method(method: Method, path: &str) -> RequestParts {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

/// Runs the request hook: `Ok(answer)` when the cache answered, `Err(request)` with the
/// request as it goes upstream.
async fn request(
    policy: &dyn Policy,
    mut parts: RequestParts,
    exchange: &mut Exchange,
) -> Result<PolicyResponse, RequestParts> {
    match policy.on_request(&mut parts, exchange).resolve().await {
        Flow::Respond(response) => Ok(response),
        Flow::Continue => Err(parts),
    }
}

/// Runs the response hook on an upstream response, then streams `body` past whatever the
/// hook asked for; gives the head and the body the client gets.
fn respond(
    policy: &dyn Policy,
    exchange: &mut Exchange,
    status: u16,
    headers: &[(&'static str, &str)],
    body: &'static str,
) -> (ResponseParts, Bytes) {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut head = builder.body(()).expect("response").into_parts().0;
    policy.on_response(&mut head, exchange);
    let sent = match take_response_body_action(exchange) {
        None => Bytes::from_static(body.as_bytes()),
        Some(ResponseBodyAction::Replace(bytes)) => bytes,
        Some(ResponseBodyAction::Observe(mut observer)) => {
            let bytes = Bytes::from_static(body.as_bytes());
            for chunk in bytes.chunks(3) {
                observer.on_data(&Bytes::copy_from_slice(chunk));
            }
            observer.on_end();
            bytes
        }
    };
    (head, sent)
}

/// One whole exchange through the cache: the answer's status, cache status header and body.
async fn exchange_through(
    policy: &dyn Policy,
    parts: RequestParts,
    upstream: (u16, &[(&'static str, &str)], &'static str),
) -> (StatusCode, String, Bytes) {
    let mut exchange = exchange_from("127.0.0.1:40000");
    match request(policy, parts, &mut exchange).await {
        Ok(answer) => {
            let (mut head, body) = answer.into_parts();
            policy.on_response(&mut head, &mut exchange);
            (head.status, x_cache(&head.headers), body)
        }
        Err(_) => {
            let (head, body) = respond(policy, &mut exchange, upstream.0, upstream.1, upstream.2);
            (head.status, x_cache(&head.headers), body)
        }
    }
}

fn x_cache(headers: &HeaderMap) -> String {
    headers.get("x-cache").and_then(|value| value.to_str().ok()).unwrap_or("-").to_owned()
}

const CACHEABLE: (u16, &[(&str, &str)], &str) = (200, &[("cache-control", "max-age=60")], "catalogue");

#[tokio::test]
async fn stores_a_cacheable_response_and_answers_the_next_request_with_hit_and_age() {
    let (policy, stores) = cache("");
    let first = exchange_through(&*policy, get("/products?page=1", &[]), CACHEABLE).await;
    assert_eq!(first, (StatusCode::OK, "MISS".to_owned(), Bytes::from_static(b"catalogue")));

    let mut exchange = exchange_from("127.0.0.1:40000");
    let answer = request(&*policy, get("/products?page=1", &[]), &mut exchange).await.expect("answered from the cache");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.body(), "catalogue");
    assert_eq!(answer.headers()["x-cache"], "HIT");
    assert_eq!(answer.headers()["age"], "0");
    assert_eq!(answer.headers()["content-length"], "9");
    assert_eq!(answer.headers()["cache-control"], "max-age=60");

    let other_query = exchange_through(&*policy, get("/products?page=2", &[]), CACHEABLE).await;
    assert_eq!(other_query.1, "MISS", "the query is part of the key");
    assert_eq!(stores.response_caches().counted("test-route", "hit"), 1);
    assert_eq!(stores.response_caches().counted("test-route", "miss"), 2);
}

#[tokio::test]
async fn stores_nothing_the_upstream_or_the_request_forbids() {
    let (policy, _stores) = cache("default_ttl: 60s");
    let refused: [(&str, &[(&'static str, &str)]); 5] = [
        ("no-store", &[("cache-control", "no-store, max-age=60")]),
        ("private", &[("cache-control", "private, max-age=60")]),
        ("set-cookie", &[("cache-control", "max-age=60"), ("set-cookie", "session=1")]),
        ("vary-star", &[("cache-control", "max-age=60"), ("vary", "*")]),
        ("no-lifetime-302", &[]),
    ];
    for (path, headers) in refused {
        let status = if path == "no-lifetime-302" { 302 } else { 200 };
        let path = format!("/{path}");
        exchange_through(&*policy, get(&path, &[]), (status, headers, "x")).await;
        let again = exchange_through(&*policy, get(&path, &[]), (status, headers, "x")).await;
        assert_eq!(again.1, "MISS", "{path} must not be stored");
    }
    // Authorization: only shared when the upstream says so (RFC 9111 §3.5).
    let authorized = [("authorization", "Bearer abc")];
    exchange_through(&*policy, get("/mine", &authorized), CACHEABLE).await;
    assert_eq!(exchange_through(&*policy, get("/mine", &[]), CACHEABLE).await.1, "MISS");
    let public = (200, &[("cache-control", "public, max-age=60")][..], "shared");
    exchange_through(&*policy, get("/shared", &authorized), public).await;
    assert_eq!(exchange_through(&*policy, get("/shared", &[]), public).await.1, "HIT");
    // A request that says no-store is passed by.
    let bypass = exchange_through(&*policy, get("/nostore", &[("cache-control", "no-store")]), CACHEABLE).await;
    assert_eq!(bypass.1, "BYPASS");
    assert_eq!(exchange_through(&*policy, get("/nostore", &[]), CACHEABLE).await.1, "MISS");
    assert_eq!(exchange_through(&*policy, get("/range", &[("range", "bytes=0-1")]), CACHEABLE).await.1, "BYPASS");
    // A WebSocket handshake on a path with a stored response still reaches the upstream.
    exchange_through(&*policy, get("/socket", &[]), CACHEABLE).await;
    let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
    let handshake = exchange_through(&*policy, get("/socket", &upgrade), (101, &[], "")).await;
    assert_eq!((handshake.0, handshake.1.as_str()), (StatusCode::SWITCHING_PROTOCOLS, "-"));
}

#[tokio::test]
async fn uses_default_ttl_only_for_responses_without_freshness_of_their_own() {
    let (without, _) = cache("");
    exchange_through(&*without, get("/plain", &[]), (200, &[], "x")).await;
    assert_eq!(exchange_through(&*without, get("/plain", &[]), (200, &[], "x")).await.1, "MISS");
    let (with, _) = cache("default_ttl: 60s");
    exchange_through(&*with, get("/plain", &[]), (200, &[], "x")).await;
    assert_eq!(exchange_through(&*with, get("/plain", &[]), (200, &[], "x")).await.1, "HIT");
    let zero = (200, &[("cache-control", "max-age=0")][..], "x");
    exchange_through(&*with, get("/zero", &[]), zero).await;
    assert_eq!(exchange_through(&*with, get("/zero", &[]), zero).await.1, "MISS", "max-age=0 wins over the default");
}

#[tokio::test]
async fn keeps_one_entry_per_value_of_the_headers_vary_names() {
    let (policy, _stores) = cache("");
    let varying = (200, &[("cache-control", "max-age=60"), ("vary", "Accept-Language")][..], "hello");
    let english = [("accept-language", "en")];
    let french = [("accept-language", "fr")];
    assert_eq!(exchange_through(&*policy, get("/greeting", &english), varying).await.1, "MISS");
    assert_eq!(exchange_through(&*policy, get("/greeting", &french), varying).await.1, "MISS");
    assert_eq!(exchange_through(&*policy, get("/greeting", &english), varying).await.1, "HIT");
    assert_eq!(exchange_through(&*policy, get("/greeting", &french), varying).await.1, "HIT");
    assert_eq!(exchange_through(&*policy, get("/greeting", &[]), varying).await.1, "MISS", "no header is a value too");
}

/// Stores a response that is already stale (its `Age` is past its `max-age`) but has an ETag.
async fn store_stale(policy: &dyn Policy, path: &str, extra: &[(&'static str, &str)]) {
    let mut headers = vec![("cache-control", "max-age=10"), ("age", "20"), ("etag", "\"v1\"")];
    headers.extend_from_slice(extra);
    exchange_through(policy, get(path, &[]), (200, &headers, "stored body")).await;
}

#[tokio::test]
async fn revalidates_a_stale_entry_and_answers_a_304_with_the_stored_body() {
    let (policy, stores) = cache("");
    store_stale(&*policy, "/item", &[]).await;

    let mut exchange = exchange_from("127.0.0.1:40000");
    let upstream = request(&*policy, get("/item", &[]), &mut exchange).await.expect_err("goes upstream");
    assert_eq!(upstream.headers["if-none-match"], "\"v1\"", "the cache asks with its validator");
    let (head, body) =
        respond(&*policy, &mut exchange, 304, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")], "");
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(body, "stored body");
    assert_eq!(head.headers["x-cache"], "REVALIDATED");
    assert_eq!(head.headers["cache-control"], "max-age=60", "updated from the 304");
    assert_eq!(head.headers["content-length"], "11");

    let after = exchange_through(&*policy, get("/item", &[]), CACHEABLE).await;
    assert_eq!(after, (StatusCode::OK, "HIT".to_owned(), Bytes::from_static(b"stored body")), "fresh again");
    assert_eq!(stores.response_caches().counted("test-route", "revalidated"), 1);
}

#[tokio::test]
async fn answers_the_clients_own_conditional_request() {
    let (policy, _stores) = cache("");
    let tagged = (200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")][..], "body");
    exchange_through(&*policy, get("/tagged", &[]), tagged).await;
    let current = exchange_through(&*policy, get("/tagged", &[("if-none-match", "\"v1\"")]), tagged).await;
    assert_eq!((current.0, current.1.as_str(), current.2.len()), (StatusCode::NOT_MODIFIED, "HIT", 0));
    let outdated = exchange_through(&*policy, get("/tagged", &[("if-none-match", "\"v0\"")]), tagged).await;
    assert_eq!((outdated.0, outdated.2), (StatusCode::OK, Bytes::from_static(b"body")));

    // While revalidating, the cache asks with its own validator and answers the client's after.
    store_stale(&*policy, "/stale", &[]).await;
    let mut exchange = exchange_from("127.0.0.1:40000");
    let conditional = get("/stale", &[("if-none-match", "\"v1\"")]);
    let upstream = request(&*policy, conditional, &mut exchange).await.expect_err("goes upstream");
    assert_eq!(upstream.headers["if-none-match"], "\"v1\"");
    let (head, body) = respond(&*policy, &mut exchange, 304, &[("etag", "\"v1\""), ("cache-control", "max-age=5")], "");
    assert_eq!((head.status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(head.headers["etag"], "\"v1\"");
}

#[tokio::test]
async fn serves_a_stale_entry_when_the_upstream_fails_within_stale_if_error() {
    let (policy, _stores) = cache("");
    store_stale(&*policy, "/allowed", &[("cache-control", "stale-if-error=600")]).await;
    let failed = exchange_through(&*policy, get("/allowed", &[]), (503, &[], "problem")).await;
    assert_eq!(failed, (StatusCode::OK, "STALE".to_owned(), Bytes::from_static(b"stored body")));

    store_stale(&*policy, "/not-allowed", &[]).await;
    let failed = exchange_through(&*policy, get("/not-allowed", &[]), (503, &[], "problem")).await;
    assert_eq!((failed.0, failed.1.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "MISS"));

    let (configured, _stores) = cache("stale_if_error: 10m");
    store_stale(&*configured, "/configured", &[]).await;
    assert_eq!(exchange_through(&*configured, get("/configured", &[]), (502, &[], "x")).await.1, "STALE");
    store_stale(&*configured, "/must", &[("cache-control", "must-revalidate")]).await;
    assert_eq!(
        exchange_through(&*configured, get("/must", &[]), (502, &[], "x")).await.1,
        "MISS",
        "must-revalidate forbids the configured allowance"
    );
}

#[tokio::test]
async fn serves_stale_while_revalidating_in_the_background_once() {
    let (policy, _stores) = cache("");
    store_stale(&*policy, "/swr", &[("cache-control", "stale-while-revalidate=600")]).await;
    let mut exchange = exchange_from("127.0.0.1:40000");
    let answer = request(&*policy, get("/swr", &[]), &mut exchange).await.expect("answered at once");
    assert_eq!(answer.headers()["x-cache"], "STALE");
    assert_eq!(answer.body(), "stored body");
    let refresh = take_background_request(&mut exchange).expect("a refresh is asked for");
    assert_eq!(refresh.head.headers["if-none-match"], "\"v1\"");

    let mut second = exchange_from("127.0.0.1:40000");
    request(&*policy, get("/swr", &[]), &mut second).await.expect("stale again");
    assert!(take_background_request(&mut second).is_none(), "one refresh per key at a time");

    let mut not_modified = http::Response::new(Bytes::new());
    *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
    not_modified.headers_mut().insert("cache-control", HeaderValue::from_static("max-age=60"));
    not_modified.headers_mut().insert("etag", HeaderValue::from_static("\"v1\""));
    (refresh.deliver)(Ok(not_modified));
    let after = exchange_through(&*policy, get("/swr", &[]), CACHEABLE).await;
    assert_eq!(after.1, "HIT", "the refresh made it fresh");
}

#[tokio::test]
async fn honours_client_revalidation_requests_only_when_configured() {
    let (honouring, _stores) = cache("");
    let tagged = (200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")][..], "body");
    exchange_through(&*honouring, get("/a", &[]), tagged).await;
    let mut exchange = exchange_from("127.0.0.1:40000");
    let upstream = request(&*honouring, get("/a", &[("cache-control", "no-cache")]), &mut exchange)
        .await
        .expect_err("no-cache goes upstream");
    assert_eq!(upstream.headers["if-none-match"], "\"v1\"");

    let (ignoring, _stores) = cache("honor_request_cache_control: false");
    exchange_through(&*ignoring, get("/a", &[]), tagged).await;
    let forced = exchange_through(&*ignoring, get("/a", &[("cache-control", "no-cache, max-age=0")]), tagged).await;
    assert_eq!(forced.1, "HIT");
    let store = exchange_through(&*ignoring, get("/b", &[("cache-control", "no-store")]), tagged).await;
    assert_eq!(store.1, "MISS");
}

#[tokio::test]
async fn answers_only_if_cached_with_504_on_a_miss() {
    let (policy, _stores) = cache("");
    let mut exchange = exchange_from("127.0.0.1:40000");
    let answer =
        request(&*policy, get("/none", &[("cache-control", "only-if-cached")]), &mut exchange).await.expect("answered");
    assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn does_not_store_a_body_past_max_body_bytes() {
    let (policy, _stores) = cache("max_body_bytes: 8");
    let large = (200, &[("cache-control", "max-age=60")][..], "more than eight bytes");
    let first = exchange_through(&*policy, get("/large", &[]), large).await;
    assert_eq!(first.2, "more than eight bytes", "the client still gets all of it");
    assert_eq!(exchange_through(&*policy, get("/large", &[]), large).await.1, "MISS");
    let declared = (200, &[("cache-control", "max-age=60"), ("content-length", "21")][..], "more than eight bytes");
    let mut exchange = exchange_from("127.0.0.1:40000");
    request(&*policy, get("/declared", &[]), &mut exchange).await.expect_err("miss");
    let mut head = http::Response::builder().status(200).body(()).expect("response").into_parts().0;
    for (name, value) in declared.1 {
        head.headers.insert(*name, HeaderValue::from_static(value));
    }
    policy.on_response(&mut head, &mut exchange);
    assert!(take_response_body_action(&mut exchange).is_none(), "a declared length too large is not collected");
}

#[tokio::test]
async fn answers_head_from_the_get_entry_without_a_body() {
    let (policy, _stores) = cache("");
    exchange_through(&*policy, get("/doc", &[]), CACHEABLE).await;
    let mut exchange = exchange_from("127.0.0.1:40000");
    let answer = request(&*policy, with_method(Method::HEAD, "/doc"), &mut exchange).await.expect("hit");
    assert_eq!(answer.headers()["x-cache"], "HIT");
    assert_eq!(answer.headers()["content-length"], "9");
    assert!(answer.body().is_empty());
}

#[tokio::test]
async fn a_successful_unsafe_request_removes_the_entry_of_its_url() {
    let (policy, _stores) = cache("");
    exchange_through(&*policy, get("/cart", &[]), CACHEABLE).await;
    let mut failed = exchange_from("127.0.0.1:40000");
    request(&*policy, with_method(Method::POST, "/cart"), &mut failed).await.expect_err("forwarded");
    respond(&*policy, &mut failed, 500, &[], "");
    assert_eq!(exchange_through(&*policy, get("/cart", &[]), CACHEABLE).await.1, "HIT", "a failure changes nothing");
    let mut posted = exchange_from("127.0.0.1:40000");
    request(&*policy, with_method(Method::POST, "/cart"), &mut posted).await.expect_err("forwarded");
    let (head, _) = respond(&*policy, &mut posted, 201, &[], "");
    assert!(head.headers.get("x-cache").is_none(), "other methods carry no cache status");
    assert_eq!(exchange_through(&*policy, get("/cart", &[]), CACHEABLE).await.1, "MISS");
}

#[tokio::test]
async fn concurrent_misses_of_one_key_wait_for_the_first() {
    let (policy, _stores) = cache("lock_timeout: 5s");
    let mut leader = exchange_from("127.0.0.1:40000");
    request(&*policy, get("/slow", &[]), &mut leader).await.expect_err("the first goes upstream");
    let follower_policy = policy.clone();
    let follower = tokio::spawn(async move {
        let mut exchange = exchange_from("127.0.0.1:40001");
        request(&*follower_policy, get("/slow", &[]), &mut exchange)
            .await
            .map(|answer| answer.headers()["x-cache"].clone())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!follower.is_finished(), "the second waits for the first's response");
    respond(&*policy, &mut leader, 200, &[("cache-control", "max-age=60")], "slow answer");
    let answered = follower.await.expect("joins");
    assert_eq!(answered.ok(), Some(HeaderValue::from_static("HIT")), "answered from what the first stored");

    let (unlocked, _stores) = cache("lock: false");
    let mut first = exchange_from("127.0.0.1:40000");
    request(&*unlocked, get("/slow", &[]), &mut first).await.expect_err("upstream");
    let mut second = exchange_from("127.0.0.1:40001");
    let second = tokio::time::timeout(Duration::from_secs(1), request(&*unlocked, get("/slow", &[]), &mut second));
    assert!(second.await.expect("does not wait").is_err(), "without the lock both go upstream");
}

#[tokio::test]
async fn a_follower_goes_upstream_itself_after_lock_timeout() {
    let (policy, _stores) = cache("lock_timeout: 50ms");
    let mut leader = exchange_from("127.0.0.1:40000");
    request(&*policy, get("/hung", &[]), &mut leader).await.expect_err("upstream");
    let mut follower = exchange_from("127.0.0.1:40001");
    let started = std::time::Instant::now();
    request(&*policy, get("/hung", &[]), &mut follower).await.expect_err("gives up waiting and goes upstream");
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn keys_on_configured_headers_and_the_consumer() {
    let (policy, _stores) = cache("key: {headers: [x-tenant], host: false}");
    exchange_through(&*policy, get("/t", &[("x-tenant", "a")]), CACHEABLE).await;
    assert_eq!(exchange_through(&*policy, get("/t", &[("x-tenant", "b")]), CACHEABLE).await.1, "MISS");
    let mut other_host = get("/t", &[("x-tenant", "a")]);
    other_host.headers.insert("host", HeaderValue::from_static("elsewhere.example"));
    assert_eq!(exchange_through(&*policy, other_host, CACHEABLE).await.1, "HIT", "host left out of the key");
}

#[test]
fn names_the_status_header_or_sends_none() {
    let (policy, _stores) = cache("status_header: null");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let outcome = runtime.block_on(exchange_through(&*policy, get("/quiet", &[]), CACHEABLE));
    assert_eq!(outcome.1, "-");
}

#[test]
fn rejects_settings_that_cannot_work_with_their_paths() {
    let errors = build_policy_error(
        entry(),
        "methods: [GET, POST]\nstatuses: [206, 700]\nmax_body_bytes: 0\nheuristic_fraction: 2\nlock_timeout: 0s\n\
         status_header: 'bad header'\nkey: {headers: ['bad header']}\ndefault_ttl: 0s",
    );
    let text = errors.to_string();
    for expected in [
        "response_cache.methods[1]",
        "response_cache.statuses[0]: partial responses",
        "response_cache.statuses[1]",
        "response_cache.max_body_bytes",
        "response_cache.heuristic_fraction",
        "response_cache.lock_timeout",
        "response_cache.status_header",
        "response_cache.key.headers[0]",
        "response_cache.default_ttl",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    let head_only = build_policy_error(entry(), "methods: [HEAD]").to_string();
    assert!(head_only.contains("list GET too"), "{head_only}");
    let too_large = build_policy_error(entry(), "max_body_bytes: 1000\nmemory_max_bytes: 10").to_string();
    assert!(too_large.contains("no such body would fit"), "{too_large}");
    let redis = build_policy_error(entry(), "store: redis").to_string();
    assert!(redis.contains("response_cache.store: `redis` needs `node.stores.redis`"), "{redis}");
}
