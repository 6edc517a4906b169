//! Anthropic's Messages API (`POST /v1/messages`, `anthropic-version: 2023-06-01`): system
//! prompts go to `system`, `max_tokens` is required, tool calls are content blocks, and a
//! stream is a sequence of named events (`message_start`, `content_block_start`,
//! `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`,
//! `error`), each translated into OpenAI chunks as it arrives.

use http::StatusCode;
use serde_json::{json, Map, Value};

use http::header::HeaderName;

use super::fields::{max_tokens, stop_sequences, text_of};
use super::{Adapter, ChatRequest, Operation, StreamTranslator, TargetInfo};
use crate::ai::openai::{self, Usage};

/// The API version the translation follows.
pub const VERSION: &str = "2023-06-01";

/// The Messages format.
#[derive(Debug)]
pub struct Anthropic;

impl Adapter for Anthropic {
    fn path(&self, target: &TargetInfo, _operation: Operation, _streamed: bool) -> String {
        format!("{}/messages", target.base_path)
    }

    fn auth(&self, key: &str) -> (HeaderName, String) {
        (HeaderName::from_static("x-api-key"), key.to_owned())
    }

    fn headers(&self) -> &'static [(&'static str, &'static str)] {
        &[("anthropic-version", VERSION)]
    }

    fn request(
        &self,
        target: &TargetInfo,
        _operation: Operation,
        chat: &ChatRequest,
        _streamed: bool,
    ) -> Result<Vec<u8>, String> {
        request(chat, &target.model, target.default_max_tokens)
    }

    fn response(&self, _target: &TargetInfo, _operation: Operation, body: &[u8]) -> Result<Value, String> {
        response(body)
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
        error(status, body)
    }

    fn stream(&self, target: &TargetInfo, _operation: Operation) -> Box<dyn StreamTranslator> {
        Box::new(Stream::new(&target.model))
    }
}

/// The Messages request for an OpenAI chat request, or why it cannot be made.
pub fn request(request: &ChatRequest, model: &str, default_max_tokens: u64) -> Result<Vec<u8>, String> {
    let messages = request.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    let mut system = Vec::new();
    let mut out = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).ok_or(format!("`messages[{index}].role` is missing"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content)),
            "user" => out.push(json!({ "role": "user", "content": content_blocks(content) })),
            "assistant" => {
                let mut blocks = match content {
                    Value::Null => Vec::new(),
                    other => content_blocks(other),
                };
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                    let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": function.get("name").cloned().unwrap_or(Value::Null),
                        "input": input,
                    }));
                }
                out.push(json!({ "role": "assistant", "content": blocks }));
            }
            "tool" => out.push(json!({
                "role": "user",
                "content": [{
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": text_of(content),
                }],
            })),
            other => return Err(format!("`messages[{index}].role` `{other}` is not supported")),
        }
    }
    let max_tokens = max_tokens(request).unwrap_or(default_max_tokens);
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(out));
    for key in ["temperature", "top_p", "stream"] {
        if let Some(value) = request.get(key) {
            body.insert(key.into(), value.clone());
        }
    }
    if let Some(stops) = stop_sequences(request) {
        body.insert("stop_sequences".into(), stops);
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(|function| {
                json!({
                    "name": function.get("name").cloned().unwrap_or(Value::Null),
                    "description": function.get("description").cloned().unwrap_or(Value::Null),
                    "input_schema": function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let choice = match request.get("tool_choice") {
        Some(Value::String(choice)) if choice == "auto" => Some(json!({ "type": "auto" })),
        Some(Value::String(choice)) if choice == "required" => Some(json!({ "type": "any" })),
        Some(Value::String(choice)) if choice == "none" => Some(json!({ "type": "none" })),
        Some(Value::Object(choice)) => choice
            .get("function")
            .and_then(|function| function.get("name"))
            .map(|name| json!({ "type": "tool", "name": name })),
        _ => None,
    };
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    serde_json::to_vec(&Value::Object(body)).map_err(|err| err.to_string())
}

/// OpenAI content (a string, or text and image parts) as Anthropic content blocks.
fn content_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => {
                    Some(json!({ "type": "text", "text": part.get("text").cloned().unwrap_or(Value::Null) }))
                }
                Some("image_url") => {
                    let url = part.get("image_url").and_then(|image| image.get("url")).and_then(Value::as_str)?;
                    Some(image_block(url))
                }
                _ => None,
            })
            .collect(),
        other => vec![json!({ "type": "text", "text": text_of(other) })],
    }
}

