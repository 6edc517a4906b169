//! Google's Gemini API (AI Studio, `generativelanguage.googleapis.com/v1beta`): chats go to
//! `models/{model}:generateContent` (streams to `:streamGenerateContent?alt=sse`, one
//! `GenerateContentResponse` per event), embeddings to `models/{model}:batchEmbedContents`,
//! the key in `x-goog-api-key`. System prompts become `systemInstruction`, the assistant is
//! the `model` role, tool calls and results are `functionCall` and `functionResponse` parts,
//! and sampling settings live in `generationConfig`. Vertex AI speaks the same bodies
//! ([`super::vertex`]).

use http::header::HeaderName;
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::fields::{copy_renamed, max_tokens, stop_sequences, text_of};
use super::{Adapter, ChatRequest, Operation, StreamTranslator, TargetInfo};
use crate::ai::openai::{self, Usage};

/// The Gemini API format.
#[derive(Debug)]
pub struct Gemini;

impl Adapter for Gemini {
    fn serves(&self, operation: Operation) -> bool {
        matches!(operation, Operation::Chat | Operation::Embeddings)
    }

    fn path(&self, target: &TargetInfo, operation: Operation, streamed: bool) -> String {
        format!("{}/models/{}", target.base_path, method(&target.model, operation, streamed, "batchEmbedContents"))
    }

    fn auth(&self, key: &str) -> (HeaderName, String) {
        (HeaderName::from_static("x-goog-api-key"), key.to_owned())
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
            _ => self::request(request)?,
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

    fn retry_delay(&self, body: &[u8]) -> Option<u64> {
        retry_delay(body)
    }

    fn stream(&self, target: &TargetInfo, _operation: Operation) -> Box<dyn StreamTranslator> {
        Box::new(Stream::new(&target.model))
    }
}

/// `{model}:{method}` (and `?alt=sse` for streams, which makes the answer server-sent events
/// rather than one JSON array).
pub(crate) fn method(model: &str, operation: Operation, streamed: bool, embeddings: &str) -> String {
    match operation {
        Operation::Embeddings => format!("{model}:{embeddings}"),
        _ if streamed => format!("{model}:streamGenerateContent?alt=sse"),
        _ => format!("{model}:generateContent"),
    }
}

/// The `GenerateContentRequest` for an OpenAI chat request, or why it cannot be made.
pub fn request(request: &ChatRequest) -> Result<Value, String> {
    let messages = request.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Gemini's function results name the function, OpenAI's the call: names by call id.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).ok_or(format!("`messages[{index}].role` is missing"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, parts) = match role {
            "system" | "developer" => {
                system.push(json!({ "text": text_of(content) }));
                continue;
            }
            "user" => ("user", parts_of(content)),
            "assistant" => {
                let mut parts = match content {
                    Value::Null => Vec::new(),
                    Value::String(text) if text.is_empty() => Vec::new(),
                    other => parts_of(other),
                };
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
                    let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                    let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        call_names.push((id.to_owned(), name.to_owned()));
                    }
                    let mut part = json!({ "functionCall": { "name": name, "args": args } });
                    // Gemini 3 wants its thought signature back with the call it came with.
                    if let Some(signature) = call.pointer("/extra_content/google/thought_signature") {
                        part["thoughtSignature"] = signature.clone();
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            "tool" | "function" => {
                let name = match message.get("tool_call_id").and_then(Value::as_str) {
                    Some(id) => call_names.iter().find(|(known, _)| known == id).map(|(_, name)| name.clone()),
                    None => None,
                }
                .or_else(|| message.get("name").and_then(Value::as_str).map(str::to_owned))
                .ok_or(format!("`messages[{index}].tool_call_id` names no tool call of an earlier message"))?;
                let text = text_of(content);
                // An object is the function's answer as it is; anything else is its `output`.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    Ok(other) => json!({ "output": other }),
                    Err(_) => json!({ "output": text }),
                };
                ("user", vec![json!({ "functionResponse": { "name": name, "response": response } })])
            }
            other => return Err(format!("`messages[{index}].role` `{other}` is not supported")),
        };
        // Consecutive turns of one role are one content: parallel function results must
        // come back in a single turn.
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(known) = last["parts"].as_array_mut() {
                    known.extend(parts);
                }
            }
            _ => contents.push(json!({ "role": role, "parts": parts })),
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let declarations: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(|function| {
                let mut declaration = Map::new();
                for key in ["name", "description", "parameters"] {
                    if let Some(value) = function.get(key) {
                        declaration.insert(key.into(), value.clone());
                    }
                }
                Value::Object(declaration)
            })
            .collect();
        if !declarations.is_empty() {
            body.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        }
    }
    let calling = match request.get("tool_choice") {
        Some(Value::String(choice)) if choice == "auto" => Some(json!({ "mode": "AUTO" })),
        Some(Value::String(choice)) if choice == "required" => Some(json!({ "mode": "ANY" })),
        Some(Value::String(choice)) if choice == "none" => Some(json!({ "mode": "NONE" })),
        Some(Value::Object(choice)) => choice
            .get("function")
            .and_then(|function| function.get("name"))
            .map(|name| json!({ "mode": "ANY", "allowedFunctionNames": [name] })),
        _ => None,
    };
    if let Some(calling) = calling {
        body.insert("toolConfig".into(), json!({ "functionCallingConfig": calling }));
    }
    let config = generation_config(request);
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

