//! The provider formats `ai_proxy` translates to and from, one module each.

pub mod anthropic;
pub mod openai;

use http::StatusCode;
use serde_json::{Map, Value};

/// What a streamed answer's events become for the client.
pub trait StreamTranslator: Send {
    /// The client's bytes for one upstream event (`event`, `data`), possibly none.
    fn event(&mut self, event: &str, data: &str) -> Vec<u8>;
    /// The client's bytes once the upstream stream ended.
    fn end(&mut self) -> Vec<u8>;
}

/// A provider's answer that is an error, in OpenAI's shape: status and body.
pub fn openai_error_from(
    status: StatusCode,
    body: &[u8],
    message_at: &[&str],
    type_at: &[&str],
) -> (StatusCode, Value) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let pick = |at: &[&str]| {
        parsed.as_ref().and_then(|value| at.iter().try_fold(value, |value, key| value.get(key))).and_then(Value::as_str)
    };
    let message = pick(message_at).map(str::to_owned).unwrap_or_else(|| format!("the provider answered {status}"));
    let kind = pick(type_at).map(str::to_owned);
    let kind = kind.as_deref().unwrap_or_else(|| crate::ai::openai::error_kind(status));
    (status, crate::ai::openai::error_body(&message, kind, None))
}

/// The client's request, minus the fields the gateway decides.
pub type ChatRequest = Map<String, Value>;
