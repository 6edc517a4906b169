//! The OpenAI Chat Completions wire format the gateway speaks to clients: the shapes it
//! writes (completions, chunks, errors, the model list). Requests are kept as JSON objects:
//! a provider translates the fields it knows and OpenAI-compatible providers get the rest
//! untouched.

use bytes::Bytes;
use gantry_policy_api::PolicyResponse;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

/// Token counts as OpenAI reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// `chat.completion.chunk` with one choice, or none when `delta` is `None` (the usage chunk).
pub fn chunk(
    id: &str,
    model: &str,
    created: u64,
    delta: Option<Value>,
    finish_reason: Option<&str>,
    usage: Option<Usage>,
) -> Value {
    let choices = match delta {
        Some(delta) => json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }]),
        None => json!([]),
    };
    let mut chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(usage) = usage {
        chunk["usage"] = json!(usage);
    }
    chunk
}

/// The `error` object OpenAI answers failures with.
pub fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> PolicyResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = PolicyResponse::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An OpenAI-style error response.
pub fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> PolicyResponse {
    json_response(status, &error_body(message, kind, code))
}

/// The error `type` OpenAI uses for a status.
pub fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// Seconds since the Unix epoch, for `created`.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}
