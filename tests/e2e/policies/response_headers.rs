//! `response_headers` through a running gateway: the client sees the changed headers on
//! upstream responses and on responses the gateway makes for the route after the policy's
//! stage was reached (a mock, a forwarding failure), but not on responses made before it
//! (an access denial) nor on the 404 of a request that matched no route.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::StatusCode;

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn renames_removes_sets_and_adds_headers_of_the_upstream_response() {
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
      - response_headers:
          rename: {{X-Upstream: X-Served-By}}
          remove: [Content-Type]
          set: {{Cache-Control: no-store}}
          add: {{Vary: Origin}}
  - id: untouched
    paths: [/untouched]
    upstream: orders
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    let changed = client.get(&gateway.url("/changed")).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.header("x-served-by"), Some("orders"));
    assert_eq!(changed.header("x-upstream"), None, "renamed away");
    assert_eq!(changed.header("content-type"), None, "removed");
    assert_eq!(changed.header("cache-control"), Some("no-store"));
    assert_eq!(changed.header("vary"), Some("Origin"));
    assert_eq!(changed.json()["path"], "/changed", "the body is not changed");

    let untouched = client.get(&gateway.url("/untouched")).await;
    assert_eq!(untouched.header("x-upstream"), Some("orders"));
    assert_eq!(untouched.header("content-type"), Some("application/json"));
    assert_eq!(untouched.header("cache-control"), None);
    assert_eq!(untouched.header("x-served-by"), None);
}

#[tokio::test]
async fn changes_the_response_of_a_mock_on_the_same_route() {
    let gateway = start_gateway(&with_listener(
        r#"routes:
  - id: stub
    paths: [/stub]
    policies:
      - mock_response:
          status: 202
          headers: {X-Internal: secret, X-Mock: "true"}
          body: accepted
      - response_headers:
          remove: [X-Internal]
          set: {X-Frame-Options: DENY}
"#,
    ));
    let response = TestClient::default().get(&gateway.url("/stub")).await;
    assert_eq!(response.status, StatusCode::ACCEPTED);
    assert_eq!(response.body, "accepted");
    assert_eq!(response.header("x-mock"), Some("true"));
    assert_eq!(response.header("x-internal"), None, "the mock's header must be removed");
    assert_eq!(response.header("x-frame-options"), Some("DENY"));
}

/// A forwarding failure is answered after every request hook ran, so every response hook of
/// the route sees it; a 404 belongs to no route, so no route's policies see it.
#[tokio::test]
async fn changes_a_gateway_error_of_the_route_but_not_the_404_of_no_route() {
    // An address nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let gateway = start_gateway(&with_listener(&format!(
        r#"global_policies:
  - response_headers:
      set: {{Strict-Transport-Security: max-age=63072000}}
upstreams:
  - id: down
    endpoints: [{closed}]
routes:
  - id: broken
    paths: [/broken]
    upstream: down
"#
    )));
    let client = TestClient::default();

    let failed = client.get(&gateway.url("/broken")).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.header("content-type"), Some("application/problem+json"));
    assert_eq!(failed.header("strict-transport-security"), Some("max-age=63072000"));

    let missing = client.get(&gateway.url("/nowhere")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("strict-transport-security"), None);
}

/// Documented: when a policy of an earlier stage (`access`) answers, the pipeline stops
/// before `transform`, so only the policies the request reached see the response.
#[tokio::test]
async fn leaves_a_denial_made_before_its_stage_unchanged() {
    let upstream = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: orders
    endpoints: [{addr}]
routes:
  - id: denied
    paths: [/denied]
    upstream: orders
    policies:
      - response_headers: {{set: {{X-Seen-By-Response-Headers: "yes"}}}}
      - ip_restriction: {{deny: [127.0.0.0/8]}}
  - id: allowed
    paths: [/allowed]
    upstream: orders
    policies:
      - response_headers: {{set: {{X-Seen-By-Response-Headers: "yes"}}}}
      - ip_restriction: {{allow: [127.0.0.0/8]}}
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    let denied = client.get(&gateway.url("/denied")).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.header("x-seen-by-response-headers"), None);

    let allowed = client.get(&gateway.url("/allowed")).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(allowed.header("x-seen-by-response-headers"), Some("yes"));
}
