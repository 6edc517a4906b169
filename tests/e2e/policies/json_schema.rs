//! `json_schema` through a running gateway: request bodies checked against a schema read from
//! a file beside the configuration (with a `$ref` to a second file), refused with a problem
//! listing the errors before the upstream; upstream responses checked too, replaced by a 502
//! or, in log mode, sent on; an invalid schema file rejected when the configuration loads.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{gantry_binary, with_admin};

/// The echo upstream answers with a JSON description of the request: `method`, `path`,
/// `body_length`... The response schema wants `method` to be `POST`, so `GET` answers fail it.
fn start(upstream: &EchoUpstream, on_failure: &str) -> GatewayProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("schemas")).expect("schemas dir");
    std::fs::write(
        dir.path().join("schemas/order.yaml"),
        "type: object\nrequired: [sku, quantity]\nproperties:\n  sku: {$ref: sku.json}\n  quantity: {type: integer, minimum: 1}\n",
    )
    .expect("write schema");
    std::fs::write(dir.path().join("schemas/sku.json"), r#"{"type": "string", "pattern": "^[A-Z]+-[0-9]+$"}"#)
        .expect("write schema");
    let yaml = with_admin(
        "admin-key-long-enough",
        &format!(
            "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: orders\n    paths: [/orders]\n    upstream: up\n    policies:\n      - json_schema:\n          methods: [POST]\n          request: {{file: schemas/order.yaml}}\n          response:\n            on_failure: {on_failure}\n            schema: {{type: object, required: [method], properties: {{method: {{const: POST}}}}}}\n",
            upstream.addr()
        ),
    );
    GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[])
}

async fn post(gateway: &GatewayProcess, body: &str) -> TestResponse {
    TestClient::default()
        .request(Method::POST, &gateway.url("/orders"), &[("content-type", "application/json")], body.to_owned())
        .await
}

#[tokio::test]
async fn validates_requests_against_a_schema_file_before_the_upstream() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start(&upstream, "reject");

    let valid = r#"{"sku": "ABC-12", "quantity": 3}"#;
    let accepted = post(&gateway, valid).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.json()["body"], valid);

    let refused = post(&gateway, r#"{"sku": "lower-case-secret", "quantity": 0}"#).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.body);
    let problem = refused.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-validation-failed");
    assert_eq!(problem["error_count"], 2);
    let mut paths: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|error| error["instance_path"].as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/quantity", "/sku"]);
    assert!(!String::from_utf8_lossy(&refused.body).contains("secret"), "the problem repeats a value");

    let form = TestClient::default()
        .request(Method::POST, &gateway.url("/orders"), &[("content-type", "text/plain")], "sku=A-1")
        .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(upstream.requests(), 1, "refused requests reached the upstream");
    assert_policy_answers(&gateway, "json_schema", 400, 1).await;
}

#[tokio::test]
async fn replaces_a_response_that_does_not_match_with_502() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start(&upstream, "reject");
    let answered = TestClient::default().get(&gateway.url("/orders")).await;
    assert_eq!(answered.status, StatusCode::BAD_GATEWAY, "{:?}", answered.body);
    let problem = answered.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/response-validation-failed");
    assert_eq!(problem["errors"][0]["instance_path"], "/method");
    assert_eq!(upstream.requests(), 1, "the request itself went upstream");
    assert_policy_answers(&gateway, "json_schema", 502, 1).await;

    // The answer to a HEAD has no body to check, so it goes through.
    let head = TestClient::default().request(Method::HEAD, &gateway.url("/orders"), &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
}

#[tokio::test]
async fn sends_a_mismatching_response_on_in_log_mode() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start(&upstream, "log");
    let answered = TestClient::default().get(&gateway.url("/orders")).await;
    assert_eq!(answered.status, StatusCode::OK);
    assert_eq!(answered.json()["method"], "GET", "the upstream's body is sent on unchanged");
    assert_eq!(answered.header("x-upstream"), Some("up"));
    gantry_testkit::eventually("the mismatch is logged", || async {
        gateway.logs().iter().any(|line| line.contains("does not match its schema")).then_some(())
    })
    .await;
}

#[test]
fn refuses_to_start_with_a_schema_file_that_is_not_a_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bad.json"), r#"{"type": 12}"#).expect("write");
    let config = dir.path().join("gantry.yaml");
    std::fs::write(
        &config,
        "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:9]\nroutes:\n  - id: r\n    paths: [/r]\n    upstream: up\n    policies:\n      - json_schema: {request: {file: bad.json}}\n",
    )
    .expect("write");
    let output = std::process::Command::new(gantry_binary())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("run gantry validate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("routes[r].policies[0].json_schema.request.file: not a valid JSON Schema"),
        "{stdout}{stderr}"
    );
}
