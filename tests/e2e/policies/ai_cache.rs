//! `ai_response_cache` and `ai_semantic_cache` through a running gateway in front of llmock
//! (answering in `echo` style, so each answer names its question), with answers kept in memory
//! or in a real Redis. llmock's journal shows that a hit never reached the provider. The
//! semantic cache embeds prompts with the test kit's bag-of-words embeddings server, where a
//! paraphrase sharing most words is close and an unrelated question is not.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::embeddings::{similarity, EmbeddingServer};
use gantry_testkit::llmock::Llmock;
use gantry_testkit::redis::RedisServer;
use gantry_testkit::{eventually, GatewayProcess};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{delta_content, metrics, sse_chunks, start_gateway, with_admin};

const QUESTION: &str = "What is the capital of France?";
const PARAPHRASE: &str = "What is the capital city of France?";
const UNRELATED: &str = "How do I bake sourdough bread at home?";

/// The gateway in front of llmock (upstream `llm`) and, when given, the embeddings server
/// (upstream `embedder`); `routes` lists the routes, each ending with `ai_proxy` as [`PROXY`].
fn gateway(llmock: &Llmock, embedder: Option<&EmbeddingServer>, node: &str, routes: &str) -> GatewayProcess {
    let embedder = embedder
        .map(|server| format!("  - id: embedder\n    endpoints: [{}]\n    retries: {{attempts: 0}}\n", server.addr()))
        .unwrap_or_default();
    start_gateway(&with_admin(
        "ai-cache-admin-key-0123",
        &format!(
            "{node}upstreams:
  - id: llm
    endpoints: [{}]
    retries: {{attempts: 0}}
{embedder}routes:
{routes}",
            llmock.addr()
        ),
    ))
}

const PROXY: &str = "      - ai_proxy:
          timeout: 10s
          models:
            - name: gpt
              targets: [{provider: openai, upstream: llm, model: gpt-4o-mini, api_key: sk-test}]
";

fn chat(question: &str, stream: bool) -> String {
    json!({
        "model": "gpt",
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        "messages": [{"role": "user", "content": question}]
    })
    .to_string()
}

async fn ask(client: &TestClient, url: &str, question: &str, stream: bool) -> TestResponse {
    let response =
        client.request(Method::POST, url, &[("content-type", "application/json")], chat(question, stream)).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    response
}

fn cache_status(response: &TestResponse) -> &str {
    response.headers.get("x-ai-cache").and_then(|value| value.to_str().ok()).unwrap_or("none")
}

fn content(response: &TestResponse) -> String {
    response.json()["choices"][0]["message"]["content"].as_str().expect("content").to_owned()
}

/// The chunks of a streamed answer, which must end with `[DONE]`.
fn chunks(response: &TestResponse) -> Vec<Value> {
    sse_chunks(std::str::from_utf8(&response.body).expect("utf-8"))
}

async fn provider_calls(llmock: &Llmock) -> usize {
    llmock.requests().await.iter().filter(|request| request["path"] == "/v1/chat/completions").count()
}

