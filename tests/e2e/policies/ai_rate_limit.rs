//! `ai_rate_limit` through a running gateway in front of `ai_proxy` and llmock, a real fake of
//! OpenAI's API: tokens charged in a real Redis from the usage of whole and streamed answers,
//! until the window is spent and requests get 429 without reaching the provider; requests and
//! cost limited per model name.

use std::time::Duration;

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::llmock::Llmock;
use gantry_testkit::redis::RedisServer;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{start_gateway, with_listener};

const ALICE: &str = "e2e-ai-alice-key";
const BOB: &str = "e2e-ai-bob-key";

/// The gateway with `key_auth`, `ai_rate_limit` (`limits`, indented for its settings) and
/// `ai_proxy` serving `gpt` and `mini` from llmock's OpenAI API, the latter priced.
fn config(llmock: &Llmock, node: &str, limits: &str) -> String {
    with_listener(&format!(
        "{node}upstreams:
  - id: llm
    endpoints: [{llm}]
    retries: {{attempts: 0}}
consumers:
  - id: alice
    credentials:
      key_auth: {{key: {ALICE}}}
  - id: bob
    credentials:
      key_auth: {{key: {BOB}}}
routes:
  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - key_auth: {{header: x-api-key}}
      - ai_rate_limit:
{limits}      - ai_proxy:
          timeout: 10s
          models:
            - name: gpt
              targets: [{{provider: openai, upstream: llm, model: gpt-4o-mini, api_key: sk-test}}]
            - name: mini
              targets: [{{provider: openai, upstream: llm, model: gpt-4o-mini, api_key: sk-test, price: {{input: 1000, output: 1000}}}}]
",
        llm = llmock.addr()
    ))
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say something short"}]})
        .to_string()
}

async fn post(client: &TestClient, url: &str, key: &str, body: String) -> TestResponse {
    client.request(Method::POST, url, &[("x-api-key", key), ("content-type", "application/json")], body).await
}

fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
    response.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_else(|| panic!("no {name}"))
}

fn total_tokens(completion: &Value) -> u64 {
    completion["usage"]["total_tokens"].as_u64().unwrap_or_else(|| panic!("no usage: {completion}"))
}

/// The values of a Redis reply (RESP), without its type and length lines.
fn values(reply: &str) -> Vec<&str> {
    reply.split("\r\n").filter(|line| !line.is_empty() && !line.starts_with(['*', '$'])).collect()
}

