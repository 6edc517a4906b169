//! Cohere's v2 API: chats at `POST /v2/chat` (messages with the roles `system`, `user`,
//! `assistant` and `tool`, OpenAI-shaped tools and tool calls, `p` for `top_p`), a stream of
//! typed server-sent events (`message-start`, `content-start`, `content-delta`,
//! `content-end`, `tool-plan-delta`, `tool-call-start`, `tool-call-delta`, `tool-call-end`,
//! `citation-start`, `citation-end`, `message-end`), usage as `billed_units` and `tokens`,
//! errors as `{"id":..,"message":..}`; embeddings at `POST /v2/embed`.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::fields::{copy_renamed, max_tokens, stop_sequences, text_of};
use super::gemini::{embedding_inputs, embedding_list};
use super::{Adapter, ChatRequest, Operation, StreamTranslator, TargetInfo};
use crate::ai::openai::{self, Usage};

/// The `input_type` of embeddings when the request names none.
pub const DEFAULT_INPUT_TYPE: &str = "search_document";

/// The Cohere v2 format.
#[derive(Debug)]
pub struct Cohere;

impl Adapter for Cohere {
    fn serves(&self, operation: Operation) -> bool {
        matches!(operation, Operation::Chat | Operation::Embeddings)
    }

    fn path(&self, target: &TargetInfo, operation: Operation, _streamed: bool) -> String {
        match operation {
            Operation::Embeddings => format!("{}/embed", target.base_path),
            _ => format!("{}/chat", target.base_path),
        }
    }

    fn request(
        &self,
        target: &TargetInfo,
        operation: Operation,
        request: &ChatRequest,
        _streamed: bool,
    ) -> Result<Vec<u8>, String> {
        let body = match operation {
            Operation::Embeddings => embeddings_request(request, &target.model)?,
            _ => self::request(request, &target.model)?,
        };
        serde_json::to_vec(&body).map_err(|err| err.to_string())
    }

    fn response(&self, target: &TargetInfo, operation: Operation, body: &[u8]) -> Result<Value, String> {
        match operation {
            Operation::Embeddings => embeddings_response(body, &target.model),
            _ => response(body, &target.model),
        }
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
        error(status, body)
    }

    fn stream(&self, target: &TargetInfo, _operation: Operation) -> Box<dyn StreamTranslator> {
        Box::new(Stream::new(&target.model))
    }
}

/// The v2 chat request for an OpenAI chat request, or why it cannot be made.
pub fn request(request: &ChatRequest, model: &str) -> Result<Value, String> {
    let messages = request.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    let mut out = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).ok_or(format!("`messages[{index}].role` is missing"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        out.push(match role {
            "system" | "developer" => json!({ "role": "system", "content": text_of(content) }),
            "user" => json!({ "role": "user", "content": user_content(content) }),
            "assistant" => {
                let mut turn = json!({ "role": "assistant" });
                let text = text_of(content);
                if !text.is_empty() {
                    turn["content"] = json!(text);
                }
                if let Some(calls) =
                    message.get("tool_calls").and_then(Value::as_array).filter(|calls| !calls.is_empty())
                {
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|call| {
                            let function = call.get("function").unwrap_or(&Value::Null);
                            json!({
                                "id": call.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {
                                    "name": function.get("name").cloned().unwrap_or(Value::Null),
                                    "arguments": function.get("arguments").cloned().unwrap_or_else(|| json!("{}")),
                                },
                            })
                        })
                        .collect();
                    turn["tool_calls"] = Value::Array(calls);
                }
                turn
            }
            "tool" => json!({
                "role": "tool",
                "tool_call_id": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
                "content": text_of(content),
            }),
            other => return Err(format!("`messages[{index}].role` `{other}` is not supported")),
        });
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(out));
    copy_renamed(
        request,
        &mut body,
        &[
            ("stream", "stream"),
            ("temperature", "temperature"),
            ("top_p", "p"),
            ("seed", "seed"),
            ("frequency_penalty", "frequency_penalty"),
            ("presence_penalty", "presence_penalty"),
        ],
    );
    if let Some(limit) = max_tokens(request) {
        body.insert("max_tokens".into(), json!(limit));
    }
    if let Some(stops) = stop_sequences(request) {
        body.insert("stop_sequences".into(), stops);
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array).filter(|tools| !tools.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(|function| {
                let mut declared = Map::new();
                for key in ["name", "description", "parameters"] {
                    if let Some(value) = function.get(key) {
                        declared.insert(key.into(), value.clone());
                    }
                }
                json!({ "type": "function", "function": declared })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    // Cohere cannot name the tool to call: a named choice asks for some tool call.
    let choice = match request.get("tool_choice") {
        Some(Value::String(choice)) if choice == "required" => Some("REQUIRED"),
        Some(Value::String(choice)) if choice == "none" => Some("NONE"),
        Some(Value::Object(_)) => Some("REQUIRED"),
        _ => None,
    };
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), json!(choice));
    }
    let format = request.get("response_format").unwrap_or(&Value::Null);
    match format.get("type").and_then(Value::as_str) {
        Some("json_object") => {
            body.insert("response_format".into(), json!({ "type": "json_object" }));
        }
        Some("json_schema") => {
            let mut cohere = json!({ "type": "json_object" });
            if let Some(schema) = format.get("json_schema").and_then(|spec| spec.get("schema")) {
                cohere["json_schema"] = schema.clone();
            }
            body.insert("response_format".into(), cohere);
        }
        _ => {}
    }
    Ok(Value::Object(body))
}

