//! `body_transform` through a running gateway: the upstream receives the changed JSON request
//! body with a matching length, the client receives the changed JSON response body, other
//! bodies pass or are refused as configured.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn transforms_request_and_response_bodies_on_their_way() {
    let upstream = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: orders
    endpoints: [{addr}]
routes:
  - id: orders
    paths: ["/orders/{{order}}"]
    upstream: orders
    policies:
      - body_transform:
          request:
            - set: {{path: meta.tenant, value: "${{header.x-tenant}}"}}
            - set: {{path: meta.order, value: "${{path_param.order}}"}}
            - rename: {{path: customer.name, to: full_name}}
            - remove: [debug]
            - filter: {{names: [password]}}
            - map_values: {{path: priority, values: {{high: 1, low: 3}}, default: 2}}
          response:
            - remove: [headers, version]
            - rename: {{path: upstream, to: served_by}}
  - id: strict
    paths: [/strict]
    upstream: orders
    policies:
      - body_transform:
          request: [{{remove: [debug]}}]
          non_json_request: reject
          max_body_bytes: 64
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();
    let sent = json!({"customer": {"name": "Ann", "password": "hunter2"}, "priority": "high", "debug": true});
    let response = client
        .request(
            Method::POST,
            &gateway.url("/orders/o-7"),
            &[("content-type", "application/json"), ("x-tenant", "acme")],
            sent.to_string(),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let answer = response.json();
    assert!(answer.get("headers").is_none() && answer.get("version").is_none(), "removed from the response: {answer}");
    assert_eq!(answer["served_by"], "orders", "renamed in the response: {answer}");
    let forwarded: Value = serde_json::from_str(answer["body"].as_str().expect("echoed body")).expect("JSON body");
    assert_eq!(
        forwarded,
        json!({"customer": {"full_name": "Ann", "password": "****"}, "priority": 1,
               "meta": {"tenant": "acme", "order": "o-7"}})
    );
    assert_eq!(answer["body_length"], answer["body"].as_str().map(str::len).expect("body"), "{answer}");
    assert_eq!(
        response.header("content-length").map(str::to_owned),
        Some(response.body.len().to_string()),
        "the client's content-length is the transformed body's"
    );

    let text = client
        .request(Method::POST, &gateway.url("/orders/o-8"), &[("content-type", "text/plain")], "debug=true")
        .await;
    assert_eq!(text.status, StatusCode::OK);
    assert_eq!(text.json()["body"], "debug=true", "a text body passes unchanged");

    let refused =
        client.request(Method::POST, &gateway.url("/strict"), &[("content-type", "text/plain")], "debug=true").await;
    assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{refused:?}");

    let broken =
        client.request(Method::POST, &gateway.url("/strict"), &[("content-type", "application/json")], "{oops").await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{broken:?}");

    let large = format!("{{\"debug\":true,\"pad\":\"{}\"}}", "x".repeat(100));
    let too_large =
        client.request(Method::POST, &gateway.url("/strict"), &[("content-type", "application/json")], large).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE, "{too_large:?}");
    assert_eq!(upstream.requests(), 2, "refused requests never reached the upstream");
}
