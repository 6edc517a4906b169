//! `ai_proxy` through a running gateway against llmock, a real fake of OpenAI's and
//! Anthropic's APIs: a chat completion through each provider format; an Anthropic stream
//! arriving as OpenAI chunks while llmock is still generating; fallback from targets answering
//! 429 and 500 to the next; `key_auth` in front still refusing a request without a key.

use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::llmock::Llmock;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{delta_content, sse_chunks, start_gateway, with_listener};

const KEY: &str = "e2e-ai-team-key";

/// The gateway in front of `openai` (llmock's `/v1`) and `anthropic` (its `/anthropic/v1`),
/// behind `key_auth`; `models` is the `models` list of `ai_proxy`.
fn config(upstreams: &[(&str, &Llmock)], models: &str) -> String {
    let upstreams: String = upstreams
        .iter()
        .map(|(id, llmock)| format!("  - id: {id}\n    endpoints: [{}]\n    retries: {{attempts: 0}}\n", llmock.addr()))
        .collect();
    with_listener(&format!(
        "upstreams:
{upstreams}consumers:
  - id: team
    credentials:
      key_auth: {{key: {KEY}}}
routes:
  - id: ai
    paths: [/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models]
    policies:
      - key_auth: {{header: x-api-key}}
      - ai_proxy:
          timeout: 10s
          retries: {{attempts: 2, backoff: 100ms, max_backoff: 1s}}
          circuit_breaker: {{failures: 3, open_for: 60s}}
          models:
{models}"
    ))
}

fn chat(model: &str, stream: bool) -> String {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Hi there"}
        ]
    })
    .to_string()
}

async fn post(client: &TestClient, url: &str, body: String) -> gantry_testkit::client::TestResponse {
    client.request(Method::POST, url, &[("x-api-key", KEY), ("content-type", "application/json")], body).await
}

#[tokio::test]
async fn answers_chat_completions_through_openai_and_anthropic() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let models = "            - name: gpt
              targets: [{provider: openai, upstream: llm, model: gpt-4o-mini, api_key: sk-test}]
            - name: claude
              targets: [{provider: anthropic, upstream: llm, model: claude-sonnet-4-5, api_key: sk-ant-test, base_path: /anthropic/v1}]
