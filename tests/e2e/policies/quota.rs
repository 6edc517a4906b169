//! `quota` through running gateways, on the real clock in a fixed-offset time zone where it is
//! about noon now (so no test meets a local midnight): consumers recognised by `key_auth` get
//! their daily quota, then 429 with `Retry-After` until that zone's midnight; counts kept in a
//! real `redis-server` go on across a restart of the gateway process while memory counts
//! start again; and while Redis is down, requests are let through or refused as configured.

use std::time::{SystemTime, UNIX_EPOCH};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::redis::RedisServer;
use gantry_testkit::{deadline, eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use super::harness::{assert_policy_answers, node_settings};
use crate::support::{assert_metric, start_gateway};

const ADMIN_KEY: &str = "e2e-admin-key-quota-5e18";
const ALICE_KEY: &str = "alice-quota-key-0001";
const BOB_KEY: &str = "bob-quota-key-0002";

/// A time zone of the IANA database (`Etc/GMT-5` is UTC+5) where it is between 11:00 and 13:00
/// now, and the seconds from `at` (Unix seconds) to its next midnight.
struct NoonZone {
    name: String,
    offset_seconds: i64,
}

impl NoonZone {
    fn now() -> Self {
        let utc_hour = i64::try_from(unix_now() / 3600 % 24).expect("an hour");
        // From UTC-11 to UTC+12: every one of them exists as an `Etc/GMT` zone.
        let offset = 12 - utc_hour;
        let name = match offset {
            0 => "Etc/UTC".to_owned(),
            east if east > 0 => format!("Etc/GMT-{east}"),
            west => format!("Etc/GMT+{}", -west),
        };
        Self { name, offset_seconds: offset * 3600 }
    }

    fn seconds_to_midnight(&self) -> u64 {
        let local = i64::try_from(unix_now()).expect("seconds") + self.offset_seconds;
        86_400 - u64::try_from(local.rem_euclid(86_400)).expect("positive")
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Node settings with the admin API and, when given, a Redis store; consumers alice and bob.
fn node_and_consumers(redis: Option<&RedisServer>) -> String {
    let node = node_settings(redis, ADMIN_KEY);
    format!(
        "{node}consumers:
  - id: alice
    credentials:
      key_auth: {{key: {ALICE_KEY}}}
  - id: bob
    credentials:
      key_auth: {{key: {BOB_KEY}}}
"
    )
}

async fn get_as(client: &TestClient, gateway: &GatewayProcess, path: &str, key: &str) -> TestResponse {
    client.request(Method::GET, &gateway.url(path), &[("apikey", key)], "").await
}

async fn statuses_as(client: &TestClient, gateway: &GatewayProcess, path: &str, key: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(get_as(client, gateway, path, key).await.status.as_u16());
    }
    statuses
}

/// Every value of header `name`, in order.
fn all(response: &TestResponse, name: &str) -> Vec<String> {
    response.headers.get_all(name).iter().map(|value| value.to_str().expect("ASCII").to_owned()).collect()
}

/// The `t` (seconds to the period's end) of the quota's member of `RateLimit`.
fn quota_reset(response: &TestResponse) -> u64 {
    let member = all(response, "ratelimit").into_iter().find(|value| value.starts_with("\"quota\";")).expect("quota");
    member.rsplit_once(";t=").and_then(|(_, seconds)| seconds.parse().ok()).expect("t=<seconds>")
}

fn assert_close_to_midnight(seconds: u64, zone: &NoonZone, what: &str) {
    let expected = zone.seconds_to_midnight();
    assert!(seconds.abs_diff(expected) <= 3, "{what}: {seconds} s, but midnight in {} is {expected} s away", zone.name);
}

#[tokio::test]
async fn a_consumer_gets_its_daily_quota_then_429_until_local_midnight_and_another_counts_apart() {
    let zone = NoonZone::now();
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: api
    paths: [/api/*]
    upstream: up
    policies:
      - key_auth: {{}}
      - rate_limit: {{limit: 100, window: 1m}}
      - quota: {{limit: 3, period: day, time_zone: '{zone}'}}
",
        node = node_and_consumers(None),
        upstream = upstream.addr(),
        zone = zone.name
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();

    let first = get_as(&client, &gateway, "/api/orders", ALICE_KEY).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    // Both limits are listed, in the order response hooks run (the reverse of the list).
    assert_eq!(all(&first, "ratelimit-policy"), ["\"quota\";q=3;w=86400", "\"default\";q=100;w=60"]);
    let listed = all(&first, "ratelimit");
    assert!(listed[0].starts_with("\"quota\";r=2;t="), "{listed:?}");
    assert_eq!(listed[1], "\"default\";r=99;t=60");
    assert_close_to_midnight(quota_reset(&first), &zone, "RateLimit t");

    assert_eq!(statuses_as(&client, &gateway, "/api/orders", ALICE_KEY, 2).await, [200, 200]);
    let refused = get_as(&client, &gateway, "/api/orders", ALICE_KEY).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
    assert_eq!(refused.header("content-type"), Some("application/problem+json"));
    let problem = refused.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/quota-exceeded");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains("3 requests per day") && detail.contains(&zone.name), "{detail}");
    let retry_after: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert_close_to_midnight(retry_after, &zone, "Retry-After");
    assert!(all(&refused, "ratelimit").iter().any(|value| value.starts_with("\"quota\";r=0;t=")), "{refused:?}");

    assert_eq!(statuses_as(&client, &gateway, "/api/orders", BOB_KEY, 4).await, [200, 200, 200, 429], "bob's own");
    assert_eq!(upstream.requests(), 6, "refused requests never reached the upstream");
    assert_policy_answers(&gateway, "quota", 429, 2).await;
}

#[tokio::test]
async fn counts_in_redis_go_on_across_a_gateway_restart_while_memory_counts_start_again() {
    let zone = NoonZone::now();
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("up").await;
    let config = format!(
        "{node}upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: kept
    paths: [/kept]
    upstream: up
    policies:
      - key_auth: {{}}
      - quota: {{limit: 5, period: day, time_zone: '{zone}', store: redis}}
  - id: lost
    paths: [/lost]
    upstream: up
    policies:
      - key_auth: {{}}
      - quota: {{limit: 5, period: day, time_zone: '{zone}'}}
",
        node = node_and_consumers(Some(&redis)),
        upstream = upstream.addr(),
        zone = zone.name
    );
    let client = TestClient::default();
    let first = start_gateway(&config);
    assert_eq!(statuses_as(&client, &first, "/kept", ALICE_KEY, 3).await, [200; 3]);
    assert_eq!(statuses_as(&client, &first, "/lost", ALICE_KEY, 3).await, [200; 3]);
    let exit = tokio::task::spawn_blocking(move || first.terminate(deadline())).await.expect("terminate task");
    assert!(exit.is_some_and(|status| status.success()), "the first gateway stopped: {exit:?}");

    let second = start_gateway(&config);
    let next = get_as(&client, &second, "/kept", ALICE_KEY).await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(all(&next, "ratelimit").contains(&format!("\"quota\";r=1;t={}", quota_reset(&next))), "{next:?}");
    assert_eq!(
        statuses_as(&client, &second, "/kept", ALICE_KEY, 2).await,
        [200, 429],
        "the 3 before the restart count"
    );
    assert_eq!(statuses_as(&client, &second, "/kept", BOB_KEY, 1).await, [200]);
    assert_eq!(statuses_as(&client, &second, "/lost", ALICE_KEY, 6).await, [200, 200, 200, 200, 200, 429]);

    // One count per consumer and day, kept in Redis past the zone's midnight.
    let keys = redis.command(&["KEYS", "gantry:quota:routes?kept?.policies.quota:day:*"]);
    assert!(keys.starts_with("*2\r\n"), "alice's and bob's: {keys:?}");
    let alice = keys.lines().find(|line| line.starts_with("gantry:")).expect("a key");
    let ttl = redis.command(&["PTTL", alice]);
    let ttl: u64 = ttl.trim().trim_start_matches(':').parse().expect("PTTL answers an integer");
    assert!(ttl / 1000 > zone.seconds_to_midnight(), "kept until midnight and a grace: {ttl} ms");
}

#[tokio::test]
async fn while_redis_is_down_lets_requests_through_or_refuses_them_as_configured() {
    let zone = NoonZone::now();
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
      - quota: {{limit: 1, period: month, time_zone: '{zone}', key: [route], store: redis}}
  - id: closed
    paths: [/closed]
    upstream: up
    policies:
      - quota: {{limit: 100, period: week, key: [route], store: redis, on_store_error: deny}}
",
        node = node_and_consumers(Some(&redis)),
        upstream = upstream.addr(),
        zone = zone.name
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();
    let statuses = |path: &'static str, count: usize| {
        let (client, url) = (client.clone(), gateway.url(path));
        async move {
            let mut statuses = Vec::new();
            for _ in 0..count {
                statuses.push(client.get(&url).await.status.as_u16());
            }
            statuses
        }
    };
    assert_eq!(statuses("/open", 2).await, [200, 429], "Redis counts while it is up");
    assert_eq!(statuses("/closed", 1).await, [200]);

    redis.stop();
    assert_eq!(statuses("/open", 3).await, [200, 200, 200], "fail open: uncounted");
    let closed = client.get(&gateway.url("/closed")).await;
    assert_eq!(closed.status, StatusCode::SERVICE_UNAVAILABLE, "{closed:?}");
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert_eq!(closed.json()["type"], "https://gantry.dev/problems/quota-unavailable");
    let line =
        |action: &str| format!("gantry_store_errors_total{{policy=\"quota\",store=\"redis\",action=\"{action}\"}}");
    assert_metric(&gateway, &format!("{} 3", line("allow"))).await;
    assert_metric(&gateway, &format!("{} 1", line("deny"))).await;

    redis.restart();
    eventually("the closed route to be served again once Redis is back", || async {
        (client.get(&gateway.url("/closed")).await.status == StatusCode::OK).then_some(())
    })
    .await;
    // The test's Redis restarts empty (no persistence): counting starts again.
    assert_eq!(statuses("/open", 2).await, [200, 429], "counted in Redis again");
}
