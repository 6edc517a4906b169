//! `ai_proxy` through a running gateway against fakes of Azure OpenAI and Amazon Bedrock that
//! follow their wire formats (gantry-testkit's `cloud_llm`): Azure's deployment and v1 paths,
//! `api-version` and `api-key` (a wrong version is refused as Azure would), its content filter
//! error passed on; Bedrock's Converse translated both ways with every request's SigV4
//! signature checked by botocore (a wrong secret is refused), its event-stream answer arriving
//! as OpenAI chunks while it is generated, a ThrottlingException falling back to Azure, and
//! Titan embeddings.

use std::time::{Duration, Instant};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::cloud_llm::CloudLlm;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{delta_content, sse_chunks, start_gateway, with_listener};

const KEY: &str = "e2e-cloud-team-key";
const AZURE_KEY: &str = "azure-e2e-key";
const BEDROCK_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn fake(stream_delay_ms: &str) -> CloudLlm {
    CloudLlm::start(&[
        ("FAKE_AZURE_KEY", AZURE_KEY),
        ("FAKE_AZURE_DEPLOYMENT", "gpt-4o-mini-prod"),
        ("FAKE_AZURE_API_VERSION", "2024-10-21"),
        ("FAKE_AWS_REGION", "us-west-2"),
        ("FAKE_AWS_ACCESS_KEY_ID", "AKIDE2ETEST"),
        ("FAKE_AWS_SECRET_ACCESS_KEY", "e2e/secret+access+key"),
        ("FAKE_AWS_SESSION_TOKEN", "e2e-session-token"),
        ("FAKE_STREAM_DELAY_MS", stream_delay_ms),
    ])
}

fn config(fake: &CloudLlm) -> String {
    let bedrock = "{region: us-west-2, access_key_id: AKIDE2ETEST, secret_access_key: e2e/secret+access+key, session_token: e2e-session-token}";
    with_listener(&format!(
        "upstreams:
  - id: cloud
    endpoints: [{addr}]
    retries: {{attempts: 0}}
consumers:
  - id: team
    credentials:
      key_auth: {{key: {KEY}}}
routes:
  - id: ai
    paths: [/v1/chat/completions, /v1/completions, /v1/embeddings]
    policies:
      - key_auth: {{header: x-api-key}}
      - ai_proxy:
          timeout: 10s
          circuit_breaker: {{failures: 0}}
          models:
            - name: azure
              targets: [{{provider: azure_openai, upstream: cloud, model: gpt-4o-mini, api_key: {AZURE_KEY}, azure: {{deployment: gpt-4o-mini-prod}}}}]
            - name: azure-v1
              targets: [{{provider: azure_openai, upstream: cloud, model: gpt-4o-mini-prod, api_key: 'Bearer {AZURE_KEY}', auth_header: authorization, azure: {{api_version: v1}}}}]
            - name: azure-old
              targets: [{{provider: azure_openai, upstream: cloud, model: gpt-4o-mini-prod, api_key: {AZURE_KEY}, azure: {{api_version: '2023-05-15'}}}}]
            - name: claude
              targets: [{{provider: bedrock, upstream: cloud, model: '{BEDROCK_MODEL}', bedrock: {bedrock}}}]
            - name: claude-wrong-secret
              targets: [{{provider: bedrock, upstream: cloud, model: '{BEDROCK_MODEL}', bedrock: {{region: us-west-2, access_key_id: AKIDE2ETEST, secret_access_key: not-the-secret}}}}]
            - name: claude-or-azure
              targets:
                - {{provider: bedrock, upstream: cloud, model: '{BEDROCK_MODEL}', bedrock: {bedrock}}}
                - {{provider: azure_openai, upstream: cloud, model: gpt-4o-mini-prod, api_key: {AZURE_KEY}, weight: 0}}
            - name: titan
              targets: [{{provider: bedrock, upstream: cloud, model: 'amazon.titan-embed-text-v2:0', bedrock: {bedrock}}}]
",
        addr = fake.addr()
    ))
}

fn chat(model: &str, prompt: &str, stream: bool) -> String {
    json!({
        "model": model,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": 200,
        "temperature": 0.3,
        "stop": ["END"],
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": prompt}
        ]
    })
    .to_string()
}

