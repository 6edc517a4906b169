use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;

use gantry_policy_api::response_body::take_streamed_body;
use gantry_policy_api::subrequest::{
    allow_subrequests, StreamingFuture, SubrequestError, SubrequestFuture, SubrequestSender,
};
use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, request_parts};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<AiProxy>()
}

const CONFIG: &str =
    "upstreams:\n  - id: first\n    endpoints: [127.0.0.1:1]\n  - id: second\n    endpoints: [127.0.0.1:2]\n";

const TWO_TARGETS: &str = "models:
  - name: chat
    targets:
      - {provider: anthropic, upstream: first, model: claude-sonnet-4-5, api_key: ant-key, weight: 1}
      - {provider: openai, upstream: second, model: gpt-4o-mini, api_key: oai-key, weight: 0}
";

fn build(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(entry(), settings, CONFIG).unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

/// What a stand-in provider answers: status, headers and body chunks.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    chunks: Vec<&'static str>,
}

fn answer(status: u16, body: &'static str) -> Answer {
    Answer { status, headers: Vec::new(), chunks: vec![body] }
}

/// Answers each upstream as told (no answer: refused) and records what was sent.
#[derive(Default)]
struct StandIn {
    answers: HashMap<&'static str, Answer>,
    sent: Mutex<Vec<(String, http::request::Parts, Bytes)>>,
}

impl SubrequestSender for StandIn {
    fn send(&self, _request: gantry_policy_api::subrequest::Subrequest) -> SubrequestFuture {
        Box::pin(std::future::ready(Err(SubrequestError::Failed("not used".to_owned()))))
    }

    fn open(&self, request: StreamingSubrequest) -> StreamingFuture {
        let answer = self.answers.get(&*request.upstream).cloned();
        self.sent.lock().expect("lock").push((request.upstream.to_string(), request.head, request.body));
        Box::pin(async move {
            let answer =
                answer.ok_or_else(|| SubrequestError::Failed("connecting to 127.0.0.1:1 failed: refused".into()))?;
            let chunks: Vec<Result<Bytes, String>> =
                answer.chunks.iter().map(|chunk| Ok(Bytes::from_static(chunk.as_bytes()))).collect();
            let stream: ChunkStream = Box::pin(futures_util::stream::iter(chunks));
            let mut response = http::Response::new(stream);
            *response.status_mut() = StatusCode::from_u16(answer.status).expect("status");
            for (name, value) in answer.headers {
                response.headers_mut().insert(name, HeaderValue::from_static(value));
            }
            Ok(response)
        })
    }
}

