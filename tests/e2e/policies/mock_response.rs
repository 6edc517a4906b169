//! `mock_response` through a running gateway, on routes that have no upstream at all: the
//! configured status, headers and body (text or JSON) come back, after the `delay` if set.

use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn answers_with_the_configured_status_headers_and_json_without_an_upstream() {
    let gateway = start_gateway(&with_listener(
        r#"routes:
  - id: orders-stub
    paths: ["/v2/orders/{id}"]
    methods: [GET]
    policies:
      - mock_response:
          status: 201
          headers: {X-Mock: "true", Cache-Control: no-store}
          json:
            id: 42
            state: shipped
            items: [{sku: A-1, quantity: 2}]
"#,
    ));
    let client = TestClient::default();

    let response = client.get(&gateway.url("/v2/orders/42")).await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-mock"), Some("true"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(
        response.json(),
        serde_json::json!({"id": 42, "state": "shipped", "items": [{"sku": "A-1", "quantity": 2}]})
    );

    // The route's matching still applies: another method is not this route.
    let other = client.request(Method::DELETE, &gateway.url("/v2/orders/42"), &[], "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn answers_with_a_text_body_and_a_configured_content_type() {
    let gateway = start_gateway(&with_listener(
        r#"routes:
  - id: maintenance
    paths: [/maintenance]
    policies:
      - mock_response:
          status: 503
          headers: {Retry-After: "600"}
          body: We are upgrading; back in ten minutes.
  - id: typed
    paths: [/typed]
    policies:
      - mock_response:
          headers: {Content-Type: application/vnd.api+json}
          json: {data: []}
  - id: empty
    paths: [/empty]
    policies:
      - mock_response: {status: 204}
"#,
    ));
    let client = TestClient::default();

    let maintenance = client.get(&gateway.url("/maintenance")).await;
    assert_eq!(maintenance.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(maintenance.header("retry-after"), Some("600"));
    assert_eq!(maintenance.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(maintenance.body, "We are upgrading; back in ten minutes.");

    let typed = client.get(&gateway.url("/typed")).await;
    assert_eq!(typed.status, StatusCode::OK);
    assert_eq!(typed.header("content-type"), Some("application/vnd.api+json"));
    assert_eq!(typed.json(), serde_json::json!({"data": []}));

    let empty = client.get(&gateway.url("/empty")).await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert!(empty.body.is_empty());
    assert_eq!(empty.header("content-type"), None);
}

#[tokio::test]
async fn waits_for_the_delay_before_answering() {
    let delay = Duration::from_millis(400);
    let gateway = start_gateway(&with_listener(&format!(
        r#"routes:
  - id: slow
    paths: [/slow]
    policies:
      - mock_response: {{body: slow, delay: {millis}ms}}
"#,
        millis = delay.as_millis()
    )));
    let client = TestClient::default();

    let started = Instant::now();
    let response = client.get(&gateway.url("/slow")).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "slow");
    assert!(elapsed >= delay, "answered after {elapsed:?}, before the {delay:?} delay");
}
