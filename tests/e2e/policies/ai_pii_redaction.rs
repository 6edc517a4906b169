//! `ai_pii_redaction` through a running gateway in front of `ai_proxy` and llmock: personal
//! data in the prompt reaches the provider as placeholders (llmock's journal shows what it
//! got), or the prompt is refused before the provider; with answer redaction alone, the
//! provider sees the values and the client gets its echo redacted, whole and streamed (the
//! values arriving split over the stream's chunks).

use gantry_testkit::client::TestClient;
use gantry_testkit::llmock::Llmock;
use http::StatusCode;
use serde_json::{json, Value};

use super::ai_gateway::{answer_text, config, post, received, refusal};
use crate::support::start_gateway;

const PROMPT: &str = "Mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111.";
const REDACTED: &str = "Mail <EMAIL> or call <PHONE>, card <CREDIT_CARD>.";
const VALUES: [&str; 3] = ["jane.doe@example.com", "7946", "4111"];

fn chat(stream: bool) -> Value {
    json!({"model": "gpt", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
}

fn gateway_config(llmock: &Llmock) -> String {
    config(
        llmock,
        &[
            ("redact", "      - ai_pii_redaction: {request: redact, response: keep}\n"),
            ("block", "      - ai_pii_redaction: {request: block, response: keep}\n"),
            ("answers", "      - ai_pii_redaction: {request: keep, response: redact}\n"),
        ],
    )
}

#[tokio::test]
async fn redacts_or_refuses_personal_data_in_the_prompt_before_the_provider() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let gateway = start_gateway(&gateway_config(&llmock));
    let client = TestClient::default();

    let response = post(&client, &gateway.url("/redact/v1/chat/completions"), &chat(false)).await;
    assert_eq!(answer_text(&response), format!("Hello! You said: {REDACTED}"));

    let error = refusal(&post(&client, &gateway.url("/block/v1/chat/completions"), &chat(false)).await);
    assert_eq!(error["code"], "pii_detected");
    assert_eq!(
        error["message"],
        "the prompt contains personal data (email, phone, credit_card in messages[0] (user)); remove it and send it again"
    );
    let clean = json!({"model": "gpt", "messages": [{"role": "user", "content": "What is a good name for a cat?"}]});
    let response = post(&client, &gateway.url("/block/v1/chat/completions"), &clean).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);

    let bodies = received(&llmock).await;
    assert_eq!(bodies.len(), 2, "the refused prompt never reached the provider: {bodies:?}");
    assert_eq!(bodies[0]["messages"], json!([{"role": "user", "content": REDACTED}]));
    assert_eq!(bodies[1]["messages"], clean["messages"]);
}

/// The text of a streamed answer's chunks, and the raw event stream.
async fn streamed_answer(url: &str) -> (String, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(chat(true).to_string())
        .send()
        .await
        .expect("the stream's head");
    assert_eq!(response.status(), StatusCode::OK);
    let events = response.text().await.expect("the whole stream");
    let mut text = String::new();
    let mut deltas = 0;
    for data in events.lines().filter_map(|line| line.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap_or_else(|err| panic!("{err}: {data}"));
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
            deltas += 1;
        }
    }
    assert!(deltas > 5, "the answer came in pieces: {events}");
    (text, events)
}

#[tokio::test]
async fn redacts_personal_data_in_whole_and_streamed_answers() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let gateway = start_gateway(&gateway_config(&llmock));
    let client = TestClient::default();
    let url = gateway.url("/answers/v1/chat/completions");

    let response = post(&client, &url, &chat(false)).await;
    assert_eq!(answer_text(&response), format!("Hello! You said: {REDACTED}"));

    let (text, events) = streamed_answer(&url).await;
    assert_eq!(text, format!("Hello! You said: {REDACTED}"));
    for value in VALUES {
        assert!(!events.contains(value), "`{value}` reached the client: {events}");
    }

    let bodies = received(&llmock).await;
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    for body in &bodies {
        assert_eq!(
            body["messages"][0]["content"], PROMPT,
            "the provider saw the prompt as sent: the answer was redacted"
        );
    }
}
