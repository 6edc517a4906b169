//! `ai_prompt_decorator` through a running gateway in front of `ai_proxy` and llmock: the
//! provider receives the configured messages around the client's; a request without
//! `messages` is refused rather than passed on undecorated.

use gantry_testkit::client::TestClient;
use gantry_testkit::llmock::Llmock;
use serde_json::json;

use super::ai_gateway::{answer_text, config, post, received, refusal};
use crate::support::start_gateway;

#[tokio::test]
async fn sends_the_provider_the_added_messages_around_the_clients() {
    let llmock = Llmock::start(&[("LLMOCK_RESPONSE_STYLE", "echo")]);
    let decorator = "      - ai_prompt_decorator:
          prepend:
            - {role: system, content: You speak like a pirate.}
          append:
            - {role: user, content: Answer in one line.}
";
    let gateway = start_gateway(&config(&llmock, &[("pirate", decorator)]));
    let client = TestClient::default();
    let url = gateway.url("/pirate/v1/chat/completions");

    let response = post(&client, &url, &json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]})).await;
    // llmock's echo repeats every message it got, so the answer shows what the provider saw.
    assert_eq!(answer_text(&response), "Hello! You said: You speak like a pirate. Hi Answer in one line.");

    let error = refusal(&post(&client, &url, &json!({"model": "gpt", "prompt": "Hi"})).await);
    assert_eq!(error["code"], "messages_required");

    let bodies = received(&llmock).await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(
        bodies[0]["messages"],
        json!([
            {"role": "system", "content": "You speak like a pirate."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Answer in one line."},
        ])
    );
}
