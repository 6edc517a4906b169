use bytes::Bytes;
use gantry_policy_api::ai::AiExchange;
use gantry_policy_api::testing::{build_policy_with_stores, exchange_from, request_parts, run_request, run_response};
use gantry_policy_api::{Consumer, Identity, PolicyResponse, RegisteredPolicy, RequestBody};
use gantry_state::Stores;
use http::StatusCode;
use serde_json::json;

use super::*;
use crate::ai::cache::CACHE_HEADER;
use crate::ai::AnswerTaps;

const CONFIG: &str = "consumers:\n  - id: alice\n  - id: bob\n";

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<AiResponseCache>()
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_policy_with_stores(entry(), settings, CONFIG, &Stores::in_memory())
        .unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

fn errors(settings: &str) -> Vec<String> {
    match build_policy_with_stores(entry(), settings, CONFIG, &Stores::in_memory()) {
        Ok(_) => panic!("settings accepted that should be refused:\n{settings}"),
        Err(errors) => errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect(),
    }
}

fn exchange(body: &Value, consumer: Option<&str>) -> Exchange {
    let mut exchange = exchange_from("10.0.0.1:1");
    if let Some(consumer) = consumer {
        let identity = Consumer { id: consumer.into(), groups: Vec::new().into() };
        exchange.authenticate(Identity::credential(Arc::new(identity), format!("{consumer}:k").into(), "key_auth"));
    }
    exchange.extensions.insert(RequestBody(Bytes::from(body.to_string())));
    exchange
}

/// Runs the request hook: the cache's answer on a hit, or the exchange (with its tap) on a miss.
fn send(policy: &dyn Policy, path: &str, body: &Value, consumer: Option<&str>) -> (Option<PolicyResponse>, Exchange) {
    let mut exchange = exchange(body, consumer);
    let mut request = request_parts(http::Request::post(path).body(()).expect("request"));
    match run_request(policy, &mut request, &mut exchange) {
        Flow::Respond(response) => (Some(response), exchange),
        Flow::Continue => (None, exchange),
    }
}

/// What `ai_proxy` does with the answer once the client had it.
fn give_answer(exchange: &Exchange, answer: &Value) {
    for tap in &exchange.extensions.get::<AnswerTaps>().expect("a tap on a miss").0 {
        tap(answer);
    }
}

fn question() -> Value {
    json!({"model": "gpt", "temperature": 0.2, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
}

fn completion() -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16}
    })
}

#[test]
fn stores_the_answer_of_a_miss_and_answers_the_same_request_from_it() {
    let stores = Stores::in_memory();
    let policy =
        build_policy_with_stores(entry(), "ttl: 1m", CONFIG, &stores).unwrap_or_else(|errors| panic!("{errors}"));
    let (answered, mut exchange) = send(&*policy, "/v1/chat/completions", &question(), None);
    assert!(answered.is_none(), "a miss goes on to ai_proxy");
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(response.headers[&CACHE_HEADER], "miss");
    give_answer(&exchange, &completion());

    let (answered, mut exchange) = send(&*policy, "/v1/chat/completions", &question(), None);
    let response = answered.expect("a hit");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[&CACHE_HEADER], "hit");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_slice(response.body()).expect("JSON");
    assert_eq!(body, completion());
    let usage = AiExchange::of(&mut exchange.extensions).usage().expect("reported");
    assert!(usage.cache_hit);
    assert_eq!((usage.input_tokens, usage.output_tokens, usage.cost), (14, 2, Some(0.0)));
    assert_eq!((&*usage.request_model, usage.response_model.as_str(), usage.provider), ("gpt", "gpt-4o-mini", ""));
    assert_eq!(stores.response_caches().counted("test-route", "hit"), 1);
    assert_eq!(stores.response_caches().counted("test-route", "miss"), 1);
}