/// A `data:` URL becomes a base64 source, any other URL a URL source.
fn image_block(url: &str) -> Value {
    if let Some((media_type, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
        return json!({ "type": "image", "source": { "type": "base64", "media_type": media_type, "data": data } });
    }
    json!({ "type": "image", "source": { "type": "url", "url": url } })
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// The OpenAI completion for a Messages answer.
pub fn response(body: &[u8]) -> Result<Value, String> {
    let message: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.get("content").and_then(Value::as_array).into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut reply = json!({ "role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) } });
    if !tool_calls.is_empty() {
        reply["tool_calls"] = Value::Array(tool_calls);
    }
    let stop_reason = message.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    let usage = message.get("usage").unwrap_or(&Value::Null);
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    Ok(json!({
        "id": message.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": openai::now(),
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{ "index": 0, "message": reply, "logprobs": null, "finish_reason": finish_reason(stop_reason) }],
        "usage": Usage::new(count("input_tokens"), count("output_tokens")),
    }))
}

/// An error answer (`{"type":"error","error":{"type":..,"message":..}}`) in OpenAI's shape;
/// Anthropic's 529 (overloaded) becomes 503.
pub fn error(status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
    let status = if status.as_u16() == 529 { StatusCode::SERVICE_UNAVAILABLE } else { status };
    let (status, mut body) = super::openai_error_from(status, body, &["error", "message"], &["error", "type"]);
    let kind = body["error"]["type"].as_str().map(openai_error_type);
    if let Some(kind) = kind {
        body["error"]["type"] = json!(kind);
    }
    (status, body)
}

fn openai_error_type(anthropic: &str) -> &str {
    match anthropic {
        "api_error" | "overloaded_error" => "server_error",
        "not_found_error" => "invalid_request_error",
        other => other,
    }
}

/// Translates the Messages stream into `chat.completion.chunk` events, one upstream event
/// at a time.
#[derive(Debug)]
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Content block index to OpenAI tool call index.
    tool_calls: Vec<(u64, u64)>,
    done: bool,
}

impl Stream {
    pub fn new(model: &str) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created: openai::now(),
            prompt_tokens: 0,
            completion_tokens: 0,
            tool_calls: Vec::new(),
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Vec<Value> {
        vec![openai::chunk(&self.id, &self.model, self.created, Some(delta), finish_reason, None)]
    }

    fn tool_index(&self, block: u64) -> Option<u64> {
        self.tool_calls.iter().find(|(at, _)| *at == block).map(|(_, index)| *index)
    }

    /// The usage chunk, once.
    fn finish(&mut self) -> Vec<Value> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let usage = Usage::new(self.prompt_tokens, self.completion_tokens);
        vec![openai::chunk(&self.id, &self.model, self.created, None, None, Some(usage))]
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
        let count =
            |value: &Value, key: &str| value.get("usage").and_then(|usage| usage.get(key)).and_then(Value::as_u64);
        match event {
            "message_start" => {
                let message = payload.get("message").unwrap_or(&Value::Null);
                self.id = message.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = model.to_owned();
                }
                self.prompt_tokens = count(message, "input_tokens").unwrap_or(0);
                self.completion_tokens = count(message, "output_tokens").unwrap_or(0);
                self.chunk(json!({ "role": "assistant", "content": "" }), None)
            }
            "content_block_start" => {
                let block = payload.get("content_block").unwrap_or(&Value::Null);
                let at = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tool_calls.len() as u64;
                        self.tool_calls.push((at, index));
                        self.chunk(
                            json!({ "tool_calls": [{
                                "index": index,
                                "id": block.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": { "name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": "" },
                            }] }),
                            None,
                        )
                    }
                    Some("text") => match block.get("text").and_then(Value::as_str) {
                        Some(text) if !text.is_empty() => self.chunk(json!({ "content": text }), None),
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                let at = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.chunk(json!({ "content": delta.get("text").cloned().unwrap_or(Value::Null) }), None)
                    }
                    Some("input_json_delta") => match self.tool_index(at) {
                        Some(index) => self.chunk(
                            json!({ "tool_calls": [{
                                "index": index,
                                "function": { "arguments": delta.get("partial_json").cloned().unwrap_or(Value::Null) },
                            }] }),
                            None,
                        ),
                        None => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(output) = count(&payload, "output_tokens") {
                    self.completion_tokens = output;
                }
                match payload.get("delta").and_then(|delta| delta.get("stop_reason")).and_then(Value::as_str) {
                    Some(stop_reason) => self.chunk(json!({}), Some(finish_reason(stop_reason))),
                    None => Vec::new(),
                }
            }
            "message_stop" => self.finish(),
            "error" => {
                let error = payload.get("error").unwrap_or(&Value::Null);
                let message = error.get("message").and_then(Value::as_str).unwrap_or("the provider's stream failed");
                let kind = openai_error_type(error.get("type").and_then(Value::as_str).unwrap_or("api_error"));
                self.done = true;
                vec![openai::error_body(message, kind, None)]
            }
            // `ping`, `content_block_stop` and events added later carry nothing for the client.
            _ => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Value> {
        // A stream cut short reports no usage: the client's stream estimates it instead.
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_system_prompts_and_maps_tools_and_limits() {
        let request: ChatRequest = serde_json::from_value(json!({
            "model": "chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"}
            ],
            "max_completion_tokens": 300,
            "temperature": 0.2,
            "stop": "END",
            "user": "u-1",
            "stream": true,
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "frequency_penalty": 0.5
        }))
        .expect("request");
        let body: Value = serde_json::from_slice(&request_body(&request)).expect("JSON");
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "system": "Be brief.\n\nUse metric units.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather in Paris?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"}
                    ]}
                ],
                "temperature": 0.2,
                "stream": true,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "u-1"},
                "tools": [{"name": "get_weather", "description": "Weather of a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
                "tool_choice": {"type": "tool", "name": "get_weather"}
            })
        );
    }

    fn request_body(request: &ChatRequest) -> Vec<u8> {
        request_with_default(request, 1024)
    }

    fn request_with_default(request: &ChatRequest, default_max_tokens: u64) -> Vec<u8> {
        super::request(request, "claude-sonnet-4-5", default_max_tokens).expect("translated")
    }

    #[test]
    fn gives_the_default_max_tokens_and_refuses_unknown_roles() {
        let request: ChatRequest =
            serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}))
                .expect("request");
        let body: Value = serde_json::from_slice(&request_with_default(&request, 77)).expect("JSON");
        assert_eq!(body["max_tokens"], 77);
        assert_eq!(body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]));
        assert!(body.get("system").is_none());
        let odd: ChatRequest =
            serde_json::from_value(json!({"model": "m", "messages": [{"role": "narrator", "content": "x"}]}))
                .expect("request");
        assert_eq!(
            super::request(&odd, "m", 1).expect_err("refused"),
            "`messages[0].role` `narrator` is not supported"
        );
        let none: ChatRequest = serde_json::from_value(json!({"model": "m"})).expect("request");
        assert!(super::request(&none, "m", 1).is_err());
    }

    #[test]
    fn translates_a_documented_messages_answer() {
        // The example answer of Anthropic's Messages API reference, with a tool call added.
        let answer = br#"{
          "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
          "type": "message",
          "role": "assistant",
          "model": "claude-sonnet-4-5",
          "content": [
            {"type": "text", "text": "Hi! My name is Claude."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
          ],
          "stop_reason": "tool_use",
          "stop_sequence": null,
          "usage": {"input_tokens": 2095, "output_tokens": 503}
        }"#;
        let completion = response(answer).expect("translated");
        assert_eq!(completion["id"], "msg_013Zva2CMHLNnXjNJJKqJ2EF");
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], "claude-sonnet-4-5");
        assert_eq!(
            completion["choices"],
            json!([{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi! My name is Claude.",
                    "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}}]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }])
        );
        assert_eq!(completion["usage"], json!({"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}));
        assert!(response(b"<html>").is_err());
    }

    #[test]
    fn maps_stop_reasons() {
        let cases = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ];
        for (stop_reason, expected) in cases {
            assert_eq!(finish_reason(stop_reason), expected, "{stop_reason}");
        }
    }

    #[test]
    fn maps_documented_errors() {
        let (status, body) = error(
            StatusCode::from_u16(529).expect("status"),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})
        );
        let (status, body) = error(
            StatusCode::BAD_REQUEST,
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "max_tokens: Field required");
        let (status, body) = error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["error"]["type"], "server_error");
    }

    /// The event sequence of Anthropic's streaming documentation ("Basic streaming request"
    /// and "Streaming request with tool use"), fed event by event.
    #[test]
    fn translates_a_documented_stream_event_by_event() {
        let events = [
            (
                "message_start",
                r#"{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}"#,
            ),
            ("content_block_stop", r#"{"type": "content_block_stop", "index": 0}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"San Fra"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            (
                "message_delta",
                r#"{"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence":null}, "usage": {"output_tokens": 15}}"#,
            ),
            ("message_stop", r#"{"type": "message_stop"}"#),
        ];
        let mut stream = Stream::new("claude-sonnet-4-5");
        let outputs: Vec<Vec<Value>> = events.iter().map(|(event, data)| stream.event(event, data)).collect();
        let deltas: Vec<Vec<Value>> = outputs
            .iter()
            .map(|chunks| chunks.iter().map(|chunk| chunk["choices"][0]["delta"].clone()).collect())
            .collect();
        assert_eq!(deltas[0], vec![json!({"role": "assistant", "content": ""})]);
        assert!(outputs[1].is_empty(), "an empty text block gives nothing");
        assert!(outputs[2].is_empty(), "ping gives nothing");
        assert_eq!(deltas[3], vec![json!({"content": "Hello"})]);
        assert_eq!(deltas[4], vec![json!({"content": "!"})]);
        assert!(outputs[5].is_empty());
        assert_eq!(
            deltas[6],
            vec![json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})]
        );
        assert_eq!(
            deltas[8],
            vec![json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": \"San Fra"}}]})]
        );
        assert_eq!(outputs[10][0]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(outputs[10][0]["choices"][0]["delta"], json!({}));
        let first = &outputs[0][0];
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert_eq!(first["model"], "claude-sonnet-4-5");
        assert_eq!(outputs[11].len(), 1, "the usage chunk; [DONE] is the client stream's");
        assert_eq!(outputs[11][0]["choices"], json!([]));
        assert_eq!(outputs[11][0]["usage"], json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}));
        assert!(stream.end().is_empty(), "the usage is sent once");
    }

    #[test]
    fn an_error_event_ends_the_stream_with_an_openai_error() {
        let mut stream = Stream::new("m");
        stream.event("message_start", r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":1,"output_tokens":1}}}"#);
        let out = stream
            .event("error", r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#);
        assert_eq!(
            out,
            vec![json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})]
        );
        assert!(stream
            .event("content_block_delta", r#"{"index":0,"delta":{"type":"text_delta","text":"late"}}"#)
            .is_empty());
    }

    #[test]
    fn a_stream_cut_short_reports_no_usage_of_its_own() {
        let mut stream = Stream::new("m");
        assert!(stream.event("content_block_delta", "not json").is_empty());
        assert!(stream.end().is_empty(), "the client stream estimates the usage and sends [DONE]");
    }
}
