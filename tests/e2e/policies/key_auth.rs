//! `key_auth` through a running gateway: keys in a header, a query parameter and a cookie,
//! refused requests that never reach the upstream, the anonymous consumer, a consumer's own
//! policies replacing the route's, the failures counted in `/metrics`, and keys hidden by the
//! admin API.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use super::harness::{assert_policy_answers, assert_unauthorized};
use crate::support::{admin_get, start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-key-auth-31c9";

/// Consumers `alice` (gold plan, her own `request_headers`), `bob` and `guest`; route `/api/*`
/// with `key_auth` (header or query), route `/open/*` that takes `guest` for keyless requests.
fn config(upstream: &EchoUpstream) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "consumers:
  - id: alice
    credentials:
      key_auth: {{key: alice-key-0123456789}}
    policies:
      - request_headers: {{set: {{x-plan: gold}}}}
  - id: bob
    credentials:
      key_auth: [{{key: bob-old-key-000}}, {{key: bob-new-key-111}}]
  - id: guest
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: api
    paths: [/api/*]
    upstream: up
    policies:
      - key_auth: {{query: api_key, cookie: api_cookie}}
      - request_headers: {{set: {{x-plan: free}}}}
  - id: open
    paths: [/open/*]
    upstream: up
    policies:
      - key_auth: {{anonymous_consumer: guest, hide_credentials: false}}
",
            upstream = upstream.addr()
        ),
    )
}

#[tokio::test]
async fn admits_a_known_key_hides_it_and_applies_the_consumers_own_policies() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let alice =
        client.request(Method::GET, &gateway.url("/api/orders"), &[("apikey", "alice-key-0123456789")], "").await;
    assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
    let seen = alice.json();
    assert!(seen["headers"]["apikey"].is_null(), "the key reached the upstream: {seen}");
    assert_eq!(seen["headers"]["x-plan"], "gold", "alice's own request_headers replaces the route's");

    let bob = client.get(&gateway.url("/api/orders?api_key=bob-new-key-111&page=2")).await;
    assert_eq!(bob.status, StatusCode::OK, "{bob:?}");
    let seen = bob.json();
    assert_eq!(seen["headers"]["x-plan"], "free", "bob has no policies of his own");
    assert_eq!(seen["query"], "page=2", "the key's query parameter is removed: {seen}");

    let cookie =
        client.request(Method::GET, &gateway.url("/api/orders"), &[("cookie", "api_cookie=bob-old-key-000")], "").await;
    assert_eq!(cookie.status, StatusCode::OK, "{cookie:?}");
    assert_eq!(upstream.requests(), 3);
}

#[tokio::test]
async fn refuses_missing_and_unknown_keys_with_401_and_counts_them() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let missing = client.get(&gateway.url("/api/orders")).await;
    assert_unauthorized(&missing, "Key realm=\"gantry\"", "missing-credentials");

    let wrong = client.request(Method::GET, &gateway.url("/api/orders"), &[("apikey", "guessed-key-999")], "").await;
    assert_unauthorized(&wrong, "Key realm=\"gantry\"", "invalid-credentials");
    assert!(!String::from_utf8_lossy(&wrong.body).contains("guessed-key-999"));
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");

    let logs = gateway.logs().join("\n");
    for secret in ["guessed-key-999", "alice-key-0123456789", "bob-old-key-000", "bob-new-key-111"] {
        assert!(!logs.contains(secret), "the log shows a key: {logs}");
    }
    assert_policy_answers(&gateway, "key_auth", 401, 2).await;
}

#[tokio::test]
async fn lets_the_anonymous_consumer_in_without_a_key_but_refuses_a_wrong_one() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let keyless = client.get(&gateway.url("/open/catalog")).await;
    assert_eq!(keyless.status, StatusCode::OK, "{keyless:?}");

    let wrong = client.request(Method::GET, &gateway.url("/open/catalog"), &[("apikey", "wrong-key-777")], "").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let kept =
        client.request(Method::GET, &gateway.url("/open/catalog"), &[("apikey", "alice-key-0123456789")], "").await;
    assert_eq!(kept.status, StatusCode::OK);
    assert_eq!(kept.json()["headers"]["apikey"], "alice-key-0123456789", "hide_credentials: false keeps the key");
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn the_admin_api_never_shows_a_key() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));

    for path in ["/consumers/alice", "/consumers/bob", "/config"] {
        let response = admin_get(&gateway, ADMIN_KEY, path).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {response:?}");
        let body = String::from_utf8_lossy(&response.body).into_owned();
        for key in ["alice-key-0123456789", "bob-old-key-000", "bob-new-key-111"] {
            assert!(!body.contains(key), "{path} shows a key: {body}");
        }
        assert!(body.contains("***"), "{path}: {body}");
    }
}