fn stand_in(answers: &[(&'static str, Answer)]) -> Arc<StandIn> {
    Arc::new(StandIn { answers: answers.iter().cloned().collect(), sent: Mutex::default() })
}

/// The response and, for a stream, its whole body.
async fn run(
    policy: &dyn Policy,
    sender: Arc<StandIn>,
    method: Method,
    uri: &str,
    body: &str,
) -> (PolicyResponse, Bytes) {
    let mut request = request_parts(http::Request::builder().method(method).uri(uri).body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    allow_subrequests(&mut exchange, sender);
    exchange.extensions.insert(RequestBody(Bytes::from(body.to_owned())));
    let response = match policy.on_request(&mut request, &mut exchange).resolve().await {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("ai_proxy always answers"),
    };
    let body = match take_streamed_body(&mut exchange) {
        Some(chunks) => read_whole(chunks, usize::MAX).await.expect("the stream"),
        None => response.body().clone(),
    };
    (response, body)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON")
}

const CHAT: &str =
    r#"{"model":"chat","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#;

const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":3}}"#;

#[tokio::test]
async fn translates_a_chat_completion_to_anthropic_and_back() {
    let policy = build(TWO_TARGETS);
    let sender = stand_in(&[("first", answer(200, ANTHROPIC_ANSWER))]);
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::OK);
    let completion = json_of(&body);
    assert_eq!(completion["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(completion["usage"]["total_tokens"], 15);
    let sent = sender.sent.lock().expect("lock");
    let (upstream, head, body) = &sent[0];
    assert_eq!(upstream, "first");
    assert_eq!(head.uri, "/v1/messages");
    assert_eq!(head.headers["x-api-key"], "ant-key");
    assert_eq!(head.headers["anthropic-version"], "2023-06-01");
    let sent_body = json_of(body);
    assert_eq!(sent_body["system"], "Be brief.");
    assert_eq!(sent_body["model"], "claude-sonnet-4-5");
}

#[tokio::test]
async fn falls_back_on_429_and_keeps_the_target_out_for_its_retry_after() {
    let policy = build(TWO_TARGETS);
    let limited = Answer {
        status: 429,
        headers: vec![("retry-after", "30")],
        chunks: vec![r#"{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}"#],
    };
    let openai_answer = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"From OpenAI"},"finish_reason":"stop"}]}"#;
    let sender = stand_in(&[("first", limited), ("second", answer(200, openai_answer))]);
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(&body)["choices"][0]["message"]["content"], "From OpenAI");
    {
        let sent = sender.sent.lock().expect("lock");
        assert_eq!(sent.iter().map(|(upstream, ..)| upstream.as_str()).collect::<Vec<_>>(), ["first", "second"]);
        let (_, head, body) = &sent[1];
        assert_eq!(head.uri, "/v1/chat/completions");
        assert_eq!(head.headers["authorization"], "Bearer oai-key");
        assert_eq!(json_of(body)["model"], "gpt-4o-mini");
        assert_eq!(json_of(body)["messages"][0]["role"], "system", "OpenAI gets the messages as they came");
    }
    run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    {
        let sent = sender.sent.lock().expect("lock");
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2].0, "second", "the target that asked for 30 s is not called again");
    }

    // With the other target down too, the client learns when to come back.
    let down = stand_in(&[("second", answer(503, r#"{"error":{"message":"down","type":"server_error"}}"#))]);
    let (response, _) = run(&*policy, down.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let wait: u64 = response.headers()[RETRY_AFTER].to_str().expect("text").parse().expect("seconds");
    assert!((29..=30).contains(&wait), "{wait}");
    assert_eq!(down.sent.lock().expect("lock").len(), 1, "only the target not cooling off was tried");
}

#[tokio::test]
async fn answers_503_with_retry_after_when_every_target_is_cooling_off() {
    let policy = build(TWO_TARGETS);
    let limited = |seconds| Answer {
        status: 429,
        headers: vec![("retry-after", seconds)],
        chunks: vec![r#"{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}"#],
    };
    let sender = stand_in(&[("first", limited("20")), ("second", limited("40"))]);
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(&body)["error"]["type"], "rate_limit_error");
    assert_eq!(response.headers()[RETRY_AFTER], "20", "the first target back decides");
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(json_of(&body)["error"]["message"].as_str().expect("message").contains("left out for now"));
    let wait: u64 = response.headers()[RETRY_AFTER].to_str().expect("text").parse().expect("seconds");
    assert!((19..=20).contains(&wait), "{wait}");
    assert_eq!(sender.sent.lock().expect("lock").len(), 2, "no target was called the second time");
}

#[tokio::test]
async fn the_last_error_is_the_answer_when_every_target_fails() {
    let policy = build(TWO_TARGETS);
    let overloaded = answer(529, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
    let sender = stand_in(&[("first", overloaded)]);
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(sender.sent.lock().expect("lock").len(), 2, "the refused second target was tried");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json_of(&body)["error"]["type"], "server_error");
    assert!(json_of(&body)["error"]["message"].as_str().expect("message").contains("refused"));

    let sender = stand_in(&[
        ("first", answer(500, "{}")),
        ("second", answer(503, r#"{"error":{"message":"down","type":"server_error"}}"#)),
    ]);
    let (response, body) = run(&*policy, sender, Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(&body)["error"]["message"], "down");
}

#[tokio::test]
async fn a_client_error_is_not_retried_elsewhere() {
    let policy = build(TWO_TARGETS);
    let invalid = answer(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: at least one message is required"}}"#,
    );
    let sender = stand_in(&[("first", invalid), ("second", answer(200, "{}"))]);
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body),
        json!({"error": {"message": "messages: at least one message is required", "type": "invalid_request_error", "param": null, "code": null}})
    );
    assert_eq!(sender.sent.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn streams_anthropic_events_as_openai_chunks_across_chunk_boundaries() {
    let policy = build(TWO_TARGETS);
    let stream = Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        chunks: vec![
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel",
            "lo\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ],
    };
    let sender = stand_in(&[("first", stream)]);
    let request = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/ai/v1/chat/completions", request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/event-stream");
    let text = std::str::from_utf8(&body).expect("utf-8");
    let events: Vec<&str> = text.split("\n\n").filter(|event| !event.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    assert!(events[0].contains(r#""delta":{"content":"","role":"assistant"}"#), "{}", events[0]);
    assert!(events[1].contains(r#""delta":{"content":"Hello"}"#), "{}", events[1]);
    assert!(events[2].contains(r#""finish_reason":"length""#), "{}", events[2]);
    assert_eq!(events[3], "data: [DONE]");
    assert_eq!(sender.sent.lock().expect("lock")[0].1.headers[ACCEPT], "text/event-stream");
}

#[tokio::test]
async fn lists_models_and_refuses_unknown_ones_and_paths() {
    let policy = build(TWO_TARGETS);
    let (response, body) = run(&*policy, stand_in(&[]), Method::GET, "/v1/models", "").await;
    assert_eq!(response.status(), StatusCode::OK);
    let list = json_of(&body);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "chat");
    assert_eq!(list["data"][0]["object"], "model");

    let unknown = r#"{"model":"gpt-5","messages":[]}"#;
    let (response, body) = run(&*policy, stand_in(&[]), Method::POST, "/v1/chat/completions", unknown).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["code"], "model_not_found");

    let (response, _) = run(&*policy, stand_in(&[]), Method::POST, "/v1/chat/completions", "not json").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (response, _) = run(&*policy, stand_in(&[]), Method::POST, "/v1/images/generations", CHAT).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let anthropic_only = build(
        "models:\n  - name: chat\n    targets:\n      - {provider: anthropic, upstream: first, model: claude-sonnet-4-5}\n",
    );
    let embed = r#"{"model":"chat","input":"a text"}"#;
    let (response, body) = run(&*anthropic_only, stand_in(&[]), Method::POST, "/v1/embeddings", embed).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "Anthropic has no embeddings");
    assert!(json_of(&body)["error"]["message"].as_str().is_some_and(|message| message.contains("embeddings")));
    let (response, _) = run(&*policy, stand_in(&[]), Method::GET, "/v1/chat/completions", "").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

fn compiled(upstream: &str, weight: u32) -> CompiledTarget {
    CompiledTarget {
        info: TargetInfo {
            provider: Provider::Openai,
            model: String::new(),
            base_path: "/v1".to_owned(),
            default_max_tokens: 1,
            vertex: None,
            azure: None,
            bedrock: None,
        },
        adapter: Provider::Openai.adapter(),
        upstream: Arc::from(upstream),
        auth: None,
        weight,
        price: None,
        health: TargetHealth::default(),
    }
}

const NO_CIRCUIT: Circuit =
    Circuit { failures: 0, open_for: std::time::Duration::from_secs(1), probe_for: std::time::Duration::from_secs(1) };

fn names(targets: &[CompiledTarget], circuit: &Circuit, picks: &[u64]) -> Vec<String> {
    let mut picks = picks.iter().copied();
    order(targets, circuit, |_| picks.next().expect("a pick"))
        .iter()
        .map(|target| target.upstream.to_string())
        .collect()
}

#[test]
fn orders_targets_by_weight_with_zero_weights_last() {
    let targets = [compiled("spare", 0), compiled("a", 1), compiled("b", 3)];
    assert_eq!(names(&targets, &NO_CIRCUIT, &[0, 0]), ["a", "b", "spare"]);
    assert_eq!(names(&targets, &NO_CIRCUIT, &[1, 0]), ["b", "a", "spare"]);
    assert_eq!(names(&targets, &NO_CIRCUIT, &[3, 0]), ["b", "a", "spare"]);
    targets[2].health.block_for(std::time::Duration::from_secs(60));
    assert_eq!(names(&targets, &NO_CIRCUIT, &[0]), ["a", "spare"]);
}

#[test]
fn a_circuit_opens_after_consecutive_failures_and_lets_one_probe_through_once_open_for_passed() {
    let circuit = Circuit {
        failures: 2,
        open_for: std::time::Duration::from_millis(150),
        probe_for: std::time::Duration::from_secs(60),
    };
    let targets = [compiled("a", 1)];
    targets[0].health.failed(&circuit);
    targets[0].health.succeeded();
    targets[0].health.failed(&circuit);
    assert_eq!(names(&targets, &circuit, &[0]), ["a"], "a success in between resets the count");
    targets[0].health.failed(&circuit);
    assert!(names(&targets, &circuit, &[]).is_empty(), "open after two failures in a row");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(names(&targets, &circuit, &[0]), ["a"], "one probe once open_for passed");
    assert!(names(&targets, &circuit, &[]).is_empty(), "the others wait for the probe");
    targets[0].health.failed(&circuit);
    assert!(targets[0].health.is_blocked(), "a failed probe opens it again");
}

#[test]
fn backoff_doubles_each_round_up_to_the_ceiling_with_jitter() {
    let base = std::time::Duration::from_millis(100);
    let max = std::time::Duration::from_millis(350);
    for _ in 0..50 {
        let first = backoff(1, base, max);
        assert!((50..=100).contains(&first.as_millis()), "{first:?}");
        let second = backoff(2, base, max);
        assert!((100..=200).contains(&second.as_millis()), "{second:?}");
        let capped = backoff(9, base, max);
        assert!((175..=350).contains(&capped.as_millis()), "{capped:?}");
    }
}

#[test]
fn refuses_bad_settings_with_field_paths() {
    let cases = [
        ("models: []", "models"),
        ("timeout: 0s\nmodels: [{name: a, targets: [{provider: openai, upstream: first, model: m}]}]", "timeout"),
        (
            "stream_idle_timeout: 0s\nmodels: [{name: a, targets: [{provider: openai, upstream: first, model: m}]}]",
            "stream_idle_timeout",
        ),
        (
            "max_request_bytes: 0\nmodels: [{name: a, targets: [{provider: openai, upstream: first, model: m}]}]",
            "max_request_bytes",
        ),
        ("models: [{name: a, targets: []}]", "models[0].targets"),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: m, weight: 0}]}]",
            "models[0].targets",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: nowhere, model: m}]}]",
            "models[0].targets[0].upstream",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: ''}]}]",
            "models[0].targets[0].model",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: m, base_path: v1}]}]",
            "models[0].targets[0].base_path",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: m, auth_header: 'a b'}]}]",
            "models[0].targets[0].auth_header",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: m, api_key: \"a\\nb\"}]}]",
            "models[0].targets[0].api_key",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: m}]}, {name: a, targets: [{provider: openai, upstream: first, model: m}]}]",
            "models[1].name",
        ),
        (
            "models: [{name: a, targets: [{provider: watsonx, upstream: first, model: m}]}]",
            "models[0].targets[0].provider",
        ),
        (
            "models: [{name: a, targets: [{provider: vertex_ai, upstream: first, model: m}]}]",
            "models[0].targets[0].vertex",
        ),
        (
            "models: [{name: a, targets: [{provider: openai, upstream: first, model: m, colour: red}]}]",
            "models[0].targets[0]",
        ),
    ];
    for (settings, field) in cases {
        let errors = build_identity_policy_error(entry(), settings, CONFIG);
        let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
        let wanted = format!("global_policies[0].ai_proxy.{field}");
        assert!(paths.iter().any(|path| path.starts_with(&wanted)), "{settings}: {paths:?}, wanted {wanted}");
    }
}

