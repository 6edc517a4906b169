//! What AI exchanges used, through a running gateway with `ai_proxy` in front of llmock: the
//! tokens llmock reported reach the access log, the server span exported to a real OTLP
//! receiver and `/metrics`, for a whole answer and for a streamed one, whose record and span
//! wait for the stream's end. A plain request on the same gateway has none of it.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::client::TestClient;
use gantry_testkit::llmock::Llmock;
use gantry_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use gantry_testkit::{eventually, promtool, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{metrics, sse_chunks, start_gateway, with_admin};

const KEY: &str = "ai-telemetry-admin-key-0123";
const SERVER: i32 = 2;
/// Price of a million prompt and answer tokens of the `gpt` target.
const PRICE: (f64, f64) = (0.15, 0.6);

const AI_FIELDS: &str = "[request_id, route, status, ai_provider, ai_request_model, ai_response_model, ai_input_tokens, ai_output_tokens, ai_cost, ai_cache_hit, ai_tokens_estimated]";

/// A gateway logging `AI_FIELDS` to `log`, tracing every request to `receiver`, with the route
/// `ai` (`ai_proxy`: `gpt` through OpenAI's API with a price, `claude` through Anthropic's,
/// both at `llmock`) and the route `plain` to `upstream`.
fn gateway(log: &Path, receiver: &OtlpReceiver, llmock: &Llmock, upstream: &EchoUpstream) -> GatewayProcess {
    start_gateway(&with_admin(
        KEY,
        &format!(
            "  access_log: {{path: {log}, fields: {AI_FIELDS}}}
  tracing: {{exporter: {{protocol: http, endpoint: '{otlp}'}}, batch: {{interval: 100ms}}}}
upstreams:
  - id: llm
    endpoints: [{llm}]
    retries: {{attempts: 0}}
  - id: plain
    endpoints: [{plain}]
routes:
  - id: plain
    paths: [/plain/*]
    upstream: plain
  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - ai_proxy:
          timeout: 10s
          models:
            - name: gpt
              targets: [{{provider: openai, upstream: llm, model: gpt-4o-mini, price: {{input: {input}, output: {output}}}}}]
            - name: claude
              targets: [{{provider: anthropic, upstream: llm, model: claude-sonnet-4-5, base_path: /anthropic/v1}}]
",
            log = log.display(),
            otlp = receiver.http_endpoint(),
            llm = llmock.addr(),
            plain = upstream.addr(),
            input = PRICE.0,
            output = PRICE.1,
        ),
    ))
}

fn chat(model: &str, stream: bool) -> String {
    let mut body = json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello in a few words"}]
    });
    if stream {
        // The last chunk then carries the usage, for the test to compare with.
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string()
}

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-00f067aa0ba902b7-01")
}

/// The access log's records so far.
fn records(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).expect("each line is one JSON object")).collect()
}

/// The record of request `request_id`, once written.
async fn record_of(log: &Path, request_id: &str) -> Value {
    eventually(&format!("the access log record of {request_id}"), || {
        let found = records(log).into_iter().find(|record| record["request_id"] == request_id);
        async move { found }
    })
    .await
}

/// The server span of `trace`, once exported.
async fn server_span(receiver: &OtlpReceiver, trace: &str) -> ReceivedSpan {
    eventually(&format!("the server span of {trace}"), || {
        let found = receiver.trace(trace).into_iter().find(|span| span.span.kind == SERVER);
        async move { found }
    })
    .await
}

/// `/metrics` once it has every one of `lines`, checked by promtool.
async fn metrics_with(gateway: &GatewayProcess, lines: &[String]) -> String {
    let text = eventually(&format!("/metrics to have {lines:#?}"), || async {
        let text = metrics(gateway).await;
        lines.iter().all(|line| text.lines().any(|own| own == line)).then_some(text)
    })
    .await;
    if let Err(problems) = promtool::check_metrics(&text) {
        panic!("promtool rejects the exposition: {problems}\n{text}");
    }
    text
}

/// The usage a completion or the last chunk of a stream reported: (prompt, completion) tokens.
fn reported_usage(usage: &Value) -> (u64, u64) {
    let tokens = |key: &str| usage[key].as_u64().unwrap_or_else(|| panic!("no {key} in {usage}"));
    (tokens("prompt_tokens"), tokens("completion_tokens"))
}

#[tokio::test]
async fn a_whole_and_a_streamed_chat_completion_report_their_tokens_in_the_log_the_span_and_metrics() {
    let llmock = Llmock::start(&[("LLMOCK_STREAM_CHUNK_DELAY_MS", "150")]);
    let receiver = OtlpReceiver::start().await;
    let upstream = EchoUpstream::start("plain").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let gateway = gateway(&log, &receiver, &llmock, &upstream);
    let client = TestClient::default();

    // A whole answer, through OpenAI's API.
    const WHOLE_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
    let response = client
        .request(
            Method::POST,
            &gateway.url("/v1/chat/completions"),
            &[
                ("content-type", "application/json"),
                ("x-request-id", "whole-1"),
                ("traceparent", &traceparent(WHOLE_TRACE)),
            ],
            chat("gpt", false),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let completion = response.json();
    let (whole_input, whole_output) = reported_usage(&completion["usage"]);
    assert!(whole_input > 0 && whole_output > 0, "{completion}");
    let answering_model = completion["model"].as_str().expect("model").to_owned();

    let record = record_of(&log, "whole-1").await;
    assert_eq!(record["route"], "ai");
    assert_eq!(record["ai_provider"], "openai");
    assert_eq!(record["ai_request_model"], "gpt");
    assert_eq!(record["ai_response_model"], answering_model.as_str());
    assert_eq!(record["ai_input_tokens"].as_u64(), Some(whole_input));
    assert_eq!(record["ai_output_tokens"].as_u64(), Some(whole_output));
    assert_eq!(record["ai_cache_hit"], false);
    assert_eq!(record["ai_tokens_estimated"], false, "llmock reported the usage");
    let cost = (whole_input as f64 * PRICE.0 + whole_output as f64 * PRICE.1) / 1_000_000.0;
    let logged_cost = record["ai_cost"].as_f64().expect("a cost, the target has a price");
    assert!((logged_cost - cost).abs() < 1e-12, "{logged_cost} != {cost}");

    let span = server_span(&receiver, WHOLE_TRACE).await;
    assert_eq!(span.attribute("gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(span.attribute("gen_ai.provider.name").as_deref(), Some("openai"));
    assert_eq!(span.attribute("gen_ai.system").as_deref(), Some("openai"));
    assert_eq!(span.attribute("gen_ai.request.model").as_deref(), Some("gpt"));
    assert_eq!(span.attribute("gen_ai.response.model").as_deref(), Some(answering_model.as_str()));
    assert_eq!(span.attribute("gen_ai.usage.input_tokens"), Some(whole_input.to_string()));
    assert_eq!(span.attribute("gen_ai.usage.output_tokens"), Some(whole_output.to_string()));
    assert_eq!(span.attribute("gantry.ai.cache_hit").as_deref(), Some("false"));
    let span_cost: f64 = span.attribute("gantry.ai.cost").expect("gantry.ai.cost").parse().expect("a number");
    assert!((span_cost - cost).abs() < 1e-12, "{span_cost} != {cost}");

    // A streamed answer, through Anthropic's API, read slowly enough to look in between.
    const STREAM_TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
    let mut stream = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "stream-1")
        .header("traceparent", traceparent(STREAM_TRACE))
        .body(chat("claude", true))
        .send()
        .await
        .expect("the stream's head");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut text = String::new();
    let first = stream.chunk().await.expect("a chunk").expect("a first chunk");
    text.push_str(std::str::from_utf8(&first).expect("utf-8"));
    // Long enough for a record or span written at the response head to be out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        records(&log).iter().all(|record| record["request_id"] != "stream-1"),
        "the streamed answer's record was written before its stream ended: {:?}",
        records(&log)
    );
    assert!(
        receiver.trace(STREAM_TRACE).iter().all(|span| span.span.kind != SERVER),
        "the server span of the streamed answer ended at its response head"
    );
    while let Some(chunk) = stream.chunk().await.expect("a chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let chunks = sse_chunks(&text);
    let usage = chunks.iter().rev().find(|chunk| chunk["usage"].is_object()).expect("a chunk with the usage");
    let (stream_input, stream_output) = reported_usage(&usage["usage"]);
    assert!(stream_output > 0, "{usage}");

    let record = record_of(&log, "stream-1").await;
    assert_eq!(record["ai_provider"], "anthropic");
    assert_eq!(record["ai_request_model"], "claude");
    assert_eq!(record["ai_response_model"], "claude-sonnet-4-5");
    assert_eq!(record["ai_input_tokens"].as_u64(), Some(stream_input));
    assert_eq!(record["ai_output_tokens"].as_u64(), Some(stream_output));
    assert_eq!(record["ai_tokens_estimated"], false);
    assert!(record.get("ai_cost").is_none(), "the claude target has no price: {record}");

    let span = server_span(&receiver, STREAM_TRACE).await;
    assert_eq!(span.attribute("gen_ai.provider.name").as_deref(), Some("anthropic"));
    assert_eq!(span.attribute("gen_ai.request.model").as_deref(), Some("claude"));
    assert_eq!(span.attribute("gen_ai.usage.input_tokens"), Some(stream_input.to_string()));
    assert_eq!(span.attribute("gen_ai.usage.output_tokens"), Some(stream_output.to_string()));
    let lasted = Duration::from_nanos(span.span.end_time_unix_nano - span.span.start_time_unix_nano);
    assert!(lasted >= Duration::from_millis(300), "the span ends with the stream, not its head: {lasted:?}");

    // A request that is not an AI exchange has none of it.
    let plain = client.request(Method::GET, &gateway.url("/plain/x"), &[("x-request-id", "plain-1")], "").await;
    assert_eq!(plain.status, StatusCode::OK);
    let record = record_of(&log, "plain-1").await;
    assert_eq!(record.as_object().expect("object").keys().filter(|key| key.starts_with("ai_")).count(), 0, "{record}");

    let gpt = "route=\"ai\",provider=\"openai\",model=\"gpt\"";
    let claude = "route=\"ai\",provider=\"anthropic\",model=\"claude\"";
    let text = metrics_with(
        &gateway,
        &[
            format!("gantry_ai_tokens_total{{{gpt},kind=\"input\"}} {whole_input}"),
            format!("gantry_ai_tokens_total{{{gpt},kind=\"output\"}} {whole_output}"),
            format!("gantry_ai_tokens_total{{{claude},kind=\"input\"}} {stream_input}"),
            format!("gantry_ai_tokens_total{{{claude},kind=\"output\"}} {stream_output}"),
            format!("gantry_ai_requests_total{{{gpt},cache=\"miss\"}} 1"),
            format!("gantry_ai_requests_total{{{gpt},cache=\"hit\"}} 0"),
            format!("gantry_ai_requests_total{{{claude},cache=\"miss\"}} 1"),
            "gen_ai_client_token_usage_count{route=\"ai\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"anthropic\",gen_ai_request_model=\"claude\",gen_ai_token_type=\"output\"} 1".to_owned(),
        ],
    )
    .await;
    let cost_line = text
        .lines()
        .find_map(|line| line.strip_prefix(&format!("gantry_ai_cost_total{{{gpt}}} ")))
        .unwrap_or_else(|| panic!("no cost of gpt in\n{text}"));
    let counted: f64 = cost_line.parse().expect("a number");
    assert!((counted - cost).abs() < 1e-12, "{counted} != {cost}");
    assert!(!text.contains(&format!("gantry_ai_cost_total{{{claude}}}")), "{text}");
}

#[tokio::test]
async fn an_unknown_model_and_an_abandoned_stream_are_logged_without_waiting_forever() {
    let llmock = Llmock::start(&[("LLMOCK_STREAM_CHUNK_DELAY_MS", "200")]);
    let receiver = OtlpReceiver::start().await;
    let upstream = EchoUpstream::start("plain").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let gateway = gateway(&log, &receiver, &llmock, &upstream);
    let client = TestClient::default();

    let refused = client
        .request(
            Method::POST,
            &gateway.url("/v1/chat/completions"),
            &[("content-type", "application/json"), ("x-request-id", "unknown-1")],
            chat("no-such-model", false),
        )
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{:?}", refused.body);
    let record = record_of(&log, "unknown-1").await;
    assert_eq!(record["status"], 404);
    assert!(record.get("ai_input_tokens").is_none(), "no provider answered: {record}");

    // The client reads the first chunk of a stream and goes away.
    let mut stream = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "abandoned-1")
        .body(chat("claude", true))
        .send()
        .await
        .expect("the stream's head");
    assert_eq!(stream.status(), StatusCode::OK);
    stream.chunk().await.expect("a chunk").expect("a first chunk");
    drop(stream);
    let record = record_of(&log, "abandoned-1").await;
    assert_eq!(record["ai_request_model"], "claude", "{record}");
    assert!(record["ai_output_tokens"].as_u64().is_some(), "what was sent so far is counted: {record}");

    let text = metrics(&gateway).await;
    assert!(!text.contains("model=\"no-such-model\""), "a refused model makes no series: {text}");
}