async fn post(client: &TestClient, url: &str, body: String) -> TestResponse {
    client.request(Method::POST, url, &[("x-api-key", KEY), ("content-type", "application/json")], body).await
}

fn content(response: &TestResponse) -> String {
    response.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn azure_openai_paths_versions_keys_and_content_filter() {
    let fake = fake("0");
    let gateway = start_gateway(&config(&fake));
    let client = TestClient::default();

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("azure", "Hi there", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(content(&response), "azure answers: Hi there");
    assert!(response.json()["prompt_filter_results"].is_array(), "Azure's filter results pass on");

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("azure-v1", "Hi v1", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(content(&response), "azure answers: Hi v1");

    let embed = json!({"model": "azure", "input": ["one", "two words"]}).to_string();
    let response = post(&client, &gateway.url("/v1/embeddings"), embed).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(response.json()["data"].as_array().map(Vec::len), Some(2));

    let completion = json!({"model": "azure", "prompt": "Once"}).to_string();
    let response = post(&client, &gateway.url("/v1/completions"), completion).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(response.json()["choices"][0]["text"], "azure completes: Once");

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("azure-old", "Hi", false)).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND, "the fake refuses another api-version: {:?}", response.body);

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("azure", "FILTER_ME please", false)).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{:?}", response.body);
    let error = &response.json()["error"];
    assert_eq!(error["code"], "content_filter");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["innererror"]["content_filter_result"]["violence"]["filtered"], true);

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("azure", "Stream it", true)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let chunks = sse_chunks(&String::from_utf8_lossy(&response.body));
    assert!(chunks[0]["prompt_filter_results"].is_array(), "{chunks:?}");
    let text = delta_content(&chunks);
    assert_eq!(text, "azure answers: Stream it ");
    assert_eq!(chunks.last().expect("chunks")["usage"]["prompt_tokens"], 2);

    let received = fake.requests().await;
    let paths: Vec<(&str, &str)> = received
        .iter()
        .map(|request| (request["path"].as_str().unwrap_or_default(), request["query"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        paths,
        [
            ("/openai/deployments/gpt-4o-mini-prod/chat/completions", "api-version=2024-10-21"),
            ("/openai/v1/chat/completions", ""),
            ("/openai/deployments/gpt-4o-mini-prod/embeddings", "api-version=2024-10-21"),
            ("/openai/deployments/gpt-4o-mini-prod/completions", "api-version=2024-10-21"),
            ("/openai/deployments/gpt-4o-mini-prod/chat/completions", "api-version=2023-05-15"),
            ("/openai/deployments/gpt-4o-mini-prod/chat/completions", "api-version=2024-10-21"),
            ("/openai/deployments/gpt-4o-mini-prod/chat/completions", "api-version=2024-10-21"),
        ]
    );
    assert_eq!(received[0]["headers"]["api-key"], AZURE_KEY);
    assert!(received[0]["headers"].get("authorization").is_none(), "the key goes in api-key only");
    assert_eq!(received[1]["headers"]["authorization"], format!("Bearer {AZURE_KEY}"), "an Entra ID token");
    assert_eq!(received[1]["body"]["model"], "gpt-4o-mini-prod", "the v1 API names the deployment in the body");
    assert_eq!(received[6]["body"]["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn bedrock_converse_is_signed_translated_and_falls_back_when_throttled() {
    let fake = fake("0");
    let gateway = start_gateway(&config(&fake));
    let client = TestClient::default();

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("claude", "Hi there", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?} {:?}", response.body, fake.logs());
    let completion = response.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], BEDROCK_MODEL);
    assert_eq!(content(&response), "bedrock answers: Hi there");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"], json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}));

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("claude-wrong-secret", "Hi", false)).await;
    assert_eq!(response.status, StatusCode::FORBIDDEN, "botocore refuses a signature made with another secret");
    assert_eq!(response.json()["error"]["code"], "InvalidSignatureException");

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("claude", "THROTTLE me", false)).await;
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", response.body);
    let error = &response.json()["error"];
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "ThrottlingException");
    assert_eq!(error["message"], "Too many requests, please wait before trying again.");

    let response =
        post(&client, &gateway.url("/v1/chat/completions"), chat("claude-or-azure", "THROTTLE me", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(content(&response), "azure answers: THROTTLE me", "a throttled Bedrock target falls back to Azure");

    let embed = json!({"model": "titan", "input": "Hello Titan", "dimensions": 3}).to_string();
    let response = post(&client, &gateway.url("/v1/embeddings"), embed).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(
        response.json(),
        json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": "amazon.titan-embed-text-v2:0", "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    );

    let received = fake.requests().await;
    let bedrock: Vec<&Value> = received
        .iter()
        .filter(|request| request["path"].as_str().is_some_and(|path| path.starts_with("/model/")))
        .collect();
    assert_eq!(bedrock.len(), 5, "{received:?}");
    assert_eq!(bedrock[0]["path"], "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse");
    assert_eq!(bedrock[0]["headers"]["host"], "bedrock-runtime.us-west-2.amazonaws.com");
    assert_eq!(bedrock[0]["headers"]["x-amz-security-token"], "e2e-session-token");
    let signed = bedrock[0]["headers"]["authorization"].as_str().expect("signed");
    assert!(signed.contains("/us-west-2/bedrock/aws4_request"), "{signed}");
    let verdicts: Vec<&Value> = bedrock.iter().map(|request| &request["signature_ok"]).collect();
    assert_eq!(verdicts, [&json!(true), &json!(false), &json!(true), &json!(true), &json!(true)]);
    assert_eq!(
        bedrock[0]["body"],
        json!({
            "system": [{"text": "Answer in one line."}],
            "messages": [{"role": "user", "content": [{"text": "Hi there"}]}],
            "inferenceConfig": {"maxTokens": 200, "temperature": 0.3, "stopSequences": ["END"]}
        })
    );
    assert_eq!(bedrock[4]["path"], "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_eq!(bedrock[4]["body"], json!({"inputText": "Hello Titan", "dimensions": 3}));
}

#[tokio::test]
async fn bedrock_event_streams_arrive_as_openai_chunks_while_generated() {
    const DELAY_MS: u64 = 300;
    let fake = fake("300");
    let gateway = start_gateway(&config(&fake));

    let started = Instant::now();
    let mut response = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(chat("claude", "Hi there", true))
        .send()
        .await
        .expect("the stream's head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut first_content_at = None;
    while let Some(chunk) = response.chunk().await.expect("a chunk") {
        let chunk = std::str::from_utf8(&chunk).expect("utf-8");
        if first_content_at.is_none() && chunk.contains("\"content\":\"bedrock") {
            first_content_at = Some(started.elapsed());
        }
        text.push_str(chunk);
    }
    let total = started.elapsed();
    let first_content_at = first_content_at.expect("a content chunk");
    // Four words, DELAY_MS apart: the first reached the client well before the last was sent.
    assert!(
        first_content_at + Duration::from_millis(2 * DELAY_MS) < total,
        "first word after {first_content_at:?}, the whole stream after {total:?}: the answer was buffered"
    );
    let chunks = sse_chunks(&text);
    assert!(chunks.iter().all(|chunk| chunk["object"] == "chat.completion.chunk"), "{text}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let words = delta_content(&chunks);
    assert_eq!(words, "bedrock answers: Hi there ");
    let finish: Vec<&Value> =
        chunks.iter().map(|chunk| &chunk["choices"][0]["finish_reason"]).filter(|reason| !reason.is_null()).collect();
    assert_eq!(finish, [&json!("stop")]);
    assert_eq!(
        chunks.last().expect("chunks")["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );

    let client = TestClient::default();
    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("claude", "Hi STREAM_FAIL", true)).await;
    assert_eq!(response.status, StatusCode::OK);
    let chunks = sse_chunks(&String::from_utf8_lossy(&response.body));
    let error = &chunks.last().expect("chunks")["error"];
    assert_eq!(error["code"], "throttlingException", "{chunks:?}");
    assert_eq!(error["type"], "rate_limit_error");

    let received = fake.requests().await;
    assert_eq!(received[0]["path"], "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream");
    assert_eq!(received[0]["headers"]["accept"], "application/vnd.amazon.eventstream");
    assert_eq!(received[0]["signature_ok"], true);
}
