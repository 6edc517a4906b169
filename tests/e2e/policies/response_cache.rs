//! `response_cache` through a running gateway against a real origin that counts its requests:
//! hits with `Age`, `Vary`, `no-store`, revalidation with an `ETag` answered 304, stale answers
//! while the origin is down, one upstream request for concurrent misses, purges through the
//! admin API, and a Redis store shared by two gateway processes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::redis::RedisServer;
use gantry_testkit::{eventually, GatewayProcess};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::{JoinHandle, JoinSet};

use crate::support::{assert_metric, start_gateway};

const ADMIN_KEY: &str = "e2e-admin-key-response-cache-51c9";

/// An origin whose answers depend on the path, counting the requests of each path:
///
/// - `/fresh/..`: `max-age=60`;
/// - `/vary`: `max-age=60`, `Vary: Accept-Language`, the language in the body;
/// - `/nostore`: `no-store`;
/// - `/short`: `max-age=1` with `ETag: "v1"`, and 304 to `If-None-Match: "v1"`;
/// - `/fallback`: `max-age=1, stale-if-error=300`;
/// - `/swr`: `max-age=1, stale-while-revalidate=60` with `ETag: "s1"`, and 304 to it (then
///   `max-age=60`);
/// - `/slow`: `max-age=60` after 300 ms.
///
/// Bodies name the path and the count, so a test tells a stored answer from a new one.
struct Origin {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, u64>>>,
    task: JoinHandle<()>,
}

impl Origin {
    async fn start() -> Self {
        Self::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind origin")).await
    }

    async fn serve(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("address");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            // The connections live in the set, so stopping the origin closes them too.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let counts = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(request, counts.clone()));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, counts, task }
    }

