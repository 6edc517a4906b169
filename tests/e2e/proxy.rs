//! Plain reverse proxying over HTTP/1.1.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::StatusCode;

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn proxies_a_request_with_forwarding_headers_and_a_request_id() {
    let upstream = EchoUpstream::start("one").await;
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: api\n    paths: [/api/*]\n    upstream: up\n    rewrite: {{strip_prefix: /api}}\n",
        upstream.addr()
    )));
    let client = TestClient::default();
    let response = client.get(&gateway.url("/api/users?page=2")).await;
    assert_eq!(response.status, StatusCode::OK);
    let echoed = response.json();
    assert_eq!(echoed["path"], "/users");
    assert_eq!(echoed["query"], "page=2");
    assert_eq!(echoed["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "http");
    let request_id = response.header("x-request-id").expect("request id returned").to_owned();
    assert_eq!(echoed["headers"]["x-request-id"], request_id.as_str());
}

#[tokio::test]
async fn answers_an_unknown_route_with_a_404_problem() {
    let gateway = start_gateway(&with_listener(
        "routes:\n  - id: only\n    paths: [/only]\n    policies:\n      - mock_response: {body: hi}\n",
    ));
    let response = TestClient::default().get(&gateway.url("/elsewhere")).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_eq!(response.json()["type"], "https://gantry.dev/problems/route-not-found");
}
