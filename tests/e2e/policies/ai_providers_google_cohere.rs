//! `ai_proxy` in front of Google's Gemini API and Cohere's v2 API, through a running gateway
//! against llmock, which serves both (Gemini at `/gemini/v1beta`, Cohere at `/cohere/v2`):
//! whole and streamed chats (the stream's chunks reaching the client while llmock is still
//! generating), a tool call and its result, and a provider's 429 passed on with `Retry-After`.
//! llmock serves neither provider's embeddings (the requests are checked, the answers are
//! unit-tested) nor Vertex AI's paths (`ai_providers_vertex` uses a stand-in for Google).

use std::time::{Duration, Instant};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::llmock::Llmock;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{delta_content, sse_chunks, start_gateway, with_listener};

const KEY: &str = "e2e-google-cohere-key";

/// The gateway in front of llmock as `llm`, with a `gemini` and a `cohere` model.
fn config(llmock: &Llmock) -> String {
    with_listener(&format!(
        "upstreams:
  - id: llm
    endpoints: [{}]
    retries: {{attempts: 0}}
consumers:
  - id: team
    credentials:
      key_auth: {{key: {KEY}}}
routes:
  - id: ai
    paths: [/v1/chat/completions, /v1/embeddings]
    policies:
      - key_auth: {{header: x-api-key}}
      - ai_proxy:
          timeout: 10s
          retries: {{attempts: 1, backoff: 100ms, max_backoff: 1s}}
          models:
            - name: gemini
              targets: [{{provider: gemini, upstream: llm, model: gemini-2.0-flash, api_key: AIza-e2e, base_path: /gemini/v1beta}}]
            - name: cohere
              targets: [{{provider: cohere, upstream: llm, model: command-r-plus, api_key: co-e2e, base_path: /cohere/v2}}]
",
        llmock.addr()
    ))
}

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Hi there"}
        ]
    })
}

async fn post(client: &TestClient, url: &str, body: &Value) -> TestResponse {
    client
        .request(Method::POST, url, &[("x-api-key", KEY), ("content-type", "application/json")], body.to_string())
        .await
}

#[tokio::test]
async fn answers_whole_chats_through_gemini_and_cohere() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let gateway = start_gateway(&config(&llmock));
    let client = TestClient::default();

    for (model, provider_model) in [("gemini", "gemini-2.0-flash"), ("cohere", "command-r-plus")] {
        let response = post(&client, &gateway.url("/v1/chat/completions"), &chat(model, false)).await;
        assert_eq!(response.status, StatusCode::OK, "{model}: {:?}", response.body);
        let completion = response.json();
        assert_eq!(completion["object"], "chat.completion", "{completion}");
        assert_eq!(completion["model"], provider_model);
        let choice = &completion["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert!(choice["message"]["content"].as_str().is_some_and(|text| text.contains("Hi there")), "{completion}");
        assert_eq!(choice["finish_reason"], "stop");
        let usage = &completion["usage"];
        let (prompt, answer) = (usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64());
        assert!(prompt.is_some_and(|tokens| tokens > 0) && answer.is_some_and(|tokens| tokens > 0), "{usage}");
        assert_eq!(usage["total_tokens"].as_u64(), Some(prompt.unwrap_or(0) + answer.unwrap_or(0)));
    }

    let received = llmock.requests().await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0]["path"], "/gemini/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(
        received[0]["body"],
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Hi there"}]}],
            "systemInstruction": {"parts": [{"text": "Answer in one line."}]}
        })
    );
    assert_eq!(received[1]["path"], "/cohere/v2/chat");
    assert_eq!(
        received[1]["body"],
        json!({
            "model": "command-r-plus",
            "stream": false,
            "messages": [
                {"role": "system", "content": "Answer in one line."},
                {"role": "user", "content": "Hi there"}
            ]
        })
    );
}