#[test]
fn reads_retry_after_in_seconds_or_as_a_date() {
    let mut headers = http::HeaderMap::new();
    assert_eq!(retry_after(&headers), None);
    headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    assert_eq!(retry_after(&headers), Some(7));
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(100));
    headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("header"));
    assert!(retry_after(&headers).is_some_and(|seconds| (98..=100).contains(&seconds)));
}

#[tokio::test]
async fn passes_each_upstream_chunk_on_before_the_next_arrives_and_breaks_off_a_silent_stream() {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
    let upstream: ChunkStream = Box::pin(futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    }));
    let idle = std::time::Duration::from_millis(300);
    let mut translated = translate(upstream, passthrough(false, Vec::new()).0, idle);
    sender.send(Ok(Bytes::from_static(b"data: {\"n\":1}\n\n"))).expect("send");
    assert_eq!(translated.next().await.expect("a chunk").expect("ok"), "data: {\"n\":1}\n\n");
    sender.send(Ok(Bytes::from_static(b"data: {\"n\":2}\n"))).expect("send");
    sender.send(Ok(Bytes::from_static(b"\n"))).expect("send");
    assert_eq!(translated.next().await.expect("a chunk").expect("ok"), "data: {\"n\":2}\n\n");
    let started = std::time::Instant::now();
    let broken = translated.next().await.expect("an end").expect_err("broken off");
    assert!(broken.contains("sent nothing"), "{broken}");
    assert!(started.elapsed() >= idle);
    assert!(translated.next().await.is_none());
    drop(sender);
}

