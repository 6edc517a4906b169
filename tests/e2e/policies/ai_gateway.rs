//! What the e2e tests of the request-side AI policies share: a gateway whose routes put
//! policies in front of `ai_proxy` serving `gpt` from llmock's OpenAI API, and the requests
//! and answers of OpenAI's Chat Completions.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::llmock::Llmock;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::support::with_listener;

/// A gateway configuration with one route per `(id, policies)`: route `id` serves
/// `/<id>/v1/chat/completions`, its `policies` (YAML list items indented by 6) before
/// `ai_proxy`.
pub fn config(llmock: &Llmock, routes: &[(&str, &str)]) -> String {
    let routes: String = routes
        .iter()
        .map(|(id, policies)| {
            format!(
                "  - id: {id}
    paths: [/{id}/v1/chat/completions]
    policies:
{policies}      - ai_proxy:
          timeout: 10s
          models:
            - name: gpt
              targets: [{{provider: openai, upstream: llm, model: gpt-4o-mini, api_key: sk-test}}]
"
            )
        })
        .collect();
    with_listener(&format!(
        "upstreams:
  - id: llm
    endpoints: [{}]
    retries: {{attempts: 0}}
routes:
{routes}",
        llmock.addr()
    ))
}

/// `POST` of a JSON `body`.
pub async fn post(client: &TestClient, url: &str, body: &Value) -> TestResponse {
    client.request(Method::POST, url, &[("content-type", "application/json")], body.to_string()).await
}

/// The `error` object of a 400 in OpenAI's shape.
pub fn refusal(response: &TestResponse) -> Value {
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{:?}", response.body);
    let error = response.json()["error"].clone();
    assert_eq!(error["type"], "invalid_request_error", "{error}");
    error
}

/// The text of the first choice of a whole answer.
pub fn answer_text(response: &TestResponse) -> String {
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    response.json()["choices"][0]["message"]["content"].as_str().expect("an answer's content").to_owned()
}

/// The bodies llmock received, oldest first.
pub async fn received(llmock: &Llmock) -> Vec<Value> {
    llmock.requests().await.into_iter().map(|request| request["body"].clone()).collect()
}