";
    let gateway = start_gateway(&config(&[("llm", &llmock)], models));
    let client = TestClient::default();

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("gpt", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let completion = response.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt-4o-mini");
    assert!(completion["choices"][0]["message"]["content"].as_str().expect("content").contains("Hi there"));

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("claude", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let completion = response.json();
    assert_eq!(completion["object"], "chat.completion", "Anthropic's answer comes back in OpenAI's shape");
    assert_eq!(completion["model"], "claude-sonnet-4-5");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert!(completion["choices"][0]["message"]["content"].as_str().expect("content").contains("Hi there"));
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    let usage = &completion["usage"];
    assert!(usage["completion_tokens"].as_u64().expect("tokens") > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap_or(0) + usage["completion_tokens"].as_u64().unwrap_or(0))
    );

    let received = llmock.requests().await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0]["path"], "/v1/chat/completions");
    assert_eq!(received[0]["body"]["model"], "gpt-4o-mini");
    assert_eq!(received[1]["path"], "/anthropic/v1/messages");
    let sent: &Value = &received[1]["body"];
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "Answer in one line.", "the system prompt moved to `system`");
    assert_eq!(sent["max_tokens"], 4096, "Anthropic requires max_tokens");
    assert_eq!(sent["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]));

    let models = client.request(Method::GET, &gateway.url("/v1/models"), &[("x-api-key", KEY)], "").await.json();
    let names: Vec<&str> =
        models["data"].as_array().expect("data").iter().filter_map(|model| model["id"].as_str()).collect();
    assert_eq!(names, ["gpt", "claude"]);
}

#[tokio::test]
async fn streams_anthropic_events_as_openai_chunks_while_they_are_generated() {
    const CHUNK_DELAY_MS: u64 = 300;
    let llmock = Llmock::start(&[("LLMOCK_STREAM_CHUNK_DELAY_MS", "300")]);
    let models = "            - name: claude
              targets: [{provider: anthropic, upstream: llm, model: claude-sonnet-4-5, base_path: /anthropic/v1}]
";
    let gateway = start_gateway(&config(&[("llm", &llmock)], models));

    let started = Instant::now();
    let mut response = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(chat("claude", true))
        .send()
        .await
        .expect("the stream's head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = response.chunk().await.expect("a chunk") {
        if first_at.is_none() {
            first_at = Some(started.elapsed());
            // llmock journals a request once it has sent all of its answer.
            let journal = llmock.requests().await;
            assert!(
                journal.iter().all(|request| request["completed"] != true),
                "the first chunk came after llmock had finished: {journal:?}"
            );
        }
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let total = started.elapsed();
    let first_at = first_at.expect("at least one chunk");
    // llmock sends about nine events, CHUNK_DELAY_MS apart.
    assert!(
        first_at + Duration::from_millis(4 * CHUNK_DELAY_MS) < total,
        "first chunk after {first_at:?}, the whole stream after {total:?}: the answer was buffered"
    );

    let journal = llmock.requests().await;
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0]["completed"], true);
    assert_eq!(journal[0]["stream"], true);

    let chunks = sse_chunks(&text);
    assert!(chunks.iter().all(|chunk| chunk["object"] == "chat.completion.chunk"), "{text}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content = delta_content(&chunks);
    assert!(content.len() > 5, "the text deltas were passed on: {text}");
    assert_eq!(chunks.last().expect("chunks")["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn maps_tool_calls_through_anthropic_and_streams_openai_as_it_came() {
    let llmock = Llmock::start(&[("LLMOCK_TOOL_MODE", "auto")]);
    let models = "            - name: claude
              targets: [{provider: anthropic, upstream: llm, model: claude-sonnet-4-5, base_path: /anthropic/v1}]
            - name: gpt
              targets: [{provider: openai, upstream: llm, model: gpt-4o-mini}]
";
    let gateway = start_gateway(&config(&[("llm", &llmock)], models));
    let client = TestClient::default();
    let with_tools = json!({
        "model": "claude",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }}]
    });
    let response = post(&client, &gateway.url("/v1/chat/completions"), with_tools.to_string()).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let choice = &response.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments")).expect("JSON arguments");
    assert!(arguments.is_object());
    let sent = &llmock.requests().await[0]["body"];
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["input_schema"]["required"], json!(["city"]));

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("gpt", true)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let text = std::str::from_utf8(&response.body).expect("utf-8");
    let first = &sse_chunks(text)[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn falls_back_from_targets_answering_429_and_500_to_the_next() {
    // One request a minute per key: the key's first request (made here) uses it up, so the
    // gateway's gets a real 429 with the real wait in Retry-After.
    let limited = Llmock::start(&[("LLMOCK_RPM", "1")]);
    let failing = Llmock::start(&[("LLMOCK_ERROR_RATE_500", "1.0")]);
    let healthy = Llmock::start(&[]);
    let used_up = reqwest::Client::new()
        .post(format!("http://{}/anthropic/v1/messages", limited.addr()))
        .header("x-api-key", "sk-ant-limited")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .expect("llmock answers");
    assert_eq!(used_up.status(), StatusCode::OK);
    // Weight 0 targets are tried after the weighted one, in the order listed.
    let models = "            - name: chat
              targets:
                - {provider: anthropic, upstream: limited, model: claude-sonnet-4-5, api_key: sk-ant-limited, base_path: /anthropic/v1}
                - {provider: openai, upstream: failing, model: gpt-4o, weight: 0}
                - {provider: openai, upstream: healthy, model: gpt-4o-mini, weight: 0}
";
    let gateway =
        start_gateway(&config(&[("limited", &limited), ("failing", &failing), ("healthy", &healthy)], models));
    let client = TestClient::default();

    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("chat", false)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(response.json()["model"], "gpt-4o-mini");
    let statuses = |journal: Vec<Value>| journal.iter().map(|request| request["status"].clone()).collect::<Vec<_>>();
    assert_eq!(statuses(limited.requests().await), [json!(200), json!(429)]);
    assert_eq!(statuses(failing.requests().await), [json!(500)]);
    assert_eq!(statuses(healthy.requests().await), [json!(200)]);

    // The 429 asked for a wait of up to a minute: the next request skips that target.
    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("chat", false)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(limited.requests().await.len(), 2, "the rate-limited target was not called again");
    assert_eq!(statuses(healthy.requests().await), [json!(200), json!(200)]);
}

#[tokio::test]
async fn the_last_provider_error_is_the_answer_when_every_target_fails() {
    let failing = Llmock::start(&[("LLMOCK_ERROR_RATE_500", "1.0")]);
    let models = "            - name: claude
              targets: [{provider: anthropic, upstream: failing, model: claude-sonnet-4-5, base_path: /anthropic/v1}]
";
    let gateway = start_gateway(&config(&[("failing", &failing)], models));
    let response = post(&TestClient::default(), &gateway.url("/v1/chat/completions"), chat("claude", false)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = response.json();
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(error["error"]["message"].is_string());
}

#[tokio::test]
async fn key_auth_in_front_still_refuses_a_request_without_a_key() {
    let llmock = Llmock::start(&[]);
    let models = "            - name: gpt
              targets: [{provider: openai, upstream: llm, model: gpt-4o-mini}]
";
    let gateway = start_gateway(&config(&[("llm", &llmock)], models));
    let client = TestClient::default();
    let response = client
        .request(
            Method::POST,
            &gateway.url("/v1/chat/completions"),
            &[("content-type", "application/json")],
            chat("gpt", false),
        )
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let response = client
        .request(Method::POST, &gateway.url("/v1/chat/completions"), &[("x-api-key", "wrong")], chat("gpt", false))
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(llmock.requests().await.is_empty(), "no request reached the provider");
    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("gpt", false)).await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn providers_get_the_target_key_and_the_request_id_but_nothing_of_the_client() {
    // An echo server in place of an OpenAI-compatible provider: its JSON answer, which
    // describes the request it got, comes back to the client unchanged.
    let echo = EchoUpstream::start("provider").await;
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:
  - id: provider
    endpoints: [{}]
consumers:
  - id: team
    credentials:
      key_auth: {{key: {KEY}}}
routes:
  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - key_auth: {{header: x-api-key, hide_credentials: false}}
      - ai_proxy:
          models:
            - name: local
              targets: [{{provider: openai, upstream: provider, model: llama, api_key: sk-target, base_path: /openai/v1}}]
",
        echo.addr()
    )));
    let response = TestClient::default()
        .request(
            Method::POST,
            &gateway.url("/v1/chat/completions"),
            &[("x-api-key", KEY), ("authorization", "Bearer client-token"), ("cookie", "session=1")],
            chat("local", false),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let seen = response.json();
    assert_eq!(seen["path"], "/openai/v1/chat/completions", "{seen}");
    let headers = &seen["headers"];
    assert_eq!(headers["authorization"], "Bearer sk-target", "{headers}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["x-request-id"].is_string(), "{headers}");
    for absent in ["x-api-key", "cookie", "x-forwarded-for", "forwarded", "x-forwarded-proto", "x-forwarded-host"] {
        assert!(headers.get(absent).is_none(), "`{absent}` reached the provider: {headers}");
    }
}

#[tokio::test]
async fn serves_embeddings_and_text_completions_also_from_a_provider_that_only_chats() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let models = "            - name: embed
              targets: [{provider: openai, upstream: llm, model: text-embedding-3-small}]
            - name: claude
              targets: [{provider: anthropic, upstream: llm, model: claude-sonnet-4-5, base_path: /anthropic/v1}]
";
    let gateway = start_gateway(&config(&[("llm", &llmock)], models));
    let client = TestClient::default();

    let body = json!({"model": "embed", "input": ["first text", "second text"]}).to_string();
    let response = post(&client, &gateway.url("/v1/embeddings"), body).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let embeddings = response.json();
    assert_eq!(embeddings["object"], "list");
    let data = embeddings["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert!(data[0]["embedding"].as_array().is_some_and(|vector| !vector.is_empty()));

    let body = json!({"model": "claude", "input": "a text"}).to_string();
    let response = post(&client, &gateway.url("/v1/embeddings"), body).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "Anthropic makes no embeddings");

    let body = json!({"model": "claude", "prompt": "Complete this line", "max_tokens": 20}).to_string();
    let response = post(&client, &gateway.url("/v1/completions"), body).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let completion = response.json();
    assert_eq!(completion["object"], "text_completion");
    assert!(completion["choices"][0]["text"].as_str().is_some_and(|text| text.contains("Complete this line")));
    assert!(completion["usage"]["prompt_tokens"].as_u64().is_some_and(|tokens| tokens > 0));

    let body = json!({"model": "claude", "prompt": "Stream this line", "stream": true}).to_string();
    let response = post(&client, &gateway.url("/v1/completions"), body).await;
    assert_eq!(response.status, StatusCode::OK);
    let text = String::from_utf8(response.body.to_vec()).expect("utf-8");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks = sse_chunks(&text);
    assert!(chunks.iter().all(|chunk| chunk["object"] == "text_completion"), "{text}");
    let streamed: String = chunks.iter().filter_map(|chunk| chunk["choices"][0]["text"].as_str()).collect();
    assert!(streamed.contains("Stream this line"), "{streamed}");

    let received = llmock.requests().await;
    let sent: Vec<&Value> = received
        .iter()
        .filter(|request| request["path"] == "/anthropic/v1/messages")
        .map(|request| &request["body"])
        .collect();
    assert_eq!(sent.len(), 2, "the refused embeddings request reached no provider: {received:?}");
    assert_eq!(
        sent[0]["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Complete this line"}]}])
    );
    assert_eq!(sent[0]["max_tokens"], 20);
}