#[tokio::test]
async fn a_stream_that_ends_cleanly_without_done_still_gets_it() {
    let upstream: ChunkStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(b"data: {\"n\":1}\n\n"))]));
    let translated: Vec<Result<Bytes, String>> =
        translate(upstream, passthrough(false, Vec::new()).0, std::time::Duration::from_secs(5)).collect().await;
    let text: Vec<Bytes> = translated.into_iter().map(|chunk| chunk.expect("ok")).collect();
    assert_eq!(text, [Bytes::from_static(b"data: {\"n\":1}\n\n"), Bytes::from_static(b"data: [DONE]\n\n")]);
}

/// A client stream passing OpenAI chunks on, and the exchange its usage is reported to.
fn passthrough(include_usage: bool, filters: Vec<Arc<dyn AnswerFilter>>) -> (ClientStream, AiExchange) {
    let exchange = AiExchange::default();
    let report = UsageReport {
        exchange: exchange.clone(),
        operation: Operation::Chat,
        provider: "openai",
        request_model: Arc::from("chat"),
        response_model: "gpt-4o-mini".to_owned(),
        price: Some(Price { input: 2.0, output: 10.0 }),
        prompt: Arc::new(ChatRequest::new()),
    };
    let stream = ClientStream::new(
        Box::<super::super::sse::Parser>::default(),
        Box::new(providers::openai::Passthrough),
        false,
        include_usage,
        filters,
        report,
    );
    (stream, exchange)
}