#[tokio::test]
async fn streams_gemini_and_cohere_events_as_openai_chunks_while_they_are_generated() {
    const CHUNK_DELAY_MS: u64 = 300;
    let llmock = Llmock::start(&[("LLMOCK_STREAM_CHUNK_DELAY_MS", "300")]);
    let gateway = start_gateway(&config(&llmock));

    for (model, path) in
        [("gemini", "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent"), ("cohere", "/cohere/v2/chat")]
    {
        let mut body = chat(model, true);
        body["stream_options"] = json!({"include_usage": true});
        let started = Instant::now();
        let mut response = reqwest::Client::new()
            .post(gateway.url("/v1/chat/completions"))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the stream's head");
        assert_eq!(response.status(), StatusCode::OK, "{model}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut text = String::new();
        let mut first_at = None;
        while let Some(chunk) = response.chunk().await.expect("a chunk") {
            if first_at.is_none() {
                first_at = Some(started.elapsed());
                // llmock journals a request once it has sent all of its answer.
                let journal = llmock.requests().await;
                assert!(
                    journal
                        .iter()
                        .filter(|request| request["path"] == path)
                        .all(|request| request["completed"] != true),
                    "{model}: the first chunk came after llmock had finished: {journal:?}"
                );
            }
            text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
        let total = started.elapsed();
        let first_at = first_at.expect("at least one chunk");
        assert!(
            first_at + Duration::from_millis(2 * CHUNK_DELAY_MS) < total,
            "{model}: first chunk after {first_at:?}, the whole stream after {total:?}: the answer was buffered"
        );

        let chunks = sse_chunks(&text);
        assert!(chunks.iter().all(|chunk| chunk["object"] == "chat.completion.chunk"), "{text}");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{text}");
        let content = delta_content(&chunks);
        assert!(content.len() > 5, "{model}: the text deltas were passed on: {text}");
        let finishes: Vec<&Value> = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0].get("finish_reason"))
            .filter(|reason| !reason.is_null())
            .collect();
        assert_eq!(finishes, [&json!("stop")], "{text}");
        let usage = &chunks.last().expect("chunks")["usage"];
        assert!(usage["prompt_tokens"].as_u64().is_some_and(|tokens| tokens > 0), "{model}: {text}");
        assert!(usage["completion_tokens"].as_u64().is_some_and(|tokens| tokens > 0), "{model}: {text}");
    }
    let journal = llmock.requests().await;
    assert_eq!(journal.len(), 2);
    assert!(journal.iter().all(|request| request["completed"] == true && request["stream"] == true), "{journal:?}");
    assert_eq!(journal[1]["body"]["stream"], true, "Cohere is asked for a stream in the body");
}

