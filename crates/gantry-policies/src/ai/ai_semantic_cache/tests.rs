use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use gantry_policy_api::ai::AiExchange;
use gantry_policy_api::subrequest::{
    allow_subrequests, ChunkStream, StreamingFuture, Subrequest, SubrequestError, SubrequestFuture, SubrequestSender,
};
use gantry_policy_api::testing::{build_policy_with_stores, exchange_from, request_parts, run_response};
use gantry_policy_api::{PolicyResponse, RegisteredPolicy, RequestBody};
use gantry_state::Stores;
use gantry_testkit::embeddings::embed;

use super::*;
use crate::ai::cache::CACHE_HEADER;
use crate::ai::AnswerTaps;

const CONFIG: &str = "upstreams:\n  - id: embedder\n    endpoints: [127.0.0.1:1]\n";

const SETTINGS: &str = "embeddings: {upstream: embedder, model: bag-of-words, api_key: emb-key}\n";

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<AiSemanticCache>()
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_policy_with_stores(entry(), &format!("{SETTINGS}{settings}"), CONFIG, &Stores::in_memory())
        .unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

fn errors(settings: &str) -> Vec<String> {
    match build_policy_with_stores(entry(), settings, CONFIG, &Stores::in_memory()) {
        Ok(_) => panic!("settings accepted that should be refused:\n{settings}"),
        Err(errors) => errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect(),
    }
}

/// An embeddings endpoint answering with the test kit's bag-of-words vectors, or failing.
#[derive(Default)]
struct Embedder {
    down: bool,
    calls: AtomicUsize,
    sent: Mutex<Vec<(http::request::Parts, Value)>>,
}

impl SubrequestSender for Embedder {
    fn send(&self, _: Subrequest) -> SubrequestFuture {
        Box::pin(std::future::ready(Err(SubrequestError::Failed("not used".to_owned()))))
    }

    fn open(&self, request: StreamingSubrequest) -> StreamingFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&request.body).expect("a JSON request");
        let text = body["input"].as_str().unwrap_or_default().to_owned();
        self.sent.lock().expect("lock").push((request.head, body));
        let down = self.down;
        Box::pin(async move {
            if down {
                return Err(SubrequestError::Failed("connecting to 127.0.0.1:1 failed: refused".to_owned()));
            }
            let answer =
                json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": embed(&text)}]});
            let chunks: ChunkStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from(answer.to_string()))]));
            Ok(http::Response::new(chunks))
        })
    }
}

fn chat(question: &str) -> Value {
    json!({"model": "gpt", "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": question}
    ]})
}

fn completion(text: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    })
}

async fn send(policy: &dyn Policy, embedder: &Arc<Embedder>, body: &Value) -> (Option<PolicyResponse>, Exchange) {
    let mut exchange = exchange_from("10.0.0.1:1");
    exchange.extensions.insert(RequestBody(Bytes::from(body.to_string())));
    allow_subrequests(&mut exchange, embedder.clone());
    let mut request = request_parts(http::Request::post("/v1/chat/completions").body(()).expect("request"));
    match policy.on_request(&mut request, &mut exchange).resolve().await {
        Flow::Respond(response) => (Some(response), exchange),
        Flow::Continue => (None, exchange),
    }
}

fn give_answer(exchange: &Exchange, answer: &Value) {
    for tap in &exchange.extensions.get::<AnswerTaps>().expect("a tap on a miss").0 {
        tap(answer);
    }
}

const QUESTION: &str = "What is the capital of France?";
const PARAPHRASE: &str = "What is the capital city of France?";
const UNRELATED: &str = "How do I bake sourdough bread at home?";

