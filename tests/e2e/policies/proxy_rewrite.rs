//! `proxy_rewrite` through a running gateway: the upstream receives the path made from regex
//! captures or a fixed URI (with the query kept, extended or dropped), the new method and
//! `Host`, and the route's own `rewrite` applies only where the policy leaves the path alone.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn sends_the_rewritten_path_method_and_host_upstream() {
    let upstream = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: orders
    endpoints: [{addr}]
routes:
  - id: captured
    paths: [/api/*]
    upstream: orders
    rewrite:
      add_prefix: /route-prefix
    policies:
      - proxy_rewrite:
          regex_uri: ['^/api/(?P<version>v\d+)/(.*)$', '/internal/${{version}}/$2']
          method: PUT
          host: orders.internal
  - id: fixed
    paths: [/search]
    upstream: orders
    policies:
      - proxy_rewrite:
          uri: /v2/query?source=gateway
  - id: fixed-no-query
    paths: [/find]
    upstream: orders
    policies:
      - proxy_rewrite:
          uri: /v2/query
          keep_query: false
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    let captured = client.request(Method::GET, &gateway.url("/api/v1/orders/7?expand=items"), &[], "").await;
    assert_eq!(captured.status, StatusCode::OK, "{captured:?}");
    let seen = captured.json();
    assert_eq!(seen["path"], "/internal/v1/orders/7", "the policy's path, without the route's prefix: {seen}");
    assert_eq!(seen["query"], "expand=items");
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["headers"]["host"], "orders.internal");

    // A path the expression does not match is left to the route's rewrite, method and host still change.
    let unmatched = client.request(Method::GET, &gateway.url("/api/health"), &[], "").await;
    let seen = unmatched.json();
    assert_eq!(seen["path"], "/route-prefix/api/health", "{seen}");
    assert_eq!(seen["method"], "PUT");

    let fixed = client.request(Method::GET, &gateway.url("/search?q=shoes"), &[], "").await;
    let seen = fixed.json();
    assert_eq!(seen["path"], "/v2/query", "{seen}");
    assert_eq!(seen["query"], "source=gateway&q=shoes");
    assert_eq!(seen["method"], "GET");

    let dropped = client.request(Method::GET, &gateway.url("/find?q=shoes"), &[], "").await;
    let seen = dropped.json();
    assert_eq!(seen["path"], "/v2/query", "{seen}");
    assert!(seen["query"].is_null(), "the client's query was dropped: {seen}");
}

#[tokio::test]
async fn refuses_a_configuration_with_an_invalid_regex() {
    let config = with_listener(
        r#"upstreams:
  - id: orders
    endpoints: [127.0.0.1:9]
routes:
  - id: broken
    paths: [/api/*]
    upstream: orders
    policies:
      - proxy_rewrite:
          regex_uri: ['^/api/(', '/$1']
"#,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gantry.yaml");
    std::fs::write(&file, config).expect("write config");
    let output = std::process::Command::new(crate::support::gantry_binary())
        .args(["validate", "--config", file.to_str().expect("UTF-8 temp path")])
        .env_remove("GANTRY_CONFIG")
        .output()
        .expect("run gantry");
    assert!(!output.status.success(), "an invalid regex was accepted");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("proxy_rewrite.regex_uri[0]: invalid regular expression"), "{printed}");
}