#[tokio::test]
async fn calls_tools_through_gemini_and_cohere_and_sends_their_results_back() {
    let llmock = Llmock::start(&[("LLMOCK_TOOL_MODE", "auto")]);
    let gateway = start_gateway(&config(&llmock));
    let client = TestClient::default();
    let weather_tool = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }}]);

    for model in ["gemini", "cohere"] {
        let question = json!({"role": "user", "content": "What is the weather in Paris?"});
        let asked = json!({"model": model, "messages": [question], "tools": weather_tool});
        let response = post(&client, &gateway.url("/v1/chat/completions"), &asked).await;
        assert_eq!(response.status, StatusCode::OK, "{model}: {:?}", response.body);
        let choice = &response.json()["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {choice}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let id = call["id"].as_str().expect("an id");
        assert!(!id.is_empty());
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments")).expect("JSON arguments");
        assert!(arguments["city"].is_string(), "{arguments}");

        // The result goes back; llmock answers in text once the last turn is a tool's.
        let answered = json!({"model": model, "tools": weather_tool, "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "{\"celsius\": 15}"}
        ]});
        let response = post(&client, &gateway.url("/v1/chat/completions"), &answered).await;
        assert_eq!(response.status, StatusCode::OK, "{model}: {:?}", response.body);
        let choice = &response.json()["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{model}: {choice}");
        assert!(choice["message"]["content"].as_str().is_some_and(|text| !text.is_empty()));

        // Streamed, the call arrives as OpenAI tool call deltas.
        let mut streamed = asked.clone();
        streamed["stream"] = json!(true);
        let response = post(&client, &gateway.url("/v1/chat/completions"), &streamed).await;
        assert_eq!(response.status, StatusCode::OK);
        let chunks = sse_chunks(std::str::from_utf8(&response.body).expect("utf-8"));
        let calls: Vec<&Value> =
            chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
        assert_eq!(calls[0]["function"]["name"], "get_weather", "{model}: {chunks:?}");
        let arguments: String = calls.iter().filter_map(|call| call["function"]["arguments"].as_str()).collect();
        assert!(serde_json::from_str::<Value>(&arguments).is_ok_and(|value| value["city"].is_string()), "{arguments}");
        assert!(chunks.iter().any(|chunk| chunk["choices"][0]["finish_reason"] == "tool_calls"), "{chunks:?}");
    }

    let received = llmock.requests().await;
    let gemini: Vec<&Value> = received
        .iter()
        .filter(|request| request["path"] == "/gemini/v1beta/models/gemini-2.0-flash:generateContent")
        .map(|request| &request["body"])
        .collect();
    assert_eq!(gemini.len(), 2, "{received:?}");
    assert_eq!(gemini[0]["tools"][0]["functionDeclarations"][0]["name"], "get_weather");
    let turns = gemini[1]["contents"].as_array().expect("contents");
    assert_eq!(turns[1]["role"], "model");
    assert_eq!(turns[1]["parts"][0]["functionCall"]["name"], "get_weather");
    assert_eq!(
        turns[2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 15}}}]}),
        "the result names the function Gemini called"
    );
    let cohere: Vec<&Value> = received
        .iter()
        .filter(|request| request["path"] == "/cohere/v2/chat" && request["stream"] != true)
        .map(|request| &request["body"])
        .collect();
    assert_eq!(cohere.len(), 2, "{received:?}");
    assert_eq!(cohere[0]["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(cohere[1]["messages"][2]["role"], "tool");
    assert_eq!(cohere[1]["messages"][2]["content"], "{\"celsius\": 15}");
}

#[tokio::test]
async fn a_provider_429_comes_back_as_openai_s_with_retry_after() {
    // One request a minute per key: the second request of each target is refused by llmock
    // with the provider's own 429 body and the real wait in Retry-After.
    let llmock = Llmock::start(&[("LLMOCK_RPM", "1")]);
    let gateway = start_gateway(&config(&llmock));
    let client = TestClient::default();
    for model in ["gemini", "cohere"] {
        let response = post(&client, &gateway.url("/v1/chat/completions"), &chat(model, false)).await;
        assert_eq!(response.status, StatusCode::OK, "{model}: {:?}", response.body);
        let response = post(&client, &gateway.url("/v1/chat/completions"), &chat(model, false)).await;
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS, "{model}: {:?}", response.body);
        let error = response.json();
        assert_eq!(error["error"]["type"], "rate_limit_error", "{model}: {error}");
        assert!(
            error["error"]["message"].as_str().is_some_and(|message| message.contains("Rate limit")),
            "{model}: the provider's message is passed on: {error}"
        );
        let wait: u64 = response.header("retry-after").expect("Retry-After").parse().expect("seconds");
        assert!((1..=60).contains(&wait), "{model}: {wait}");
    }
    let statuses: Vec<Value> = llmock.requests().await.iter().map(|request| request["status"].clone()).collect();
    assert_eq!(
        statuses,
        [json!(200), json!(429), json!(200), json!(429)],
        "the limited target is not tried again within its wait"
    );
}

#[tokio::test]
async fn embeddings_reach_the_providers_own_endpoints() {
    // llmock has no Gemini or Cohere embeddings: its 404 shows where each request went.
    let llmock = Llmock::start(&[]);
    let gateway = start_gateway(&config(&llmock));
    let client = TestClient::default();
    for model in ["gemini", "cohere"] {
        let body = json!({"model": model, "input": ["first text", "second text"]});
        let response = post(&client, &gateway.url("/v1/embeddings"), &body).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{model}: {:?}", response.body);
        assert!(response.json()["error"]["message"].is_string());
    }
    let received = llmock.requests().await;
    let sent: Vec<(&Value, &Value)> = received.iter().map(|request| (&request["path"], &request["body"])).collect();
    assert_eq!(
        sent,
        [
            (
                &json!("/gemini/v1beta/models/gemini-2.0-flash:batchEmbedContents"),
                &json!({"requests": [
                    {"model": "models/gemini-2.0-flash", "content": {"parts": [{"text": "first text"}]}},
                    {"model": "models/gemini-2.0-flash", "content": {"parts": [{"text": "second text"}]}}
                ]})
            ),
            (
                &json!("/cohere/v2/embed"),
                &json!({"model": "command-r-plus", "texts": ["first text", "second text"],
                    "input_type": "search_document", "embedding_types": ["float"]})
            ),
        ]
    );
}
