//! `rate_limit` through running gateways: each algorithm in memory with its 429, `Retry-After`
//! and RateLimit headers; counters in a real `redis-server`, fail open and fail closed while
//! it is down; and three gateway processes sharing one Redis, hammered at once, admitting
//! exactly the limit in total.

use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::redis::RedisServer;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::StatusCode;

use super::harness::node_settings;
use crate::support::start_gateway;

const ADMIN_KEY: &str = "e2e-admin-key-rate-limit-7d21";

async fn metrics(client: &TestClient, gateway: &GatewayProcess) -> String {
    let response = client.get(&format!("http://{}/metrics", gateway.admin_addr())).await;
    assert_eq!(response.status, StatusCode::OK);
    String::from_utf8_lossy(&response.body).into_owned()
}

async fn statuses(client: &TestClient, url: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(client.get(url).await.status.as_u16());
    }
    statuses
}

#[tokio::test]
async fn each_algorithm_refuses_past_its_limit_with_429_retry_after_and_headers() {
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: fixed
    paths: [/fixed]
    upstream: up
    policies:
      - rate_limit: {{limit: 3, window: 1m, key: [ip]}}
  - id: sliding
    paths: [/sliding]
    upstream: up
    policies:
      - rate_limit: {{algorithm: sliding_window, limit: 3, window: 1m, key: [ip], headers: legacy}}
  - id: bucket
    paths: [/bucket]
    upstream: up
    policies:
      - rate_limit: {{algorithm: token_bucket, limit: 1, window: 1m, burst: 3, key: [ip], name: bucket}}
",
        node = node_settings(None, ADMIN_KEY),
        upstream = upstream.addr()
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();

    let admitted = client.get(&gateway.url("/fixed")).await;
    assert_eq!(admitted.status, StatusCode::OK);
    assert_eq!(admitted.header("ratelimit-policy"), Some("\"default\";q=3;w=60"));
    assert_eq!(admitted.header("ratelimit"), Some("\"default\";r=2;t=60"));
    for path in ["/fixed", "/sliding", "/bucket"] {
        let already = usize::from(path == "/fixed");
        let seen = statuses(&client, &gateway.url(path), 3 - already).await;
        assert_eq!(seen, vec![200; 3 - already], "{path}");
        let refused = client.get(&gateway.url(path)).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{path}: {refused:?}");
        assert_eq!(refused.header("content-type"), Some("application/problem+json"));
        assert_eq!(refused.json()["type"], "https://gantry.dev/problems/rate-limited");
        let retry_after: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("seconds");
        // A sliding window may need part of the next window: the 3 counted now still weigh.
        assert!((1..=120).contains(&retry_after), "{path}: {retry_after}");
        match path {
            "/sliding" => {
                assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
                assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
                assert!(refused.header("ratelimit").is_none());
            }
            "/bucket" => {
                assert_eq!(refused.header("ratelimit-policy"), Some("\"bucket\";q=1;w=60"));
                assert_eq!(refused.header("ratelimit"), Some("\"bucket\";r=0;t=180"));
            }
            _ => assert!(refused.header("ratelimit").is_some_and(|value| value.starts_with("\"default\";r=0;t="))),
        }
    }
    assert_eq!(upstream.requests(), 9, "refused requests never reached the upstream");
    let text = metrics(&client, &gateway).await;
    assert!(
        text.lines().any(|line| line == "gantry_policy_answers_total{policy=\"rate_limit\",status=\"429\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_leaky_bucket_delays_requests_to_its_rate_instead_of_refusing_them() {
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: smooth
    paths: [/smooth]
    upstream: up
    policies:
      - rate_limit: {{algorithm: leaky_bucket, limit: 5, window: 1s, burst: 2, key: [route]}}
",
        node = node_settings(None, ADMIN_KEY),
        upstream = upstream.addr()
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();
    let started = Instant::now();
    // Four at once: one passes, two wait 200 ms and 400 ms for their turn, one is refused.
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), gateway.url("/smooth"));
            tokio::spawn(async move {
                let response = client.get(&url).await;
                (response.status, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(request.await.expect("request task"));
    }
    outcomes.sort_by_key(|(_, elapsed)| *elapsed);
    let admitted: Vec<Duration> =
        outcomes.iter().filter(|(status, _)| *status == StatusCode::OK).map(|(_, elapsed)| *elapsed).collect();
    let refused = outcomes.iter().filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((admitted.len(), refused), (3, 1), "{outcomes:?}");
    // Measured between answers, so a slow machine's latency cancels out: the third was held
    // 400 ms after the first.
    assert!(admitted[2] - admitted[0] >= Duration::from_millis(300), "the last one waited its turn: {outcomes:?}");
}

#[tokio::test]
async fn counts_in_redis_under_the_key_prefix() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: shared
    paths: [/shared]
    upstream: up
    policies:
      - rate_limit: {{algorithm: sliding_window, limit: 2, window: 1m, key: [ip], store: redis}}
",
        node = node_settings(Some(&redis), ADMIN_KEY),
        upstream = upstream.addr()
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();
    assert_eq!(statuses(&client, &gateway.url("/shared"), 4).await, [200, 200, 429, 429]);
    // `[` opens a character class in KEYS patterns, hence the `?` for the brackets.
    let keys = redis.command(&["KEYS", "gantry:rl:routes?shared?.policies.rate_limit:sliding_window:*"]);
    assert!(keys.starts_with("*1\r\n"), "one counter for this client: {keys:?}");
    eventually("the store's connection is logged", || async {
        gateway.logs().iter().any(|line| line.contains("redis store connected")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn while_redis_is_down_fails_open_or_closed_as_configured_and_counts_it() {
    let mut redis = RedisServer::start();
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: open
    paths: [/open]
    upstream: up
    policies:
      - rate_limit: {{limit: 1, window: 1m, key: [route], store: redis}}
  - id: closed
    paths: [/closed]
    upstream: up
    policies:
      - rate_limit: {{limit: 100, window: 1m, key: [route], store: redis, on_store_error: deny}}
",
        node = node_settings(Some(&redis), ADMIN_KEY),
        upstream = upstream.addr()
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();
    assert_eq!(statuses(&client, &gateway.url("/open"), 2).await, [200, 429], "Redis counts while it is up");
    assert_eq!(client.get(&gateway.url("/closed")).await.status, StatusCode::OK);

    redis.stop();
    assert_eq!(statuses(&client, &gateway.url("/open"), 3).await, [200, 200, 200], "fail open: uncounted");
    let closed = client.get(&gateway.url("/closed")).await;
    assert_eq!(closed.status, StatusCode::SERVICE_UNAVAILABLE, "{closed:?}");
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert_eq!(closed.json()["type"], "https://gantry.dev/problems/rate-limit-unavailable");

    let text = metrics(&client, &gateway).await;
    let line = |action: &str| {
        format!("gantry_store_errors_total{{policy=\"rate_limit\",store=\"redis\",action=\"{action}\"}}")
    };
    assert!(text.lines().any(|l| l == format!("{} 3", line("allow"))), "{text}");
    assert!(text.lines().any(|l| l == format!("{} 1", line("deny"))), "{text}");
    let warnings = gateway.logs().iter().filter(|l| l.contains("rate limit store failed")).count();
    assert!((1..=2).contains(&warnings), "one warning per policy, not one per request: {warnings}");

    redis.restart();
    eventually("the closed route to be served again once Redis is back", || async {
        (client.get(&gateway.url("/closed")).await.status == StatusCode::OK).then_some(())
    })
    .await;
}

/// APISIX (#12592) and Traefik (#13706) admit more than the limit when several instances
/// share one Redis under concurrent load; here every decision is one atomic script run.
#[tokio::test]
async fn three_gateways_sharing_one_redis_admit_the_limit_in_total() {
    const LIMIT: usize = 300;
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  stores:
    redis: {{urls: ['{redis}'], pool_size: 2, timeout: 2s}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: limited
    paths: [/limited]
    upstream: up
    policies:
      # 60 s: the whole test runs inside one window.
      - rate_limit: {{limit: {LIMIT}, window: 60s, key: [route], store: redis}}
",
        redis = redis.url(),
        upstream = upstream.addr()
    );
    let gateways: Vec<GatewayProcess> = (0..3).map(|_| start_gateway(&config)).collect();
    let urls: Vec<String> = gateways.iter().map(|gateway| gateway.url("/limited")).collect();
    let started = Instant::now();
    // 12 clients, 4 per gateway, 75 requests each: 900 requests for a limit of 300.
    let clients: Vec<_> = (0..12)
        .map(|index| {
            let url = urls[index % urls.len()].clone();
            tokio::spawn(async move {
                let client = TestClient::default();
                let mut admitted = 0usize;
                for _ in 0..75 {
                    let status = client.get(&url).await.status;
                    assert!(matches!(status.as_u16(), 200 | 429), "{status}");
                    admitted += usize::from(status == StatusCode::OK);
                }
                (index % 3, admitted)
            })
        })
        .collect();
    let mut per_gateway = [0usize; 3];
    for client in clients {
        let (gateway, admitted) = client.await.expect("client task");
        per_gateway[gateway] += admitted;
    }
    let total: usize = per_gateway.iter().sum();
    assert!(started.elapsed() < Duration::from_secs(60), "the test outlasted the window: {:?}", started.elapsed());
    let tolerance = LIMIT / 100;
    assert!(total.abs_diff(LIMIT) <= tolerance, "admitted {total} for a limit of {LIMIT}: {per_gateway:?}");
    assert_eq!(total, LIMIT, "every decision is atomic, so the count is exact: {per_gateway:?}");
    assert!(per_gateway.iter().all(|&admitted| admitted > 0), "every gateway admitted some: {per_gateway:?}");
    assert_eq!(upstream.requests() as usize, total);
}

#[tokio::test]
async fn a_reload_keeps_the_counts_even_when_the_limit_changes() {
    let upstream = EchoUpstream::start("up").await;
    let config = |limit: u32, extra_route: &str| {
        format!(
            "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: limited
    paths: [/limited]
    upstream: up
    policies:
      - rate_limit: {{limit: {limit}, window: 1m, key: [route]}}
{extra_route}",
            node = node_settings(None, ADMIN_KEY),
            upstream = upstream.addr()
        )
    };
    let gateway = start_gateway(&config(3, ""));
    let client = TestClient::default();
    assert_eq!(statuses(&client, &gateway.url("/limited"), 2).await, [200, 200]);

    let probe = "  - id: probe\n    paths: [/probe]\n    policies:\n      - mock_response: {body: reloaded}\n";
    std::fs::write(gateway.config_path(), config(4, probe)).expect("rewrite the configuration");
    eventually("the new configuration to be applied", || async {
        (client.get(&gateway.url("/probe")).await.status == StatusCode::OK).then_some(())
    })
    .await;
    // 2 counted before the reload, 2 more fit under the new limit of 4.
    assert_eq!(statuses(&client, &gateway.url("/limited"), 3).await, [200, 200, 429]);
}

#[tokio::test]
async fn counts_each_credential_of_a_consumer_apart_with_key_credential() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
consumers:
  - id: alice
    credentials:
      key_auth:
        - {{key: alice-laptop-key-0001}}
        - {{key: alice-server-key-0002}}
routes:
  - id: per-credential
    paths: [/per-credential]
    upstream: up
    policies:
      - key_auth: {{}}
      - rate_limit: {{limit: 2, window: 1h, key: [credential]}}
  - id: per-consumer
    paths: [/per-consumer]
    upstream: up
    policies:
      - key_auth: {{}}
      - rate_limit: {{limit: 2, window: 1h, key: [consumer]}}
",
        node = node_settings(None, ADMIN_KEY),
        upstream = upstream.addr()
    ));
    let client = TestClient::default();
    let statuses_with = |path: &'static str, key: &'static str| {
        let client = client.clone();
        let url = gateway.url(path);
        async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                statuses.push(client.request(http::Method::GET, &url, &[("apikey", key)], "").await.status.as_u16());
            }
            statuses
        }
    };
    // Each of her keys has its own 2 ...
    assert_eq!(statuses_with("/per-credential", "alice-laptop-key-0001").await, [200, 200, 429]);
    assert_eq!(statuses_with("/per-credential", "alice-server-key-0002").await, [200, 200, 429]);
    // ... where counting by consumer gives both keys one count of 2.
    assert_eq!(statuses_with("/per-consumer", "alice-laptop-key-0001").await, [200, 200, 429]);
    assert_eq!(statuses_with("/per-consumer", "alice-server-key-0002").await, [429, 429, 429]);
    assert_eq!(upstream.requests(), 6);
}