/// A user's content: text as it is; parts as Cohere's `text` and `image_url` parts.
fn user_content(content: &Value) -> Value {
    match content {
        Value::Array(parts) => Value::Array(
            parts
                .iter()
                .filter_map(|part| match part.get("type").and_then(Value::as_str) {
                    Some("text") => Some(json!({ "type": "text", "text": part.get("text").cloned().unwrap_or(Value::Null) })),
                    Some("image_url") => {
                        Some(json!({ "type": "image_url", "image_url": part.get("image_url").cloned().unwrap_or(Value::Null) }))
                    }
                    _ => None,
                })
                .collect(),
        ),
        other => json!(text_of(other)),
    }
}

/// OpenAI's `finish_reason` for a Cohere `finish_reason`.
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "TOOL_CALL" => "tool_calls",
        _ => "stop",
    }
}

/// Cohere's usage as OpenAI's: the tokens the model read and wrote (`tokens`), or the billed
/// ones when only those are given.
fn usage(usage: &Value) -> Option<Usage> {
    let counted = usage.get("tokens").filter(|tokens| tokens.get("input_tokens").is_some());
    let counts = counted.or_else(|| usage.get("billed_units"))?;
    let count = |key: &str| counts.get(key).and_then(Value::as_f64).map(|count| count as u64);
    Some(Usage::new(count("input_tokens")?, count("output_tokens").unwrap_or(0)))
}

/// The OpenAI completion for a v2 chat answer.
pub fn response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let message = answer.get("message").ok_or("the answer has no `message`")?;
    let text: String = message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str).is_none_or(|kind| kind == "text"))
        .filter_map(|part| part.get("text").and_then(Value::as_str))
        .collect();
    let calls: Vec<Value> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let function = call.get("function").unwrap_or(&Value::Null);
            let arguments = match function.get("arguments") {
                Some(Value::String(arguments)) => arguments.clone(),
                Some(other) => other.to_string(),
                None => "{}".to_owned(),
            };
            json!({
                "id": call.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": { "name": function.get("name").cloned().unwrap_or(Value::Null), "arguments": arguments },
            })
        })
        .collect();
    let mut reply = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
    });
    if !calls.is_empty() {
        reply["tool_calls"] = Value::Array(calls);
    }
    let reason = answer.get("finish_reason").and_then(Value::as_str).unwrap_or("COMPLETE");
    let mut completion = json!({
        "id": answer.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": openai::now(),
        "model": model,
        "choices": [{ "index": 0, "message": reply, "logprobs": null, "finish_reason": finish_reason(reason) }],
    });
    if let Some(usage) = answer.get("usage").and_then(usage) {
        completion["usage"] = json!(usage);
    }
    Ok(completion)
}

