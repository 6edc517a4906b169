//! `jolt` through a running gateway: the upstream receives the reshaped JSON request body with
//! a matching length, and the client receives the reshaped JSON response body.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn reshapes_request_and_response_bodies_with_a_chain() {
    let upstream = EchoUpstream::start("reviews").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: reviews
    endpoints: [{addr}]
routes:
  - id: reviews
    paths: [/reviews]
    upstream: reviews
    policies:
      - jolt:
          request:
            - operation: shift
              spec:
                rating:
                  primary: {{value: Rating}}
                  "*":
                    value: SecondaryRatings.&1.Value
                    $: SecondaryRatings.&1.Id
                tags: {{"*": "labels[]"}}
            - operation: default
              spec: {{RatingRange: 5}}
            - operation: remove
              spec: {{SecondaryRatings: {{"sharp*": ""}}}}
          response:
            - operation: shift
              spec: {{body: echoed.body, upstream: echoed.by, method: "&"}}
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();
    let sent = json!({
        "rating": {"primary": {"value": 3}, "quality": {"value": 4}, "sharpness": {"value": 1}},
        "tags": ["new", "hot"],
        "ignored": true
    });
    let response = client
        .request(Method::POST, &gateway.url("/reviews"), &[("content-type", "application/json")], sent.to_string())
        .await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let answer = response.json();
    assert_eq!(answer["method"], "POST", "{answer}");
    assert_eq!(answer["echoed"]["by"], "reviews", "{answer}");
    assert!(answer.get("headers").is_none(), "what the response shift does not name is dropped: {answer}");
    let forwarded: Value = serde_json::from_str(answer["echoed"]["body"].as_str().expect("echoed body")).expect("JSON");
    assert_eq!(
        forwarded,
        json!({"Rating": 3, "RatingRange": 5, "SecondaryRatings": {"quality": {"Id": "quality", "Value": 4}},
               "labels": ["new", "hot"]})
    );
    assert_eq!(
        response.header("content-length").map(str::to_owned),
        Some(response.body.len().to_string()),
        "the client's content-length is the reshaped body's"
    );

    let text =
        client.request(Method::POST, &gateway.url("/reviews"), &[("content-type", "text/plain")], "rating=3").await;
    assert_eq!(text.status, StatusCode::OK);
    assert_eq!(text.json()["echoed"]["body"], "rating=3", "a text body passes unchanged");
}