#[tokio::test]
async fn answers_a_paraphrase_from_the_cache_and_an_unrelated_prompt_from_the_provider() {
    let policy = policy("threshold: 0.9");
    let embedder = Arc::new(Embedder::default());
    let (answered, mut exchange) = send(&*policy, &embedder, &chat(QUESTION)).await;
    assert!(answered.is_none());
    assert_eq!(run_response(&*policy, http::Response::new(()), &mut exchange).headers[&CACHE_HEADER], "miss");
    give_answer(&exchange, &completion("Paris."));
    {
        let sent = embedder.sent.lock().expect("lock");
        let (head, body) = &sent[0];
        assert_eq!(head.uri, "/v1/embeddings");
        assert_eq!(head.headers["authorization"], "Bearer emb-key");
        assert_eq!(body, &json!({"model": "bag-of-words", "input": QUESTION}), "the last user message only");
    }

    let (answered, mut exchange) = send(&*policy, &embedder, &chat(PARAPHRASE)).await;
    let response = answered.expect("a paraphrase hits");
    assert_eq!(response.headers()[&CACHE_HEADER], "hit");
    let similarity: f32 = response.headers()["x-ai-cache-similarity"].to_str().expect("text").parse().expect("number");
    assert!((0.9..1.0).contains(&similarity), "{similarity}");
    let body: Value = serde_json::from_slice(response.body()).expect("JSON");
    assert_eq!(body["choices"][0]["message"]["content"], "Paris.");
    let usage = AiExchange::of(&mut exchange.extensions).usage().expect("reported");
    assert!(usage.cache_hit);
    assert_eq!((usage.input_tokens, usage.output_tokens, usage.cost), (12, 2, Some(0.0)));

    let (answered, _) = send(&*policy, &embedder, &chat(UNRELATED)).await;
    assert!(answered.is_none(), "an unrelated prompt misses");
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn respects_the_threshold_and_keeps_models_apart() {
    let strict = policy("threshold: 0.97");
    let embedder = Arc::new(Embedder::default());
    let (_, exchange) = send(&*strict, &embedder, &chat(QUESTION)).await;
    give_answer(&exchange, &completion("Paris."));
    assert!(send(&*strict, &embedder, &chat(PARAPHRASE)).await.0.is_none(), "0.93 is below 0.97");
    assert!(send(&*strict, &embedder, &chat(QUESTION)).await.0.is_some(), "the same question still hits");
    let mut other_model = chat(QUESTION);
    other_model["model"] = json!("claude");
    assert!(send(&*strict, &embedder, &other_model).await.0.is_none(), "another model's entries are apart");
}

#[tokio::test]
async fn an_embeddings_endpoint_that_fails_makes_a_miss_that_stores_nothing() {
    let policy = policy("");
    let embedder = Arc::new(Embedder { down: true, ..Embedder::default() });
    let (answered, mut exchange) = send(&*policy, &embedder, &chat(QUESTION)).await;
    assert!(answered.is_none());
    assert!(exchange.extensions.get::<AnswerTaps>().is_none(), "no vector: nothing to store");
    assert_eq!(run_response(&*policy, http::Response::new(()), &mut exchange).headers[&CACHE_HEADER], "miss");
}

#[test]
fn embeds_the_last_user_message_or_every_message() {
    let body = chat(QUESTION);
    let body = body.as_object().expect("object");
    assert_eq!(prompt_text(body, PromptPart::LastUser).as_deref(), Some(QUESTION));
    assert_eq!(
        prompt_text(body, PromptPart::AllMessages).as_deref(),
        Some("system: Answer briefly.\nuser: What is the capital of France?")
    );
    let completion = json!({"model": "gpt", "prompt": "Say hi"});
    assert_eq!(prompt_text(completion.as_object().expect("object"), PromptPart::LastUser).as_deref(), Some("Say hi"));
    let silent = json!({"model": "gpt", "messages": [{"role": "assistant", "content": "Hello"}]});
    assert_eq!(prompt_text(silent.as_object().expect("object"), PromptPart::LastUser), None);
}

#[test]
fn reads_the_first_vector_of_an_embeddings_answer() {
    assert_eq!(vector_of(br#"{"data": [{"embedding": [0.5, -1]}]}"#), Ok(vec![0.5, -1.0]));
    assert!(vector_of(br#"{"data": []}"#).is_err());
    assert!(vector_of(br#"{"data": [{"embedding": ["a"]}]}"#).is_err());
    assert!(vector_of(b"not json").is_err());
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let at = "global_policies[0].ai_semantic_cache";
    let found = errors(
        "embeddings: {upstream: nowhere, model: '', base_path: v1, timeout: 0s}\nthreshold: 1.5\nmax_vectors: 0\nttl: 0s",
    );
    for expected in [
        format!("{at}.embeddings.upstream: unknown upstream `nowhere`; configured upstreams: embedder"),
        format!("{at}.embeddings.model: must not be empty"),
        format!("{at}.embeddings.base_path: `v1` is not a path"),
        format!("{at}.embeddings.timeout: must be more than 0"),
        format!("{at}.threshold: must be more than 0 and at most 1 (0.9 is usual)"),
        format!("{at}.max_vectors: must be at least 1"),
        format!("{at}.ttl: must be more than 0"),
    ] {
        assert!(found.contains(&expected), "{expected} not in {found:?}");
    }
    let found = errors("threshold: 0.9");
    assert!(found.iter().any(|error| error.contains("embeddings")), "embeddings are required: {found:?}");
}