fn text_chunk(text: &str, finish: Option<&str>) -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

const USAGE_CHUNK: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":5,\"total_tokens\":16}}\n\ndata: [DONE]\n\n";

#[test]
fn a_stream_reports_the_provider_usage_with_its_cost_and_drops_the_usage_chunk_unless_asked() {
    for include_usage in [false, true] {
        let (mut stream, exchange) = passthrough(include_usage, Vec::new());
        let out = stream.feed(text_chunk("Hello", None).as_bytes()).expect("feed");
        assert!(String::from_utf8_lossy(&out).contains("Hello"));
        assert_eq!(exchange.usage(), None, "not before the stream ends");
        let out = String::from_utf8(stream.feed(USAGE_CHUNK.as_bytes()).expect("feed")).expect("utf-8");
        assert_eq!(out.contains("\"usage\""), include_usage, "{out}");
        assert!(out.ends_with("data: [DONE]\n\n") || stream.end().ends_with(b"data: [DONE]\n\n"));
        let usage = exchange.usage().expect("reported at the end");
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.estimated), (11, 5, false));
        assert_eq!(usage.cost, Some((11.0 * 2.0 + 5.0 * 10.0) / 1_000_000.0));
        assert_eq!((usage.operation, usage.provider, &*usage.request_model), ("chat", "openai", "chat"));
    }
}