fn generation_config(request: &ChatRequest) -> Map<String, Value> {
    let mut config = Map::new();
    copy_renamed(
        request,
        &mut config,
        &[
            ("temperature", "temperature"),
            ("top_p", "topP"),
            ("n", "candidateCount"),
            ("seed", "seed"),
            ("presence_penalty", "presencePenalty"),
            ("frequency_penalty", "frequencyPenalty"),
        ],
    );
    if let Some(limit) = max_tokens(request) {
        config.insert("maxOutputTokens".into(), json!(limit));
    }
    if let Some(stops) = stop_sequences(request) {
        config.insert("stopSequences".into(), stops);
    }
    let format = request.get("response_format").unwrap_or(&Value::Null);
    match format.get("type").and_then(Value::as_str) {
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = format.get("json_schema").and_then(|spec| spec.get("schema")) {
                config.insert("responseSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    config
}

/// OpenAI content (a string, or text, image and audio parts) as Gemini parts.
fn parts_of(content: &Value) -> Vec<Value> {
    match content {
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({ "text": part.get("text").cloned().unwrap_or(Value::Null) })),
                Some("image_url") => {
                    let url = part.get("image_url").and_then(|image| image.get("url")).and_then(Value::as_str)?;
                    Some(media_part(url))
                }
                Some("input_audio") => {
                    let audio = part.get("input_audio")?;
                    let format = audio.get("format").and_then(Value::as_str).unwrap_or("wav");
                    Some(json!({ "inlineData": {
                        "mimeType": format!("audio/{format}"),
                        "data": audio.get("data").cloned().unwrap_or(Value::Null),
                    } }))
                }
                _ => None,
            })
            .collect(),
        other => vec![json!({ "text": text_of(other) })],
    }
}

/// A `data:` URL is sent inline; any other URL (a Files API or Cloud Storage URI) by reference.
fn media_part(url: &str) -> Value {
    if let Some((mime_type, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
        return json!({ "inlineData": { "mimeType": mime_type, "data": data } });
    }
    json!({ "fileData": { "fileUri": url } })
}

/// OpenAI's `finish_reason` for a Gemini `finishReason`; a stop after function calls is
/// `tool_calls`.
pub fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// An id for a function call, which Gemini's answers carry only sometimes.
fn call_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("call_{hex}")
}

/// A function call part as an OpenAI tool call (without `index`); its thought signature
/// travels in `extra_content.google.thought_signature`, where Google's own OpenAI
/// compatibility puts it, so a client sending the call back returns it too.
fn tool_call(part: &Value) -> Option<Value> {
    let call = part.get("functionCall")?;
    let id = call.get("id").and_then(Value::as_str).map_or_else(call_id, str::to_owned);
    let mut tool_call = json!({
        "id": id,
        "type": "function",
        "function": {
            "name": call.get("name").cloned().unwrap_or(Value::Null),
            "arguments": call.get("args").map_or_else(|| "{}".to_owned(), Value::to_string),
        },
    });
    if let Some(signature) = part.get("thoughtSignature") {
        tool_call["extra_content"] = json!({ "google": { "thought_signature": signature } });
    }
    Some(tool_call)
}

/// The text (thoughts left out) and function calls of a candidate's parts.
fn read_parts(candidate: &Value) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let parts = candidate.get("content").and_then(|content| content.get("parts")).and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(piece) = part.get("text").and_then(Value::as_str) {
            text.push_str(piece);
        }
        calls.extend(tool_call(part));
    }
    (text, calls)
}