#[tokio::test]
async fn exact_cache_in_memory_answers_repeats_whole_and_streamed_without_the_provider() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let routes = format!(
        "  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - ai_response_cache: {{ttl: 1m}}
{PROXY}"
    );
    let gateway = gateway(&llmock, None, "", &routes);
    let client = TestClient::default();
    let url = gateway.url("/v1/chat/completions");

    let first = ask(&client, &url, QUESTION, false).await;
    assert_eq!(cache_status(&first), "miss");
    assert!(content(&first).contains(QUESTION), "llmock echoes the question: {}", content(&first));

    let again = ask(&client, &url, QUESTION, false).await;
    assert_eq!(cache_status(&again), "hit");
    assert_eq!(again.json(), first.json(), "the stored answer, as it was sent");

    let streamed = ask(&client, &url, QUESTION, true).await;
    assert_eq!(cache_status(&streamed), "hit", "`stream` is not part of the key");
    assert_eq!(streamed.headers["content-type"], "text/event-stream");
    let replayed = chunks(&streamed);
    assert_eq!(replayed[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(delta_content(&replayed), content(&first));
    let finish = replayed.iter().find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("stop"));
    assert_eq!(replayed.last().expect("chunks")["usage"], first.json()["usage"], "usage asked for: the stored one");
    assert_eq!(provider_calls(&llmock).await, 1, "both hits were answered by the gateway");
    // Both hits reached the AI series as cache hits, with no provider, and the cache's counters.
    let expected = [
        "gantry_ai_requests_total{route=\"ai\",provider=\"\",model=\"gpt\",cache=\"hit\"} 2",
        "gantry_ai_requests_total{route=\"ai\",provider=\"openai\",model=\"gpt\",cache=\"miss\"} 1",
        "gantry_response_cache_requests_total{route=\"ai\",status=\"hit\"} 2",
        "gantry_response_cache_requests_total{route=\"ai\",status=\"miss\"} 1",
    ];
    eventually("the cache hits in /metrics", || async {
        let text = metrics(&gateway).await;
        expected.iter().all(|line| text.lines().any(|found| found == *line)).then_some(())
    })
    .await;

    // A streamed miss is put back together and stored when its stream ended.
    let other = "Name three rivers of Europe.";
    let streamed = ask(&client, &url, other, true).await;
    assert_eq!(cache_status(&streamed), "miss");
    let streamed_text = delta_content(&chunks(&streamed));
    assert!(streamed_text.contains("rivers"), "{streamed_text}");
    let whole = ask(&client, &url, other, false).await;
    assert_eq!(cache_status(&whole), "hit");
    assert_eq!(content(&whole), streamed_text);
    assert_eq!(whole.json()["object"], "chat.completion");
    assert_eq!(provider_calls(&llmock).await, 2);

    let unrelated = ask(&client, &url, UNRELATED, false).await;
    assert_eq!(cache_status(&unrelated), "miss");
    assert_eq!(provider_calls(&llmock).await, 3);
}

#[tokio::test]
async fn exact_cache_in_redis_is_shared_by_gateways() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let redis = RedisServer::start();
    let node = format!("  stores:\n    redis: {{urls: ['{}']}}\n", redis.url());
    let routes = format!(
        "  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - ai_response_cache: {{store: redis, ttl: 1m}}
{PROXY}"
    );
    let first = gateway(&llmock, None, &node, &routes);
    let second = gateway(&llmock, None, &node, &routes);
    let client = TestClient::default();

    let miss = ask(&client, &first.url("/v1/chat/completions"), QUESTION, false).await;
    assert_eq!(cache_status(&miss), "miss");
    // The answer is written to Redis once the client has it.
    eventually("the answer in Redis", || async {
        let keys = redis.command(&["KEYS", "gantry:cache ai gpt /v1/chat/completions *"]);
        keys.contains("cache ai gpt /v1/chat/completions ").then_some(())
    })
    .await;
    let hit = ask(&client, &second.url("/v1/chat/completions"), QUESTION, true).await;
    assert_eq!(cache_status(&hit), "hit", "another gateway process finds it");
    assert_eq!(delta_content(&chunks(&hit)), content(&miss));
    assert_eq!(provider_calls(&llmock).await, 1);
}

