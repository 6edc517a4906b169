//! `aggregate` through a running gateway against real upstreams: a route without an upstream
//! of its own fans out to two echo upstreams at once and merges their answers; the answer takes
//! about as long as the slower one, not their sum; an optional subrequest that fails or times
//! out comes back `null` and is listed in `X-Aggregate-Partial`; a required one that fails
//! turns the answer into a 502 naming it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-aggregate-7d1f";

/// `/profile/{user}` aggregates `user` (required, from `users`) and `orders` (from `orders`,
/// required or not as `orders_required` says, at `orders_path`, with `orders_timeout`).
fn config(
    users: SocketAddr,
    orders: SocketAddr,
    orders_path: &str,
    orders_required: bool,
    orders_timeout: &str,
) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "upstreams:
  - id: users
    endpoints: [{users}]
  - id: orders
    endpoints: [{orders}]
    retries: {{attempts: 0}}
routes:
  - id: profile
    paths: ['/profile/{{user}}']
    policies:
      - aggregate:
          timeout: 5s
          requests:
            - name: user
              upstream: users
              path: /users/{{user}}?view={{query.view}}
              headers: [authorization]
            - name: orders
              upstream: orders
              path: {orders_path}
              required: {orders_required}
              timeout: {orders_timeout}
"
        ),
    )
}

#[tokio::test]
async fn merges_both_answers_in_about_the_time_of_the_slower() {
    const SLOWER: Duration = Duration::from_millis(700);
    let users = EchoUpstream::start("users").await;
    users.set_delay(SLOWER);
    let orders = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&config(users.addr(), orders.addr(), "/delay/700", true, "5s"));
    let client = TestClient::default();

    let started = Instant::now();
    let response = client
        .request(
            Method::GET,
            &gateway.url("/profile/ada%20l?view=full&other=1"),
            &[("authorization", "Bearer ada-token"), ("cookie", "session=1")],
            "",
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-aggregate-partial"), None, "nothing failed");
    // Sent one after the other, the two would take at least 1.4 s, past the bound.
    assert!(elapsed >= SLOWER, "answered before the slower upstream did: {elapsed:?}");
    assert!(elapsed < SLOWER * 3 / 2 + Duration::from_millis(300), "not sent at once: {elapsed:?}");

    let body = response.json();
    let user = &body["user"];
    assert_eq!(user["upstream"], "users");
    assert_eq!(user["path"], "/users/ada%20l");
    assert_eq!(user["query"], "view=full");
    assert_eq!(user["headers"]["authorization"], "Bearer ada-token", "a listed header is copied");
    assert!(user["headers"].get("cookie").is_none(), "an unlisted one is not");
    assert_eq!(user["headers"]["accept"], "application/json");
    let request_id = response.header("x-request-id").expect("X-Request-Id");
    assert_eq!(user["headers"]["x-request-id"], request_id, "the subrequest carries the request's id");
    assert_eq!(user["headers"]["x-forwarded-for"], "127.0.0.1");
    let orders_answer = &body["orders"];
    assert_eq!((&orders_answer["upstream"], &orders_answer["path"]), (&"orders".into(), &"/delay/700".into()));
    assert_eq!(users.requests(), 1);
    assert_eq!(orders.requests(), 1);
    assert_policy_answers(&gateway, "aggregate", 200, 1).await;
}

#[tokio::test]
async fn an_optional_subrequest_that_fails_or_times_out_is_null_and_listed() {
    let users = EchoUpstream::start("users").await;
    let orders = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&config(users.addr(), orders.addr(), "/delay/3000", false, "300ms"));
    let client = TestClient::default();

    // Timed out at its own 300 ms, long before the upstream's 3 s.
    let started = Instant::now();
    let response = client.get(&gateway.url("/profile/ada?view=short")).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.header("x-aggregate-partial"), Some("orders"));
    let body = response.json();
    assert_eq!(body["orders"], serde_json::Value::Null);
    assert_eq!(body["user"]["path"], "/users/ada");

    // Answering an error status.
    orders.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    orders.set_delay(Duration::ZERO);
    let gateway = start_gateway(&config(users.addr(), orders.addr(), "/orders", false, "1s"));
    let response = client.get(&gateway.url("/profile/ada?view=short")).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.header("x-aggregate-partial"), Some("orders"));
    assert_eq!(response.json()["orders"], serde_json::Value::Null);

    // Not answering at all.
    let dead = orders.stop().await;
    let gateway = start_gateway(&config(users.addr(), dead, "/orders", false, "1s"));
    let response = client.get(&gateway.url("/profile/ada?view=short")).await;
    assert_eq!(response.header("x-aggregate-partial"), Some("orders"));
    assert_eq!(response.json()["user"]["upstream"], "users");
}

#[tokio::test]
async fn a_required_subrequest_that_fails_answers_502_naming_it() {
    let users = EchoUpstream::start("users").await;
    let orders = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&config(users.addr(), orders.addr(), "/status/500", true, "1s"));
    let client = TestClient::default();

    let response = client.get(&gateway.url("/profile/ada?view=short")).await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/aggregate-failed");
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(detail.contains("`orders`") && detail.contains("500"), "{detail}");

    // A value the path needs and the request lacks fails the required `user` before sending it.
    let before = users.requests();
    let response = client.get(&gateway.url("/profile/ada")).await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    let detail = response.json()["detail"].as_str().expect("a detail").to_owned();
    assert!(detail.contains("`user`") && detail.contains("view"), "{detail}");
    assert_eq!(users.requests(), before);
    assert_policy_answers(&gateway, "aggregate", 502, 2).await;
}