/// `usageMetadata` as OpenAI's usage: thinking tokens count as answer tokens, as OpenAI
/// counts reasoning tokens.
fn usage(metadata: &Value) -> Option<Usage> {
    let prompt = metadata.get("promptTokenCount").and_then(Value::as_u64)?;
    let count = |key: &str| metadata.get(key).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage::new(prompt, count("candidatesTokenCount") + count("thoughtsTokenCount")))
}

/// The OpenAI completion for a `GenerateContentResponse`.
pub fn response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let candidates = match answer.get("candidates").and_then(Value::as_array) {
        Some(candidates) => candidates.as_slice(),
        // A prompt refused outright has feedback and no candidates.
        None if answer.get("promptFeedback").is_some() => &[],
        None => return Err("the answer has no `candidates`".to_owned()),
    };
    let mut choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(at, candidate)| {
            let (text, calls) = read_parts(candidate);
            let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
            let mut message = json!({
                "role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
            });
            let called = !calls.is_empty();
            if called {
                message["tool_calls"] = Value::Array(calls);
            }
            json!({
                "index": candidate.get("index").and_then(Value::as_u64).unwrap_or(at as u64),
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(reason, called),
            })
        })
        .collect();
    if choices.is_empty() {
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": "" },
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let mut completion = json!({
        "id": answer.get("responseId").and_then(Value::as_str).map_or_else(|| format!("chatcmpl-{}", call_id()), str::to_owned),
        "object": "chat.completion",
        "created": openai::now(),
        "model": answer.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
    });
    if let Some(usage) = answer.get("usageMetadata").and_then(usage) {
        completion["usage"] = json!(usage);
    }
    Ok(completion)
}

/// An error answer (`{"error":{"code":429,"message":..,"status":"RESOURCE_EXHAUSTED"}}`, or
/// a list of one such object) in OpenAI's shape.
pub fn error(status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
    let first = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(mut errors)) if !errors.is_empty() => serde_json::to_vec(&errors.swap_remove(0)).ok(),
        _ => None,
    };
    let body = first.as_deref().unwrap_or(body);
    let (status, mut answer) = super::openai_error_from(status, body, &["error", "message"], &["error", "status"]);
    let kind = answer["error"]["type"].as_str().map(|google| openai_error_type(google, status));
    if let Some(kind) = kind {
        answer["error"]["type"] = json!(kind);
    }
    (status, answer)
}

/// The wait a Google error asks for in its `RetryInfo` detail (`"retryDelay": "25.5s"`, a
/// protobuf duration), in whole seconds rounded up: Gemini's 429s carry no `Retry-After`.
pub fn retry_delay(body: &[u8]) -> Option<u64> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let error = match &answer {
        Value::Array(errors) => errors.first()?.get("error")?,
        other => other.get("error")?,
    };
    error.get("details")?.as_array()?.iter().find_map(|detail| {
        let delay = detail.get("retryDelay")?.as_str()?.strip_suffix('s')?.parse::<f64>().ok()?;
        (delay.is_finite() && delay >= 0.0).then(|| delay.ceil() as u64)
    })
}

/// OpenAI's error `type` for a Google RPC status name.
fn openai_error_type(google: &str, status: StatusCode) -> &str {
    match google {
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => "invalid_request_error",
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "NOT_FOUND" => "not_found_error",
        "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "UNKNOWN" => "server_error",
        other if other.chars().all(|c| c.is_ascii_lowercase() || c == '_') => other,
        _ => crate::ai::openai::error_kind(status),
    }
}

/// The texts of an OpenAI embeddings request (`input`: a string or a list of strings).
pub(crate) fn embedding_inputs(request: &ChatRequest) -> Result<Vec<&str>, String> {
    match request.get("input") {
        Some(Value::String(text)) => Ok(vec![text.as_str()]),
        Some(Value::Array(texts)) if !texts.is_empty() => texts
            .iter()
            .map(|text| text.as_str().ok_or_else(|| "`input` must be text or a list of texts".to_owned()))
            .collect(),
        _ => Err("`input` must be text or a list of texts".to_owned()),
    }
}

/// The `batchEmbedContents` request: one request per text.
fn embeddings_request(request: &ChatRequest, model: &str) -> Result<Value, String> {
    let dimensions = request.get("dimensions").and_then(Value::as_u64);
    let requests: Vec<Value> = embedding_inputs(request)?
        .into_iter()
        .map(|text| {
            let mut one = json!({ "model": format!("models/{model}"), "content": { "parts": [{ "text": text }] } });
            if let Some(dimensions) = dimensions {
                one["outputDimensionality"] = json!(dimensions);
            }
            one
        })
        .collect();
    Ok(json!({ "requests": requests }))
}