#[test]
fn a_stream_without_usage_is_estimated_and_one_left_by_the_client_still_reports() {
    let (mut stream, exchange) = passthrough(true, Vec::new());
    stream.feed(text_chunk("Hello there, how are you today?", Some("stop")).as_bytes()).expect("feed");
    let out = String::from_utf8(stream.end()).expect("utf-8");
    assert!(out.contains("\"usage\":{\"completion_tokens\""), "the client asked for usage: {out}");
    let usage = exchange.usage().expect("reported");
    assert!(usage.estimated);
    assert!(usage.output_tokens > 0);

    let (mut stream, exchange) = passthrough(false, Vec::new());
    stream.feed(text_chunk("Hello", None).as_bytes()).expect("feed");
    drop(stream);
    assert!(exchange.usage().is_some_and(|usage| usage.estimated), "an abandoned stream reports what it used");
}

/// Replaces `secret` by `***`, holding back a tail that could be the start of it.
struct Mask;

struct MaskStream(String);

impl AnswerFilter for Mask {
    fn filter(&self, text: &str) -> String {
        text.replace("secret", "***")
    }

    fn stream(&self) -> Box<dyn crate::ai::AnswerStreamFilter> {
        Box::new(MaskStream(String::new()))
    }
}

impl crate::ai::AnswerStreamFilter for MaskStream {
    fn push(&mut self, delta: &str) -> String {
        self.0.push_str(delta);
        let masked = self.0.replace("secret", "***");
        let keep = (1..6).rev().find(|len| masked.ends_with(&"secret"[..*len])).unwrap_or(0);
        let (out, held) = masked.split_at(masked.len() - keep);
        let out = out.to_owned();
        self.0 = held.to_owned();
        out
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

#[test]
fn answer_filters_rewrite_stream_text_across_chunks_and_flush_at_the_finish_reason() {
    let (mut stream, _) = passthrough(false, vec![Arc::new(Mask)]);
    let mut out = String::new();
    for (text, finish) in [("the sec", None), ("ret is sec", None), ("", Some("stop"))] {
        out.push_str(
            &String::from_utf8(stream.feed(text_chunk(text, finish).as_bytes()).expect("feed")).expect("utf-8"),
        );
    }
    out.push_str(&String::from_utf8(stream.end()).expect("utf-8"));
    let texts: Vec<String> = out
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| json_of(data.as_bytes())["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts.concat(), "the *** is sec");
    assert_eq!(texts[0], "the ");
}

#[test]
fn whole_answers_are_filtered_and_completions_turned_back_from_chats() {
    let mut answer = json!({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "my secret"}, "finish_reason": "stop"}]});
    filter_whole(&mut answer, &[Arc::new(Mask)]);
    assert_eq!(answer["choices"][0]["message"]["content"], "my ***");
    let completion = chat_as_completion(answer);
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(completion["choices"][0]["text"], "my ***");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    let request: ChatRequest =
        serde_json::from_str(r#"{"model":"m","prompt":["Say hi"],"max_tokens":5}"#).expect("json");
    let chat = completion_as_chat(&request).expect("one prompt");
    assert_eq!(chat["messages"], json!([{"role": "user", "content": "Say hi"}]));
    assert_eq!(chat["max_tokens"], 5);
    let two: ChatRequest = serde_json::from_str(r#"{"model":"m","prompt":["a","b"]}"#).expect("json");
    assert!(completion_as_chat(&two).is_err());
}

#[tokio::test]
async fn a_wait_asked_for_in_a_google_error_body_keeps_the_target_out() {
    let policy = build(
        "models:\n  - name: chat\n    targets:\n      - {provider: gemini, upstream: first, model: gemini-2.5-flash}\n",
    );
    // Gemini's 429 names its wait in a RetryInfo detail, with no Retry-After header.
    let limited = answer(
        429,
        r#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"25.5s"}]}}"#,
    );
    let sender = stand_in(&[("first", limited)]);
    let (response, body) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(&body)["error"]["type"], "rate_limit_error");
    let wait: u64 = response.headers()[RETRY_AFTER].to_str().expect("text").parse().expect("seconds");
    assert!((25..=26).contains(&wait), "{wait}");
    let (response, _) = run(&*policy, sender.clone(), Method::POST, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sender.sent.lock().expect("lock").len(), 1, "the target was not called within its wait");
}