#[tokio::test]
async fn semantic_cache_in_memory_answers_paraphrases_respects_the_threshold_and_survives_a_dead_embedder() {
    let paraphrase = similarity(QUESTION, PARAPHRASE);
    assert!(paraphrase > 0.9 && paraphrase < 0.97, "the test's premise: {paraphrase}");
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let mut embedder = EmbeddingServer::start().await;
    let semantic = |threshold: f64| {
        format!(
            "      - ai_semantic_cache:
          embeddings: {{upstream: embedder, model: bag-of-words, timeout: 2s}}
          threshold: {threshold}
          memory_zone: threshold-{threshold}
"
        )
    };
    let routes = format!(
        "  - id: ai
    paths: [/v1/chat/completions]
    policies:
{}{PROXY}  - id: strict
    paths: [/strict/v1/chat/completions]
    policies:
{}{PROXY}",
        semantic(0.9),
        semantic(0.97)
    );
    let gateway = gateway(&llmock, Some(&embedder), "", &routes);
    let client = TestClient::default();
    let url = gateway.url("/v1/chat/completions");

    let first = ask(&client, &url, QUESTION, false).await;
    assert_eq!(cache_status(&first), "miss");

    let hit = ask(&client, &url, PARAPHRASE, false).await;
    assert_eq!(cache_status(&hit), "hit", "a paraphrase sharing most words");
    assert_eq!(content(&hit), content(&first), "the answer to the first wording");
    let shown: f32 = hit.headers["x-ai-cache-similarity"].to_str().expect("text").parse().expect("a number");
    assert!((shown - paraphrase).abs() < 0.001, "{shown} vs {paraphrase}");

    let streamed = ask(&client, &url, PARAPHRASE, true).await;
    assert_eq!(cache_status(&streamed), "hit");
    assert_eq!(delta_content(&chunks(&streamed)), content(&first));

    let unrelated = ask(&client, &url, UNRELATED, false).await;
    assert_eq!(cache_status(&unrelated), "miss");
    assert!(content(&unrelated).contains("sourdough"));
    assert_eq!(provider_calls(&llmock).await, 2);

    let strict = gateway.url("/strict/v1/chat/completions");
    assert_eq!(cache_status(&ask(&client, &strict, QUESTION, false).await), "miss");
    assert_eq!(cache_status(&ask(&client, &strict, PARAPHRASE, false).await), "miss", "below 0.97");
    assert_eq!(cache_status(&ask(&client, &strict, QUESTION, false).await), "hit", "the same words");
    assert_eq!(provider_calls(&llmock).await, 4);
    assert_eq!(embedder.requests(), 7, "one embedding per request");

    embedder.stop();
    let answered = ask(&client, &url, QUESTION, false).await;
    assert_eq!(cache_status(&answered), "miss", "no embedding: a miss, not an error");
    assert!(content(&answered).contains(QUESTION));
    assert_eq!(provider_calls(&llmock).await, 5);
}

#[tokio::test]
async fn semantic_cache_in_redis_is_shared_by_gateways() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let embedder = EmbeddingServer::start().await;
    let redis = RedisServer::start();
    let node = format!("  stores:\n    redis: {{urls: ['{}']}}\n", redis.url());
    let routes = format!(
        "  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - ai_semantic_cache:
          store: redis
          embeddings: {{upstream: embedder, model: bag-of-words}}
{PROXY}"
    );
    let first = gateway(&llmock, Some(&embedder), &node, &routes);
    let second = gateway(&llmock, Some(&embedder), &node, &routes);
    let client = TestClient::default();

    let miss = ask(&client, &first.url("/v1/chat/completions"), QUESTION, false).await;
    assert_eq!(cache_status(&miss), "miss");
    eventually("the prompt's vector in Redis", || async {
        let keys = redis.command(&["KEYS", "gantry:semantic ai_*"]);
        keys.contains("semantic ai_").then_some(())
    })
    .await;
    let hit = ask(&client, &second.url("/v1/chat/completions"), PARAPHRASE, false).await;
    assert_eq!(cache_status(&hit), "hit");
    assert_eq!(content(&hit), content(&miss));
    assert_eq!(provider_calls(&llmock).await, 1);
    let unrelated = ask(&client, &second.url("/v1/chat/completions"), UNRELATED, false).await;
    assert_eq!(cache_status(&unrelated), "miss");
    assert_eq!(provider_calls(&llmock).await, 2);
}