    /// Requests the origin received for `path`.
    fn count(&self, path: &str) -> u64 {
        self.counts.lock().expect("lock").get(path).copied().unwrap_or(0)
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn answer(
    request: Request<Incoming>,
    counts: Arc<Mutex<HashMap<String, u64>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let count = {
        let mut counts = counts.lock().expect("lock");
        let count = counts.entry(path.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
    let response = Response::builder().header("content-type", "text/plain");
    let body = format!("{path} #{count}");
    let response = match path.as_str() {
        "/vary" => response
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
            .body(format!("{} {body}", header("accept-language"))),
        "/nostore" => response.header("cache-control", "no-store").body(body),
        "/short" if header("if-none-match") == "\"v1\"" => {
            response.status(304).header("cache-control", "max-age=1").header("etag", "\"v1\"").body(String::new())
        }
        "/short" => response.header("cache-control", "max-age=1").header("etag", "\"v1\"").body(body),
        "/fallback" => response.header("cache-control", "max-age=1, stale-if-error=300").body(body),
        "/swr" if header("if-none-match") == "\"s1\"" => response
            .status(304)
            .header("cache-control", "max-age=60, stale-while-revalidate=60")
            .header("etag", "\"s1\"")
            .body(String::new()),
        "/swr" => {
            response.header("cache-control", "max-age=1, stale-while-revalidate=60").header("etag", "\"s1\"").body(body)
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            response.header("cache-control", "max-age=60").body(body)
        }
        _ => response.header("cache-control", "max-age=60").body(body),
    };
    Ok(response.expect("a valid response").map(|body| Full::new(Bytes::from(body))))
}

/// A gateway caching everything of `origin` on route `cached`, with the admin API, and with
/// `extra` settings of the policy and `node_extra` node settings.
fn gateway(origin: &Origin, extra: &str, node_extra: &str) -> GatewayProcess {
    start_gateway(&format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin:
    address: 127.0.0.1:0
    api_key: {ADMIN_KEY}
{node_extra}upstreams:
  - id: origin
    endpoints: [{addr}]
    retries: {{attempts: 0}}
routes:
  - id: cached
    paths: [/*]
    upstream: origin
    policies:
      - response_cache: {{{extra}}}
",
        addr = origin.addr
    ))
}

async fn get(client: &TestClient, gateway: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> TestResponse {
    client.request(Method::GET, &gateway.url(path), headers, "").await
}

fn body(response: &TestResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[tokio::test]
async fn answers_a_repeated_get_from_the_cache_with_age_and_counts_it() {
    let origin = Origin::start().await;
    let gateway = gateway(&origin, "", "");
    let client = TestClient::default();

    let first = get(&client, &gateway, "/fresh/a", &[]).await;
    assert_eq!((first.status, first.header("x-cache")), (StatusCode::OK, Some("MISS")));
    assert_eq!(body(&first), "/fresh/a #1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = get(&client, &gateway, "/fresh/a", &[]).await;
    assert_eq!((second.status, second.header("x-cache")), (StatusCode::OK, Some("HIT")));
    assert_eq!(body(&second), "/fresh/a #1", "the stored body");
    let age: u64 = second.header("age").expect("an Age header").parse().expect("seconds");
    assert!((1..60).contains(&age), "age {age}");
    assert!(second.header("x-request-id").is_some(), "the gateway's own headers are added to hits too");
    assert_eq!(origin.count("/fresh/a"), 1, "the origin saw one request");

    let head = client.request(Method::HEAD, &gateway.url("/fresh/a"), &[], "").await;
    assert_eq!((head.status, head.header("x-cache"), head.body.len()), (StatusCode::OK, Some("HIT"), 0));
    assert_eq!(origin.count("/fresh/a"), 1);

    assert_metric(&gateway, "gantry_response_cache_requests_total{route=\"cached\",status=\"miss\"} 1").await;
    assert_metric(&gateway, "gantry_response_cache_requests_total{route=\"cached\",status=\"hit\"} 2").await;
}

#[tokio::test]
async fn keeps_one_entry_per_language_the_origin_varies_on_and_never_stores_no_store() {
    let origin = Origin::start().await;
    let gateway = gateway(&origin, "", "");
    let client = TestClient::default();
    let english = [("accept-language", "en")];
    let german = [("accept-language", "de")];

    assert_eq!(body(&get(&client, &gateway, "/vary", &english).await), "en /vary #1");
    assert_eq!(body(&get(&client, &gateway, "/vary", &german).await), "de /vary #2");
    let english_again = get(&client, &gateway, "/vary", &english).await;
    assert_eq!((english_again.header("x-cache"), body(&english_again).as_str()), (Some("HIT"), "en /vary #1"));
    let german_again = get(&client, &gateway, "/vary", &german).await;
    assert_eq!((german_again.header("x-cache"), body(&german_again).as_str()), (Some("HIT"), "de /vary #2"));
    assert_eq!(origin.count("/vary"), 2);

    for _ in 0..3 {
        let response = get(&client, &gateway, "/nostore", &[]).await;
        assert_eq!(response.header("x-cache"), Some("MISS"));
    }
    assert_eq!(origin.count("/nostore"), 3, "no-store responses are fetched every time");
}

#[tokio::test]
async fn revalidates_an_expired_entry_with_its_etag_and_answers_the_304_with_the_stored_body() {
    let origin = Origin::start().await;
    let gateway = gateway(&origin, "", "");
    let client = TestClient::default();

    assert_eq!(get(&client, &gateway, "/short", &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(get(&client, &gateway, "/short", &[]).await.header("x-cache"), Some("HIT"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = get(&client, &gateway, "/short", &[]).await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.header("x-cache"), Some("REVALIDATED"));
    assert_eq!(body(&revalidated), "/short #1", "the stored body, not the empty 304");
    assert_eq!(revalidated.header("etag"), Some("\"v1\""));
    assert_eq!(origin.count("/short"), 2, "one full fetch and one conditional request");
    assert_eq!(get(&client, &gateway, "/short", &[]).await.header("x-cache"), Some("HIT"), "fresh again");

    let conditional = get(&client, &gateway, "/short", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((conditional.status, conditional.body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(origin.count("/short"), 2, "the client's own conditional is answered by the cache");
}

#[tokio::test]
async fn serves_the_stale_entry_while_the_origin_is_down() {
    let origin = Origin::start().await;
    let gateway = gateway(&origin, "", "");
    let client = TestClient::default();
    assert_eq!(body(&get(&client, &gateway, "/fallback", &[]).await), "/fallback #1");
    assert_eq!(body(&get(&client, &gateway, "/fresh/down", &[]).await), "/fresh/down #1");
    origin.stop().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let stale = get(&client, &gateway, "/fallback", &[]).await;
    assert_eq!((stale.status, stale.header("x-cache")), (StatusCode::OK, Some("STALE")));
    assert_eq!(body(&stale), "/fallback #1");
    let age: u64 = stale.header("age").expect("Age").parse().expect("seconds");
    assert!(age >= 2, "a stale entry says how old it is: {age}");

    let fresh = get(&client, &gateway, "/fresh/down", &[]).await;
    assert_eq!((fresh.header("x-cache"), body(&fresh).as_str()), (Some("HIT"), "/fresh/down #1"), "still fresh");
    let never_stored = get(&client, &gateway, "/fresh/other", &[]).await;
    assert_eq!(never_stored.status, StatusCode::BAD_GATEWAY, "nothing stored, nothing to fall back on");
}

#[tokio::test]
async fn answers_stale_at_once_and_revalidates_in_the_background() {
    let origin = Origin::start().await;
    let gateway = gateway(&origin, "", "");
    let client = TestClient::default();
    assert_eq!(get(&client, &gateway, "/swr", &[]).await.header("x-cache"), Some("MISS"));
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let stale = get(&client, &gateway, "/swr", &[]).await;
    assert_eq!((stale.header("x-cache"), body(&stale).as_str()), (Some("STALE"), "/swr #1"));
    // The refresh goes to the origin after the stale answer, as a conditional request.
    eventually("the background revalidation to reach the origin", || async {
        (origin.count("/swr") == 2).then_some(())
    })
    .await;
    let refreshed = eventually("the revalidated entry to answer", || async {
        let response = get(&client, &gateway, "/swr", &[]).await;
        (response.header("x-cache") == Some("HIT")).then_some(response)
    })
    .await;
    assert_eq!(body(&refreshed), "/swr #1", "the 304 kept the stored body");
    assert_eq!(origin.count("/swr"), 2, "one refresh, however many stale answers");
}

#[tokio::test]
async fn twenty_concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start().await;
    let gateway = Arc::new(gateway(&origin, "", ""));
    let mut requests = JoinSet::new();
    for _ in 0..20 {
        let gateway = gateway.clone();
        requests.spawn(async move {
            let response = TestClient::default().get(&gateway.url("/slow")).await;
            (response.status, body(&response), response.header("x-cache").unwrap_or_default().to_owned())
        });
    }
    let mut statuses = Vec::new();
    while let Some(answer) = requests.join_next().await {
        let (status, text, cache) = answer.expect("request task");
        assert_eq!((status, text.as_str()), (StatusCode::OK, "/slow #1"));
        statuses.push(cache);
    }
    assert_eq!(origin.count("/slow"), 1, "one request reached the origin");
    assert_eq!(statuses.iter().filter(|status| *status == "MISS").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| *status == "HIT").count(), 19, "{statuses:?}");
}

async fn purge(client: &TestClient, gateway: &GatewayProcess, query: &str) -> TestResponse {
    let url = format!("http://{}/cache/{query}", gateway.admin_addr());
    client.request(Method::DELETE, &url, &[("x-api-key", ADMIN_KEY)], "").await
}

#[tokio::test]
async fn purges_through_the_admin_api_by_path_and_prefix() {
    let origin = Origin::start().await;
    let gateway = gateway(&origin, "", "");
    let client = TestClient::default();
    for path in ["/fresh/a", "/fresh/b?x=1", "/fresh/b?x=2", "/other"] {
        get(&client, &gateway, path, &[]).await;
        assert_eq!(get(&client, &gateway, path, &[]).await.header("x-cache"), Some("HIT"), "{path}");
    }

    let exact = purge(&client, &gateway, "cached?path=/fresh/b").await;
    assert_eq!(exact.status, StatusCode::OK, "{exact:?}");
    assert_eq!(exact.json(), serde_json::json!({"route": "cached", "purged": 2}), "both query strings");
    assert_eq!(get(&client, &gateway, "/fresh/b?x=1", &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(get(&client, &gateway, "/fresh/a", &[]).await.header("x-cache"), Some("HIT"));

    let prefix = purge(&client, &gateway, "cached?prefix=/fresh/").await;
    assert_eq!(prefix.json()["purged"], 2, "/fresh/a and the /fresh/b?x=1 stored again");
    assert_eq!(get(&client, &gateway, "/fresh/a", &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(get(&client, &gateway, "/other", &[]).await.header("x-cache"), Some("HIT"), "outside the prefix");

    let unknown = purge(&client, &gateway, "no-such-route").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["type"], "https://gantry.dev/problems/admin/resource-not-found");
    let both = purge(&client, &gateway, "cached?path=/a&prefix=/b").await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    assert_eq!(both.json()["type"], "https://gantry.dev/problems/admin/invalid-query");
    let strange = purge(&client, &gateway, "cached?colour=red").await;
    assert_eq!(strange.json()["type"], "https://gantry.dev/problems/admin/invalid-query");
    let unauthorized =
        client.request(Method::DELETE, &format!("http://{}/cache/cached", gateway.admin_addr()), &[], "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_response_cached_through_one_gateway_is_a_hit_on_another_sharing_redis() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let stores = format!("  stores:\n    redis: {{urls: ['{}']}}\n", redis.url());
    let first = gateway(&origin, "store: redis", &stores);
    let second = gateway(&origin, "store: redis", &stores);
    let client = TestClient::default();

    let miss = get(&client, &first, "/fresh/shared", &[]).await;
    assert_eq!((miss.header("x-cache"), body(&miss).as_str()), (Some("MISS"), "/fresh/shared #1"));
    // The entry is written once its body has passed to the client: wait for it in Redis.
    let keys = eventually("the entry to be in Redis", || async {
        let keys = redis.command(&["KEYS", "gantry:cache cached *"]);
        keys.contains("/fresh/shared").then_some(keys)
    })
    .await;
    assert!(keys.contains("cache cached 127.0.0.1 /fresh/shared "), "stored under route, host and path: {keys}");
    let hit = get(&client, &second, "/fresh/shared", &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(body(&hit), "/fresh/shared #1", "the body stored by the other gateway");
    assert_eq!(origin.count("/fresh/shared"), 1);

    let purged = purge(&client, &second, "cached?prefix=/fresh/").await;
    assert_eq!(purged.json()["purged"], 1);
    assert_eq!(get(&client, &first, "/fresh/shared", &[]).await.header("x-cache"), Some("MISS"), "gone for both");
}
