//! `json_threat_protection` through a running gateway: a JSON body past a limit is refused
//! with a problem naming that limit and never reaches the upstream; a body within the limits
//! arrives intact; a body declared too large is refused from its head, a chunked one while
//! being read; other media types stream through unchecked.

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::EchoUpstream;
use http::{Method, Request, StatusCode};

use super::harness::{assert_policy_answers, send_from, ChannelBody, LOOPBACK};
use crate::support::{start_gateway, with_admin};

fn gateway_for(upstream: &EchoUpstream) -> gantry_testkit::GatewayProcess {
    start_gateway(&with_admin(
        "admin-key-long-enough",
        &format!(
            "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: orders\n    paths: [/orders]\n    upstream: up\n    policies:\n      - json_threat_protection:\n          max_body_bytes: 200\n          max_depth: 3\n          max_array_items: 4\n          max_string_bytes: 10\n",
            upstream.addr()
        ),
    ))
}

async fn post_json(gateway: &gantry_testkit::GatewayProcess, body: &str) -> TestResponse {
    TestClient::default()
        .request(Method::POST, &gateway.url("/orders"), &[("content-type", "application/json")], body.to_owned())
        .await
}

fn assert_refused(response: &TestResponse, status: StatusCode, limit: &str) {
    assert_eq!(response.status, status, "{:?}", response.body);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_eq!(response.json()["limit"], limit, "{:?}", response.body);
}

#[tokio::test]
async fn refuses_bodies_past_each_limit_and_forwards_the_rest_intact() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = gateway_for(&upstream);

    let within = r#"{"items": [{"sku": "a-1"}, 2, 3, 4]}"#;
    let accepted = post_json(&gateway, within).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.json()["body"], within, "the upstream must get the body as sent");

    assert_refused(&post_json(&gateway, r#"{"a": [{"b": [1]}]}"#).await, StatusCode::BAD_REQUEST, "max_depth");
    assert_refused(&post_json(&gateway, "[1, 2, 3, 4, 5]").await, StatusCode::BAD_REQUEST, "max_array_items");
    let secret = r#"{"password": "a very long secret"}"#;
    let refused = post_json(&gateway, secret).await;
    assert_refused(&refused, StatusCode::BAD_REQUEST, "max_string_bytes");
    assert!(!String::from_utf8_lossy(&refused.body).contains("secret"), "the problem repeats the body");
    let oversized = format!("[\"{}\"]", "x".repeat(300));
    assert_refused(&post_json(&gateway, &oversized).await, StatusCode::PAYLOAD_TOO_LARGE, "max_body_bytes");

    let malformed = post_json(&gateway, "{\"a\": ").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["type"], "https://gantry.dev/problems/invalid-json");

    assert_eq!(upstream.requests(), 1, "only the body within the limits may reach the upstream");
    assert_policy_answers(&gateway, "json_threat_protection", 400, 4).await;
    assert_policy_answers(&gateway, "json_threat_protection", 413, 1).await;
}

#[tokio::test]
async fn lets_other_media_types_through_unchecked() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = gateway_for(&upstream);
    let deep = "[[[[[[1]]]]]]";
    let response = TestClient::default()
        .request(Method::POST, &gateway.url("/orders"), &[("content-type", "text/plain")], deep)
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["body"], deep);
}

#[tokio::test]
async fn refuses_a_chunked_body_past_max_body_bytes_while_reading_it() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = gateway_for(&upstream);
    let (chunks, body) = ChannelBody::new();
    let request = Request::post("/orders")
        .header("host", gateway.addr(0).to_string())
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let response = tokio::spawn(send_from(LOOPBACK, gateway.addr(0), request));
    chunks.send(Bytes::from(format!("[\"{}", "x".repeat(150)))).await.expect("first chunk");
    chunks.send(Bytes::from(format!("{}\"]", "y".repeat(150)))).await.expect("second chunk");
    drop(chunks);
    let response = tokio::time::timeout(gantry_testkit::deadline(), response)
        .await
        .expect("an answer in time")
        .expect("client task")
        .expect("a response");
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", response.body);
    assert_eq!(response.json()["type"], "https://gantry.dev/problems/request-body-too-large");
    assert_eq!(upstream.requests(), 0);
}
