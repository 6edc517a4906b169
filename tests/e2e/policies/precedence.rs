//! How policies attached at different places combine, through a running gateway:
//! global, service, policy-set and route policies all apply; a later place's policy replaces
//! an earlier one of the same name (global < service < policy sets in order < route); and
//! request hooks run by stage, whatever order or place they were written in.

use bytes::Bytes;
use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use super::harness::{get_from, send_from, LOOPBACK, OTHER_LOOPBACK};
use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn applies_global_service_policy_set_and_route_policies_together() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"global_policies:
  - response_headers: {{set: {{X-From-Global: "yes"}}}}
upstreams:
  - id: up
    endpoints: [{addr}]
services:
  - id: api
    upstream: up
    policies:
      - request_headers: {{set: {{X-From-Service: "yes"}}}}
policy_sets:
  - id: small-bodies
    policies:
      - request_size_limit: {{max_body_bytes: 16}}
routes:
  - id: layered
    paths: [/layered]
    service: api
    policy_sets: [small-bodies]
    policies:
      - ip_restriction: {{deny: [127.0.0.2]}}
"#,
        addr = upstream.addr()
    )));
    let addr = gateway.addr(0);

    let passed = get_from(LOOPBACK, addr, "/layered").await;
    assert_eq!(passed.status, StatusCode::OK);
    assert_eq!(passed.header("x-from-global"), Some("yes"), "global policy missing");
    assert_eq!(passed.json()["headers"]["x-from-service"], "yes", "service policy missing");

    let large =
        Request::post("/layered").header("host", "api.example.com").body(Full::new(Bytes::from(vec![b'x'; 17])));
    let large = send_from(LOOPBACK, addr, large.expect("request")).await.expect("response");
    assert_eq!(large.status, StatusCode::PAYLOAD_TOO_LARGE, "policy-set policy missing");

    let denied = get_from(OTHER_LOOPBACK, addr, "/layered").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "route policy missing");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn lets_each_later_place_replace_an_earlier_policy_of_the_same_name() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"global_policies:
  - request_headers: {{set: {{X-Layer: global, X-Global-Only: "yes"}}}}
upstreams:
  - id: up
    endpoints: [{addr}]
services:
  - id: api
    upstream: up
    policies:
      - request_headers: {{set: {{X-Layer: service}}}}
policy_sets:
  - id: first
    policies:
      - request_headers: {{set: {{X-Layer: first-set}}}}
  - id: second
    policies:
      - request_headers: {{set: {{X-Layer: second-set}}}}
routes:
  - id: global-only
    paths: [/global]
    upstream: up
  - id: with-service
    paths: [/service]
    service: api
  - id: with-sets
    paths: [/sets]
    service: api
    policy_sets: [second, first]
  - id: with-own
    paths: [/own]
    service: api
    policy_sets: [first, second]
    policies:
      - request_headers: {{set: {{X-Layer: route}}}}
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();
    let layer_seen = |path: &'static str| {
        let client = client.clone();
        let url = gateway.url(path);
        async move { client.get(&url).await.json()["headers"].clone() }
    };

    let global = layer_seen("/global").await;
    assert_eq!(global["x-layer"], "global");
    assert_eq!(global["x-global-only"], "yes");

    let service = layer_seen("/service").await;
    assert_eq!(service["x-layer"], "service");
    // Replaced, not merged: the global settings are gone entirely.
    assert!(service.get("x-global-only").is_none(), "{service}");

    // Policy sets apply in the order the route lists them: the last one wins.
    assert_eq!(layer_seen("/sets").await["x-layer"], "first-set");

    let own = layer_seen("/own").await;
    assert_eq!(own["x-layer"], "route");
    assert!(own.get("x-global-only").is_none(), "{own}");
}

#[tokio::test]
async fn runs_request_policies_by_stage_whatever_order_and_place_they_are_written_in() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"global_policies:
  - mock_response: {{status: 200, body: mocked}}
upstreams:
  - id: up
    endpoints: [{addr}]
routes:
  - id: mock-listed-first
    paths: [/listed-first]
    policies:
      - mock_response: {{body: should not answer}}
      - response_headers: {{set: {{X-Transform-Ran: "yes"}}}}
      - ip_restriction: {{deny: [127.0.0.0/8]}}
  - id: global-mock-route-restriction
    paths: [/global-mock]
    policies:
      - ip_restriction: {{deny: [127.0.0.2]}}
  - id: redirect-listed-last
    paths: [/redirect-last]
    upstream: up
    policies:
      - acl: {{allow_groups: [staff]}}
      - redirect: {{http_to_https: true, status: 308}}
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    // ingress (ip_restriction) runs before transform and forward (mock_response), though listed after them.
    let denied = client.get(&gateway.url("/listed-first")).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.json()["type"], "https://gantry.dev/problems/ip-denied");
    assert_eq!(denied.header("x-transform-ran"), None, "the transform stage was never reached");

    // A route's ingress policy still runs before a global terminal one.
    let addr = gateway.addr(0);
    let mocked = get_from(LOOPBACK, addr, "/global-mock").await;
    assert_eq!(mocked.status, StatusCode::OK);
    assert_eq!(mocked.body, "mocked");
    assert_eq!(get_from(OTHER_LOOPBACK, addr, "/global-mock").await.status, StatusCode::FORBIDDEN);

    // ingress (redirect) runs before access (acl), so even a refused client is redirected first.
    let redirected =
        client.request(Method::GET, &gateway.url("/redirect-last?a=1"), &[("host", "example.com")], "").await;
    assert_eq!(redirected.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirected.header("location"), Some("https://example.com/redirect-last?a=1"));
    assert_eq!(upstream.requests(), 0);
}
