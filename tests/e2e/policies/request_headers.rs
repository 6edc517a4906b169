//! `request_headers` through a running gateway: the upstream sees the renamed, removed, set
//! and added headers, and routes without the policy pass headers unchanged.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use super::harness::{get_from, RecordingUpstream, LOOPBACK};
use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn renames_removes_sets_and_adds_headers_seen_by_the_upstream() {
    let upstream = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: orders
    endpoints: [{addr}]
routes:
  - id: changed
    paths: [/changed]
    upstream: orders
    policies:
      - request_headers:
          rename: {{X-Client-Id: X-Consumer-Id}}
          remove: [Cookie, X-Debug]
          set: {{X-Env: production}}
          add: {{X-Added: gantry}}
  - id: untouched
    paths: [/untouched]
    upstream: orders
"#,
        addr = upstream.addr()
    )));
    let sent = [("x-client-id", "c-42"), ("cookie", "session=secret"), ("x-debug", "1"), ("x-env", "dev")];
    let client = TestClient::default();

    let changed = client.request(Method::GET, &gateway.url("/changed"), &sent, "").await;
    assert_eq!(changed.status, StatusCode::OK);
    let seen = &changed.json()["headers"];
    assert_eq!(seen["x-consumer-id"], "c-42", "renamed header carries the old value: {seen}");
    assert!(seen.get("x-client-id").is_none(), "the old name is gone after a rename: {seen}");
    assert!(seen.get("cookie").is_none(), "removed header reached the upstream: {seen}");
    assert!(seen.get("x-debug").is_none(), "removed header reached the upstream: {seen}");
    assert_eq!(seen["x-env"], "production", "set replaces the client's value: {seen}");
    assert_eq!(seen["x-added"], "gantry");

    let untouched = client.request(Method::GET, &gateway.url("/untouched"), &sent, "").await;
    let seen = &untouched.json()["headers"];
    assert_eq!(seen["x-client-id"], "c-42");
    assert_eq!(seen["cookie"], "session=secret");
    assert_eq!(seen["x-env"], "dev");
    assert!(seen.get("x-added").is_none() && seen.get("x-consumer-id").is_none(), "{seen}");
}

/// The echo upstream shows one value per name, so this uses one that records every header
/// line, to tell `add` (beside the client's value) from `set` (instead of it).
#[tokio::test]
async fn adds_a_value_beside_the_clients_and_sets_one_in_place_of_all_of_them() {
    let upstream = RecordingUpstream::start().await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: recorder
    endpoints: [{addr}]
routes:
  - id: headers
    paths: [/headers]
    upstream: recorder
    policies:
      - request_headers:
          add: {{Via: gantry}}
          set: {{X-Tag: only}}
"#,
        addr = upstream.addr()
    )));
    let request = http::Request::get("/headers")
        .header("host", "api.example.com")
        .header("via", "1.1 edge")
        .header("x-tag", "one")
        .header("x-tag", "two")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = super::harness::send_from(LOOPBACK, gateway.addr(0), request).await.expect("request sent");
    assert_eq!(response.status, StatusCode::OK);

    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].values("via"), ["1.1 edge", "gantry"]);
    assert_eq!(received[0].values("x-tag"), ["only"]);

    // Without the client's header, `add` still adds it.
    let response = get_from(LOOPBACK, gateway.addr(0), "/headers").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(upstream.received()[1].values("via"), ["gantry"]);
}