/// Waits until the tokens counter in Redis holds `spent`: the charge is sent from a task of
/// its own once the answer is complete.
async fn wait_for_charge(redis: &RedisServer, spent: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = redis.command(&["KEYS", "gantry:ai:routes?ai?.policies.ai_rate_limit:*:tokens:*"]);
        let counted = values(&keys).first().map(|key| redis.command(&["HGET", key, "n"]));
        if counted.as_deref().and_then(|reply| values(reply).first().map(|n| *n == spent.to_string())) == Some(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{spent} tokens never reached Redis: {counted:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends until a request is refused and checks that refusals begin exactly once the
/// answers' reported tokens reach `limit`: returns the tokens spent and the refusal.
async fn spend_until_refused(
    client: &TestClient,
    redis: &RedisServer,
    url: &str,
    limit: u64,
) -> (u64, u32, TestResponse) {
    let mut spent = 0;
    for admitted in 0..50 {
        let response = post(client, url, ALICE, chat("gpt", false)).await;
        if spent >= limit {
            assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS, "{spent} of {limit} tokens were spent");
            return (spent, admitted, response);
        }
        assert_eq!(response.status, StatusCode::OK, "{spent} of {limit} tokens spent: {:?}", response.body);
        assert_eq!(header(&response, "x-ai-ratelimit-remaining-tokens"), (limit - spent).to_string());
        spent += total_tokens(&response.json());
        wait_for_charge(redis, spent).await;
    }
    panic!("never refused after {spent} tokens");
}

#[tokio::test]
async fn charges_answer_tokens_in_redis_and_refuses_once_the_window_is_spent() {
    const LIMIT: u64 = 60;
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let redis = RedisServer::start();
    let node = format!("  stores:\n    redis: {{urls: ['{}'], timeout: 2s}}\n", redis.url());
    let limits = format!("          store: redis\n          limits: [{{window: 1h, tokens: {LIMIT}}}]\n");
    let gateway = start_gateway(&config(&llmock, &node, &limits));
    let client = TestClient::default();
    let url = gateway.url("/v1/chat/completions");

    let (spent, admitted, refused) = spend_until_refused(&client, &redis, &url, LIMIT).await;
    assert!(spent >= LIMIT);
    let error = refused.json();
    assert_eq!(error["error"]["type"], "tokens", "{error}");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    let retry_after: u64 = header(&refused, "retry-after").parse().expect("seconds");
    assert!((3500..=3600).contains(&retry_after), "the window's end: {retry_after}");
    assert_eq!(header(&refused, "x-ai-ratelimit-remaining-tokens"), "0");
    assert_eq!(header(&refused, "x-ai-ratelimit-limit-tokens"), LIMIT.to_string());
    let sent = llmock.requests().await;
    assert_eq!(sent.len(), admitted as usize, "a refused request never reaches the provider");

    let bob = post(&client, &url, BOB, chat("gpt", false)).await;
    assert_eq!(bob.status, StatusCode::OK, "bob's tokens are his own");
    let keys = redis.command(&["KEYS", "gantry:ai:routes?ai?.policies.ai_rate_limit:*:tokens:3600:fixed_window:*"]);
    assert!(keys.starts_with("*2\r\n"), "one counter per consumer: {keys:?}");
}

#[tokio::test]
async fn charges_a_streamed_answer_when_its_stream_ends() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let gateway = start_gateway(&config(&llmock, "", "          limits: [{window: 1h, tokens: 1}]\n"));
    let client = TestClient::default();
    let url = gateway.url("/v1/chat/completions");

    let streamed = post(&client, &url, ALICE, chat("gpt", true)).await;
    assert_eq!(streamed.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&streamed.body).into_owned();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(!text.contains("\"usage\":{"), "the client did not ask for the usage chunk: {text}");
    assert_eq!(header(&streamed, "x-ai-ratelimit-remaining-tokens"), "1");

    let refused = post(&client, &url, ALICE, chat("gpt", false)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", refused.body);
    assert_eq!(refused.json()["error"]["type"], "tokens");
}

#[tokio::test]
async fn limits_requests_and_cost_per_model_name() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let limits = "          models:
            - model: gpt
              limits: [{window: 1m, requests: 2}]
            - model: mini
              limits: [{window: 1d, cost: 0.01}]
";
    let gateway = start_gateway(&config(&llmock, "", limits));
    let client = TestClient::default();
    let url = gateway.url("/v1/chat/completions");

    let first = post(&client, &url, ALICE, chat("gpt", false)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(header(&first, "x-ai-ratelimit-remaining-requests"), "1");
    assert_eq!(post(&client, &url, ALICE, chat("gpt", false)).await.status, StatusCode::OK);
    let refused = post(&client, &url, ALICE, chat("gpt", false)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let error = refused.json();
    assert_eq!(error["error"]["type"], "requests", "{error}");
    assert!(error["error"]["message"].as_str().expect("message").contains("for gpt"), "{error}");

    // At 1000 per million tokens, one answer of 10 tokens or more spends the 0.01.
    let priced = post(&client, &url, ALICE, chat("mini", false)).await;
    assert_eq!(priced.status, StatusCode::OK, "another model's limits: {:?}", priced.body);
    assert_eq!(header(&priced, "x-ai-ratelimit-limit-cost"), "0.01");
    assert!(total_tokens(&priced.json()) >= 10);
    let over_budget = post(&client, &url, ALICE, chat("mini", false)).await;
    assert_eq!(over_budget.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", over_budget.body);
    assert_eq!(over_budget.json()["error"]["type"], "cost");
    assert_eq!(header(&over_budget, "x-ai-ratelimit-remaining-cost"), "0");
    assert_eq!(post(&client, &url, BOB, chat("mini", false)).await.status, StatusCode::OK, "bob's budget");
}