/// An error answer (`{"id":..,"message":..}`) in OpenAI's shape; its type follows the status.
pub fn error(status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
    super::openai_error_from(status, body, &["message"], &[])
}

/// The `/v2/embed` request: float vectors of the texts, as documents unless the request
/// names another `input_type` (Cohere's `search_query`, `classification`, `clustering`).
fn embeddings_request(request: &ChatRequest, model: &str) -> Result<Value, String> {
    let texts = embedding_inputs(request)?;
    let input_type = request.get("input_type").and_then(Value::as_str).unwrap_or(DEFAULT_INPUT_TYPE);
    let mut body = json!({ "model": model, "texts": texts, "input_type": input_type, "embedding_types": ["float"] });
    if let Some(dimensions) = request.get("dimensions").and_then(Value::as_u64) {
        body["output_dimension"] = json!(dimensions);
    }
    Ok(body)
}

/// The embedding list for a `/v2/embed` answer (`{"embeddings":{"float":[[..]]},"meta":..}`).
fn embeddings_response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let vectors = answer
        .pointer("/embeddings/float")
        .and_then(Value::as_array)
        .ok_or("the answer has no `embeddings.float`")?
        .clone();
    let tokens = answer.pointer("/meta/billed_units/input_tokens").and_then(Value::as_f64).map(|count| count as u64);
    Ok(embedding_list(vectors, model, tokens))
}

/// Translates the v2 chat stream into `chat.completion.chunk`s, one event at a time.
#[derive(Debug)]
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    called: bool,
    done: bool,
}

impl Stream {
    pub fn new(model: &str) -> Self {
        Self { id: String::new(), model: model.to_owned(), created: openai::now(), called: false, done: false }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Vec<Value> {
        vec![openai::chunk(&self.id, &self.model, self.created, Some(delta), finish_reason, None)]
    }
}

impl StreamTranslator for Stream {
    fn event(&mut self, event: &str, data: &str) -> Vec<Value> {
        if self.done {
            return Vec::new();
        }
        let Ok(payload) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        // Every event names its type in its data; the SSE event name is the same when given.
        let kind = payload.get("type").and_then(Value::as_str).unwrap_or(event);
        let message = payload.pointer("/delta/message").unwrap_or(&Value::Null);
        let index = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message-start" => {
                self.id = payload.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                self.chunk(json!({ "role": "assistant", "content": "" }), None)
            }
            "content-delta" => match message.pointer("/content/text").and_then(Value::as_str) {
                Some(text) if !text.is_empty() => self.chunk(json!({ "content": text }), None),
                _ => Vec::new(),
            },
            "tool-call-start" => {
                self.called = true;
                let call = message.get("tool_calls").unwrap_or(&Value::Null);
                let function = call.get("function").unwrap_or(&Value::Null);
                self.chunk(
                    json!({ "tool_calls": [{
                        "index": index,
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {
                            "name": function.get("name").cloned().unwrap_or(Value::Null),
                            "arguments": function.get("arguments").and_then(Value::as_str).unwrap_or_default(),
                        },
                    }] }),
                    None,
                )
            }
            "tool-call-delta" => match message.pointer("/tool_calls/function/arguments").and_then(Value::as_str) {
                Some(arguments) if !arguments.is_empty() => self
                    .chunk(json!({ "tool_calls": [{ "index": index, "function": { "arguments": arguments } }] }), None),
                _ => Vec::new(),
            },
            "message-end" => {
                self.done = true;
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                let reason = delta.get("finish_reason").and_then(Value::as_str).unwrap_or("COMPLETE");
                let reason = if reason == "COMPLETE" && self.called { "tool_calls" } else { finish_reason(reason) };
                let mut out = self.chunk(json!({}), Some(reason));
                if let Some(usage) = delta.get("usage").and_then(usage) {
                    out.push(openai::chunk(&self.id, &self.model, self.created, None, None, Some(usage)));
                }
                out
            }
            // `content-start` and `-end`, `tool-plan-delta` (the model's plan, not its answer),
            // `tool-call-end`, citations and `debug` carry nothing for the client.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