/// OpenAI's embedding list for `vectors`, with the prompt tokens when the provider counted them.
pub(crate) fn embedding_list(vectors: Vec<Value>, model: &str, prompt_tokens: Option<u64>) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| json!({ "object": "embedding", "index": index, "embedding": vector }))
        .collect();
    let mut list = json!({ "object": "list", "data": data, "model": model });
    if let Some(tokens) = prompt_tokens {
        list["usage"] = json!({ "prompt_tokens": tokens, "total_tokens": tokens });
    }
    list
}

/// The embedding list for a `batchEmbedContents` answer (`{"embeddings":[{"values":[..]}]}`),
/// which counts no tokens.
fn embeddings_response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let vectors = answer
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or("the answer has no `embeddings`")?
        .iter()
        .map(|embedding| embedding.get("values").cloned().unwrap_or_else(|| json!([])))
        .collect();
    Ok(embedding_list(vectors, model, None))
}

/// Translates a stream of `GenerateContentResponse` events into `chat.completion.chunk`s,
/// one event at a time. Gemini names no event and sends the usage along with the last
/// candidates: the usage chunk follows once the stream ended after a finish reason.
#[derive(Debug)]
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    /// Candidate indexes that got their first chunk, and how many tool calls each made.
    candidates: Vec<(u64, u64)>,
    finished: bool,
    usage: Option<Usage>,
    done: bool,
}

impl Stream {
    pub fn new(model: &str) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created: openai::now(),
            candidates: Vec::new(),
            finished: false,
            usage: None,
            done: false,
        }
    }

    fn chunk(&self, index: u64, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = openai::chunk(&self.id, &self.model, self.created, Some(delta), finish_reason, None);
        chunk["choices"][0]["index"] = json!(index);
        chunk
    }
}

impl StreamTranslator for Stream {
    fn event(&mut self, _event: &str, data: &str) -> Vec<Value> {
        if self.done {
            return Vec::new();
        }
        let Ok(payload) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        if let Some(error) = payload.get("error") {
            self.done = true;
            let message = error.get("message").and_then(Value::as_str).unwrap_or("the provider's stream failed");
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|code| u16::try_from(code).ok())
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let kind = openai_error_type(error.get("status").and_then(Value::as_str).unwrap_or("INTERNAL"), status);
            return vec![openai::error_body(message, kind, None)];
        }
        if self.id.is_empty() {
            self.id = payload
                .get("responseId")
                .and_then(Value::as_str)
                .map_or_else(|| format!("chatcmpl-{}", call_id()), str::to_owned);
        }
        if let Some(model) = payload.get("modelVersion").and_then(Value::as_str) {
            self.model = model.to_owned();
        }
        if let Some(usage) = payload.get("usageMetadata").and_then(usage) {
            self.usage = Some(usage);
        }
        let mut out = Vec::new();
        for (at, candidate) in payload.get("candidates").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(at as u64);
            let (text, calls) = read_parts(candidate);
            let slot = match self.candidates.iter().position(|(known, _)| *known == index) {
                Some(slot) => slot,
                None => {
                    self.candidates.push((index, 0));
                    out.push(self.chunk(index, json!({ "role": "assistant", "content": "" }), None));
                    self.candidates.len() - 1
                }
            };
            if !text.is_empty() {
                out.push(self.chunk(index, json!({ "content": text }), None));
            }
            if !calls.is_empty() {
                let first = self.candidates[slot].1;
                self.candidates[slot].1 += calls.len() as u64;
                let calls: Vec<Value> = calls
                    .into_iter()
                    .zip(first..)
                    .map(|(mut call, call_index)| {
                        call["index"] = json!(call_index);
                        call
                    })
                    .collect();
                out.push(self.chunk(index, json!({ "tool_calls": calls }), None));
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                self.finished = true;
                let called = self.candidates[slot].1 > 0;
                out.push(self.chunk(index, json!({}), Some(finish_reason(reason, called))));
            }
        }
        if payload.get("candidates").is_none() && payload.get("promptFeedback").is_some() {
            // The prompt was refused: nothing follows.
            self.finished = true;
            out.push(self.chunk(0, json!({ "role": "assistant", "content": "" }), Some("content_filter")));
        }
        out
    }

    fn end(&mut self) -> Vec<Value> {
        if self.done || !self.finished {
            // A stream cut short reports no usage: the client's stream estimates it instead.
            return Vec::new();
        }
        self.done = true;
        match self.usage {
            Some(usage) => vec![openai::chunk(&self.id, &self.model, self.created, None, None, Some(usage))],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