#[tokio::test]
async fn retries_a_failing_provider_with_backoff_then_its_circuit_keeps_it_out() {
    let failing = Llmock::start(&[("LLMOCK_ERROR_RATE_500", "1.0")]);
    let models = "            - name: chat
              targets: [{provider: openai, upstream: failing, model: gpt-4o}]
";
    let gateway = start_gateway(&config(&[("failing", &failing)], models));
    let client = TestClient::default();

    let started = Instant::now();
    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("chat", false)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", response.body);
    assert_eq!(failing.requests().await.len(), 3, "the first try and two retries");
    // Round one waits 50-100 ms, round two 100-200 ms.
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());

    // Three failures in a row opened the target's circuit: it is not called for a minute.
    let response = post(&client, &gateway.url("/v1/chat/completions"), chat("chat", false)).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", response.body);
    let wait: u64 = response.header("retry-after").and_then(|value| value.parse().ok()).expect("Retry-After");
    assert!((55..=60).contains(&wait), "{wait}");
    assert_eq!(failing.requests().await.len(), 3, "the open circuit kept the request from the provider");
}

#[tokio::test]
async fn serves_openai_compatible_providers_through_their_presets() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    // llmock serves each provider's API under its own prefix, so each target names it.
    let presets = [
        ("groq", "/groq/openai/v1", "llama-3.3-70b-versatile", true),
        ("mistral", "/mistral/v1", "mistral-small-latest", false),
        ("perplexity", "/perplexity/v1", "sonar", false),
        ("together", "/together/v1", "meta-llama/Llama-3.3-70B-Instruct-Turbo", true),
        ("xai", "/xai/v1", "grok-3", true),
    ];
    let models: String = presets
        .iter()
        .map(|(provider, base_path, model, _)| {
            format!(
                "            - name: {provider}-chat\n              targets: [{{provider: {provider}, upstream: llm, model: {model}, api_key: sk-{provider}, base_path: {base_path}}}]\n"
            )
        })
        .collect();
    let gateway = start_gateway(&config(&[("llm", &llmock)], &models));
    let client = TestClient::default();

    for (provider, _, model, _) in presets {
        let response =
            post(&client, &gateway.url("/v1/chat/completions"), chat(&format!("{provider}-chat"), false)).await;
        assert_eq!(response.status, StatusCode::OK, "{provider}: {:?}", response.body);
        let completion = response.json();
        assert_eq!(completion["object"], "chat.completion", "{provider}");
        assert!(
            completion["choices"][0]["message"]["content"].as_str().is_some_and(|text| text.contains("Hi there")),
            "{provider}: {completion}"
        );
        assert_eq!(completion["model"], model, "{provider}");

        let response =
            post(&client, &gateway.url("/v1/chat/completions"), chat(&format!("{provider}-chat"), true)).await;
        assert_eq!(response.status, StatusCode::OK, "{provider}: {:?}", response.body);
        let text = String::from_utf8(response.body.to_vec()).expect("utf-8");
        assert!(text.ends_with("data: [DONE]\n\n"), "{provider}: {text}");
        let chunks = sse_chunks(&text);
        assert!(
            chunks.iter().all(|chunk| chunk["usage"].is_null()),
            "{provider}: the client did not ask for the usage chunk: {text}"
        );
        let streamed = delta_content(&chunks);
        assert!(streamed.contains("Hi there"), "{provider}: {text}");
    }

    let received = llmock.requests().await;
    assert_eq!(received.len(), 2 * presets.len(), "{received:?}");
    for (at, (provider, base_path, model, takes_stream_options)) in presets.iter().enumerate() {
        let (whole, streamed) = (&received[2 * at], &received[2 * at + 1]);
        assert_eq!(whole["path"], format!("{base_path}/chat/completions"), "{provider}");
        assert_eq!(whole["body"]["model"], *model, "{provider}");
        assert_eq!(streamed["stream"], true, "{provider}");
        assert_eq!(
            streamed["body"]["stream_options"]["include_usage"].as_bool().is_some(),
            *takes_stream_options,
            "{provider}: usage asked of streams only where the provider takes stream_options"
        );
    }
}