#[test]
fn the_key_ignores_field_order_stream_settings_and_user_but_not_other_parameters() {
    let policy = policy("");
    let (_, exchange) = send(&*policy, "/v1/chat/completions", &question(), None);
    give_answer(&exchange, &completion());

    let reordered = json!({
        "messages": [{"content": "What is the capital of France?", "role": "user"}],
        "user": "someone", "model": "gpt", "temperature": 0.2,
        "stream": true, "stream_options": {"include_usage": true}
    });
    let (answered, _) = send(&*policy, "/v1/chat/completions", &reordered, None);
    let response = answered.expect("the same request, streamed");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = std::str::from_utf8(response.body()).expect("utf-8");
    assert!(text.contains("\"content\":\"Paris.\""), "{text}");
    assert!(text.contains("\"total_tokens\":16"), "the usage chunk was asked for: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    let mut warmer = question();
    warmer["temperature"] = json!(0.9);
    assert!(send(&*policy, "/v1/chat/completions", &warmer, None).0.is_none(), "another temperature");
    let mut other_model = question();
    other_model["model"] = json!("claude");
    assert!(send(&*policy, "/v1/chat/completions", &other_model, None).0.is_none(), "another model");
    assert!(send(&*policy, "/v1/completions", &question(), None).0.is_none(), "another endpoint");
}

#[test]
fn per_consumer_keeps_each_consumers_answers_apart() {
    let shared = policy("");
    let (_, exchange) = send(&*shared, "/v1/chat/completions", &question(), Some("alice"));
    give_answer(&exchange, &completion());
    assert!(send(&*shared, "/v1/chat/completions", &question(), Some("bob")).0.is_some(), "shared by default");

    let own = policy("per_consumer: true\nmemory_zone: own");
    let (_, exchange) = send(&*own, "/v1/chat/completions", &question(), Some("alice"));
    give_answer(&exchange, &completion());
    assert!(send(&*own, "/v1/chat/completions", &question(), Some("alice")).0.is_some());
    assert!(send(&*own, "/v1/chat/completions", &question(), Some("bob")).0.is_none());
}

#[test]
fn does_not_store_an_answer_longer_than_max_entry_bytes() {
    let policy = policy("max_entry_bytes: 100");
    let (_, exchange) = send(&*policy, "/v1/chat/completions", &question(), None);
    give_answer(&exchange, &completion());
    assert!(send(&*policy, "/v1/chat/completions", &question(), None).0.is_none());
}

#[test]
fn leaves_requests_it_cannot_key_to_ai_proxy() {
    let policy = policy("");
    let (answered, exchange) = send(&*policy, "/v1/chat/completions", &json!({"messages": []}), None);
    assert!(answered.is_none());
    assert!(exchange.extensions.get::<AnswerTaps>().is_none(), "no model: nothing to key on");
    let mut exchange = exchange_from("10.0.0.1:1");
    exchange.extensions.insert(RequestBody(Bytes::from_static(b"{not json")));
    let mut request = request_parts(http::Request::post("/v1/chat/completions").body(()).expect("request"));
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert!(!response.headers.contains_key(&CACHE_HEADER), "the cache did not look");
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let found =
        errors("ttl: 0s\nmax_entry_bytes: 2000\nmemory_max_bytes: 1000\nmemory_zone: ' '\nmax_request_bytes: 0");
    let at = "global_policies[0].ai_response_cache";
    for expected in [
        format!("{at}.ttl: must be more than 0"),
        format!("{at}.max_entry_bytes: is larger than memory_max_bytes: no such answer would fit the zone"),
        format!("{at}.memory_zone: give the zone a name"),
        format!("{at}.max_request_bytes: must be at least 1"),
    ] {
        assert!(found.contains(&expected), "{expected} not in {found:?}");
    }
    let found = errors("store: redis");
    assert!(found.iter().any(|error| error.starts_with(&format!("{at}.store: `redis` needs"))), "{found:?}");
    let found = errors("ttl_seconds: 5");
    assert!(found.iter().any(|error| error.contains("ttl_seconds")), "{found:?}");
}
