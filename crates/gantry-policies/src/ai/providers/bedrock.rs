//! Amazon Bedrock's Converse API: `POST /model/{modelId}/converse`, and
//! `/model/{modelId}/converse-stream` whose answer is AWS event-stream binary frames
//! (`application/vnd.amazon.eventstream`: `messageStart`, `contentBlockStart`,
//! `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata`, and exception
//! frames), each translated into OpenAI chunks as it arrives. Embeddings are Titan text
//! embeddings through `POST /model/{modelId}/invoke`. Every request is signed with AWS
//! Signature Version 4 (service `bedrock`), or carries a Bedrock API key as a bearer token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::BytesMut;
use gantry_config::{ConfigErrors, FieldPath, HostHeaderSpec, Secret, UpstreamSpec};
use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::StatusCode;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::fields::{max_tokens, stop_sequences, text_of};
use super::{
    Adapter, AdapterFuture, ChatRequest, EventDecoder, Operation, Provider, StreamEvent, StreamTranslator, TargetInfo,
};
use crate::ai::openai::{self, Usage};

/// The service name requests are signed for.
const SERVICE: &str = "bedrock";

/// Media type of a Converse stream.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// A model id is one path segment: everything but unreserved characters is encoded (`:` of
/// `anthropic.claude-3-haiku-20240307-v1:0`, `/` of an inference profile ARN).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The `bedrock` settings of a target.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BedrockConfig {
    /// The AWS region, like `us-east-1`: part of the signature and of the default host.
    pub region: String,
    /// The access key id requests are signed with; with `secret_access_key`. Without both,
    /// the target's `api_key` (a Bedrock API key) is sent as a bearer token instead.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret access key requests are signed with.
    #[serde(default)]
    pub secret_access_key: Option<Secret<String>>,
    /// The session token of temporary credentials, sent as `X-Amz-Security-Token`.
    #[serde(default)]
    pub session_token: Option<Secret<String>>,
    /// The `Host` signed and sent; `bedrock-runtime.{region}.amazonaws.com` when absent (a
    /// VPC or FIPS endpoint's name otherwise).
    #[serde(default)]
    pub host: Option<String>,
}

/// Checks a target's `bedrock` settings.
pub fn validate(
    provider: Provider,
    config: Option<&BedrockConfig>,
    has_api_key: bool,
    at: &FieldPath,
    errors: &mut ConfigErrors,
) {
    let at = at.key("bedrock");
    let Some(config) = config else {
        if provider == Provider::Bedrock {
            errors.push(at, "required for `provider: bedrock` (at least `region`)");
        }
        return;
    };
    if provider != Provider::Bedrock {
        errors.push(at, "only a target with `provider: bedrock` takes `bedrock`");
        return;
    }
    if config.region.is_empty()
        || !config.region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errors.push(at.key("region"), format!("`{}` is not an AWS region (like `us-east-1`)", config.region));
    }
    match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => {
            if id.is_empty() || HeaderValue::from_str(id).is_err() {
                errors.push(at.key("access_key_id"), "must be a non-empty access key id");
            }
            if secret.expose().is_empty() {
                errors.push(at.key("secret_access_key"), "must not be empty");
            }
            if has_api_key {
                errors
                    .push(at.clone(), "give either `access_key_id` and `secret_access_key`, or the target's `api_key`");
            }
        }
        (Some(_), None) => errors.push(at.key("secret_access_key"), "required with `access_key_id`"),
        (None, Some(_)) => errors.push(at.key("access_key_id"), "required with `secret_access_key`"),
        (None, None) => {
            if !has_api_key {
                errors.push(
                    at.clone(),
                    "give `access_key_id` and `secret_access_key` to sign requests, or the target's `api_key`",
                );
            }
            if config.session_token.is_some() {
                errors.push(at.key("session_token"), "only with `access_key_id` and `secret_access_key`");
            }
        }
    }
    if let Some(token) = &config.session_token {
        if HeaderValue::from_str(token.expose()).is_err() {
            errors.push(at.key("session_token"), "must be text that fits in a header");
        }
    }
    if let Some(host) = &config.host {
        if host.is_empty() || host.parse::<http::uri::Authority>().is_err() {
            errors.push(at.key("host"), format!("`{host}` is not a host name"));
        }
    }
}

/// Checks that a `bedrock` target's upstream sends the `Host` the target signed: an upstream
/// that replaces it (`host_header: endpoint` or `rewrite`) would make every signature fail.
pub fn check_upstream(provider: Provider, upstream: Option<&UpstreamSpec>, at: &FieldPath, errors: &mut ConfigErrors) {
    let Some(upstream) = upstream.filter(|_| provider == Provider::Bedrock) else {
        return;
    };
    if upstream.host_header != HostHeaderSpec::Pass {
        errors.push(
            at.clone(),
            format!(
                "upstream `{}` replaces the `Host` header, which a `bedrock` target sets and signs itself: \
                 leave its `host_header` at `pass` (and set `bedrock.host` for another host name)",
                upstream.id
            ),
        );
    }
}

/// What a Bedrock target signs its requests with.
pub struct BedrockAccess {
    region: String,
    host: HeaderValue,
    /// None: the target's `api_key` authorizes its requests.
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for BedrockAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Credentials` redacts its secret and token itself.
        f.debug_struct("BedrockAccess")
            .field("region", &self.region)
            .field("host", &self.host)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl BedrockAccess {
    /// The access of a `bedrock` target; None for other providers or settings [`validate`]
    /// refuses.
    pub fn of(provider: Provider, config: Option<&BedrockConfig>) -> Option<Arc<Self>> {
        let config = config.filter(|_| provider == Provider::Bedrock)?;
        let host = match &config.host {
            Some(host) => host.clone(),
            None => format!("bedrock-runtime.{}.amazonaws.com", config.region),
        };
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => Some(Credentials::new(
                id.clone(),
                secret.expose().clone(),
                config.session_token.as_ref().map(|token| token.expose().clone()),
                None,
                "gantry",
            )),
            _ => None,
        };
        Some(Arc::new(Self { region: config.region.clone(), host: HeaderValue::from_str(&host).ok()?, credentials }))
    }
}

/// The Bedrock format.
#[derive(Debug)]
pub struct Bedrock;

impl Adapter for Bedrock {
    fn serves(&self, operation: Operation) -> bool {
        matches!(operation, Operation::Chat | Operation::Embeddings)
    }

    fn path(&self, target: &TargetInfo, operation: Operation, streamed: bool) -> String {
        let model = utf8_percent_encode(&target.model, SEGMENT);
        let action = match (operation, streamed) {
            (Operation::Embeddings, _) => "invoke",
            (_, true) => "converse-stream",
            (_, false) => "converse",
        };
        format!("{}/model/{model}/{action}", target.base_path)
    }

    fn request(
        &self,
        _target: &TargetInfo,
        operation: Operation,
        request: &ChatRequest,
        _streamed: bool,
    ) -> Result<Vec<u8>, String> {
        let body = match operation {
            Operation::Embeddings => embedding_request(request)?,
            _ => converse_request(request)?,
        };
        serde_json::to_vec(&body).map_err(|err| err.to_string())
    }

    fn response(&self, target: &TargetInfo, operation: Operation, body: &[u8]) -> Result<Value, String> {
        match operation {
            Operation::Embeddings => embedding_response(body, &target.model),
            _ => converse_response(body, &target.model),
        }
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
        error(status, None, body)
    }

    fn error_with_headers(&self, status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> (StatusCode, Value) {
        let kind = headers.get("x-amzn-errortype").and_then(|value| value.to_str().ok());
        error(status, kind, body)
    }

    fn stream(&self, target: &TargetInfo, _operation: Operation) -> Box<dyn StreamTranslator> {
        Box::new(ConverseStream::new(&target.model))
    }

    fn decoder(&self) -> Box<dyn EventDecoder> {
        Box::<EventStreamDecoder>::default()
    }

    fn authorize<'a>(
        &'a self,
        target: &'a TargetInfo,
        head: &'a mut http::request::Parts,
        body: &'a [u8],
    ) -> AdapterFuture<'a> {
        Box::pin(std::future::ready(authorize(target, head, body, SystemTime::now())))
    }
}

/// Sets the host and the stream's media type, then signs: host, content type, date and
/// session token (none of which the gateway changes on the way out).
fn authorize(
    target: &TargetInfo,
    head: &mut http::request::Parts,
    body: &[u8],
    time: SystemTime,
) -> Result<(), String> {
    let access = target.bedrock.as_ref().ok_or("the Bedrock target has no `bedrock` settings")?;
    head.headers.insert(HOST, access.host.clone());
    let streamed = head.uri.path().ends_with("/converse-stream");
    head.headers.insert(ACCEPT, HeaderValue::from_static(if streamed { EVENT_STREAM } else { "application/json" }));
    let Some(credentials) = &access.credentials else {
        return Ok(());
    };
    head.headers.remove(AUTHORIZATION);
    let signed = [HOST, CONTENT_TYPE];
    let headers: Vec<(&str, &str)> =
        signed.iter().filter_map(|name| Some((name.as_str(), head.headers.get(name)?.to_str().ok()?))).collect();
    let uri = head.uri.to_string();
    let added = sign_v4(head.method.as_str(), &uri, &headers, body, credentials, &access.region, SERVICE, time)?;
    for (name, value) in added {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| err.to_string())?;
        let mut value = HeaderValue::from_str(&value).map_err(|err| err.to_string())?;
        value.set_sensitive(name == AUTHORIZATION || name.as_str() == "x-amz-security-token");
        head.headers.insert(name, value);
    }
    Ok(())
}

/// The headers AWS Signature Version 4 adds to a request (`authorization`, `x-amz-date`,
/// `x-amz-security-token`), signing `headers` (which must hold `host`) and `body`.
#[allow(clippy::too_many_arguments)]
pub fn sign_v4(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|err| format!("cannot sign the request: {err}"))?
        .into();
    let signable = SignableRequest::new(method, uri, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|err| format!("cannot sign the request: {err}"))?;
    let (instructions, _) =
        sign(signable, &params).map_err(|err| format!("cannot sign the request: {err}"))?.into_parts();
    Ok(instructions.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect())
}

/// The Converse request for an OpenAI chat request, or why it cannot be made.
pub fn converse_request(request: &ChatRequest) -> Result<Value, String> {
    let messages = request.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut uses_tools = false;
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).ok_or(format!("`messages[{index}].role` is missing"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(json!({ "text": text_of(content) }));
                continue;
            }
            "user" => ("user", content_blocks(content, index)?),
            "assistant" => {
                let mut blocks = match content {
                    Value::Null => Vec::new(),
                    other => content_blocks(other, index)?,
                };
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                    let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
                    uses_tools = true;
                    blocks.push(json!({ "toolUse": {
                        "toolUseId": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": function.get("name").cloned().unwrap_or(Value::Null),
                        "input": input,
                    } }));
                }
                ("assistant", blocks)
            }
            "tool" => {
                uses_tools = true;
                let result = json!({ "toolResult": {
                    "toolUseId": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": [{ "text": text_of(content) }],
                } });
                ("user", vec![result])
            }
            other => return Err(format!("`messages[{index}].role` `{other}` is not supported")),
        };
        // Converse wants the roles to alternate: the results of parallel tool calls, or a
        // user message after them, share one user turn.
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        turns.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect(),
    );
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(max) = max_tokens(request) {
        inference.insert("maxTokens".into(), json!(max));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(value) = request.get(from).filter(|value| value.is_number()) {
            inference.insert(to.into(), value.clone());
        }
    }
    if let Some(stops) = stop_sequences(request) {
        inference.insert("stopSequences".into(), stops);
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tool_config) = tool_config(request, uses_tools) {
        body.insert("toolConfig".into(), tool_config);
    }
    Ok(Value::Object(body))
}

/// `toolConfig` for the request's `tools` and `tool_choice`. Converse has no `none`: the tools
/// are left out then, unless the conversation already holds tool calls, which Converse
/// only takes with the tools declared.
fn tool_config(request: &ChatRequest, uses_tools: bool) -> Option<Value> {
    let tools = request.get("tools").and_then(Value::as_array)?;
    let choice = match request.get("tool_choice") {
        Some(Value::String(choice)) if choice == "none" => {
            if !uses_tools {
                return None;
            }
            None
        }
        Some(Value::String(choice)) if choice == "required" => Some(json!({ "any": {} })),
        Some(Value::String(choice)) if choice == "auto" => Some(json!({ "auto": {} })),
        Some(Value::Object(choice)) => choice
            .get("function")
            .and_then(|function| function.get("name"))
            .map(|name| json!({ "tool": { "name": name } })),
        _ => None,
    };
    let tools: Vec<Value> = tools
        .iter()
        .filter_map(|tool| tool.get("function"))
        .map(|function| {
            let mut spec = Map::new();
            spec.insert("name".into(), function.get("name").cloned().unwrap_or(Value::Null));
            if let Some(description) = function.get("description").filter(|value| value.is_string()) {
                spec.insert("description".into(), description.clone());
            }
            let schema = function.get("parameters").cloned().unwrap_or_else(|| json!({ "type": "object" }));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            json!({ "toolSpec": spec })
        })
        .collect();
    let mut config = json!({ "tools": tools });
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Some(config)
}

/// OpenAI content (a string, or text and image parts) as Converse content blocks.
fn content_blocks(content: &Value, index: usize) -> Result<Vec<Value>, String> {
    let Value::Array(parts) = content else {
        return Ok(vec![json!({ "text": text_of(content) })]);
    };
    let mut blocks = Vec::new();
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => blocks.push(json!({ "text": part.get("text").cloned().unwrap_or(Value::Null) })),
            Some("image_url") => {
                let url = part.get("image_url").and_then(|image| image.get("url")).and_then(Value::as_str);
                blocks.push(image_block(url.unwrap_or_default(), index)?);
            }
            _ => {}
        }
    }
    Ok(blocks)
}

/// A `data:` URL's image as a Converse image block (its bytes base64 in JSON); Converse
/// fetches no URLs.
fn image_block(url: &str, index: usize) -> Result<Value, String> {
    let refused = || format!("`messages[{index}]`: Bedrock takes images as `data:image/...;base64,` URLs only");
    let (media_type, data) =
        url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")).ok_or_else(refused)?;
    let format = match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => {
            return Err(format!("`messages[{index}]`: Bedrock takes png, jpeg, gif or webp images, not `{media_type}`"))
        }
    };
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// A completion id: Converse gives none.
fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    format!("chatcmpl-{nanos:x}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The OpenAI completion for a Converse answer.
pub fn converse_response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let message = answer.pointer("/output/message").ok_or("the answer has no `output.message`")?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.get("content").and_then(Value::as_array).into_iter().flatten() {
        if let Some(part) = block.get("text").and_then(Value::as_str) {
            text.push_str(part);
        } else if let Some(call) = block.get("toolUse") {
            tool_calls.push(json!({
                "id": call.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": call.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": call.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            }));
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) };
    let mut reply = json!({ "role": "assistant", "content": content });
    if !tool_calls.is_empty() {
        reply["tool_calls"] = Value::Array(tool_calls);
    }
    let stop_reason = answer.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
    let count = |key: &str| answer.get("usage").and_then(|usage| usage.get(key)).and_then(Value::as_u64).unwrap_or(0);
    Ok(json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": openai::now(),
        "model": model,
        "choices": [{ "index": 0, "message": reply, "logprobs": null, "finish_reason": finish_reason(stop_reason) }],
        "usage": Usage::new(count("inputTokens"), count("outputTokens")),
    }))
}

/// The Titan embeddings request (`inputText`) for an OpenAI embeddings request. Titan embeds
/// one text per call, and a try is one call here, so a list takes one text.
pub fn embedding_request(request: &ChatRequest) -> Result<Value, String> {
    let text = match request.get("input") {
        Some(Value::String(text)) => text.as_str(),
        Some(Value::Array(inputs)) if inputs.len() == 1 => {
            inputs[0].as_str().ok_or("`input` must be a text: Bedrock's Titan embeddings take no token arrays")?
        }
        Some(Value::Array(_)) => {
            return Err("`input` must be one text: Bedrock's Titan embeddings embed one text per request".to_owned())
        }
        _ => return Err("`input` must be a text".to_owned()),
    };
    let mut body = json!({ "inputText": text });
    if let Some(dimensions) = request.get("dimensions").and_then(Value::as_u64) {
        body["dimensions"] = json!(dimensions);
    }
    Ok(body)
}

/// The OpenAI embedding list for a Titan answer (`embedding`, `inputTextTokenCount`).
pub fn embedding_response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let embedding = answer.get("embedding").filter(|value| value.is_array()).ok_or("the answer has no `embedding`")?;
    let tokens = answer.get("inputTextTokenCount").and_then(Value::as_u64).unwrap_or(0);
    Ok(json!({
        "object": "list",
        "data": [{ "object": "embedding", "index": 0, "embedding": embedding }],
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
}

/// An AWS error answer (`{"message": ...}`, its kind in `x-amzn-errortype` like
/// `ThrottlingException:http://internal.amazon.com/...`) in OpenAI's shape, the kind as
/// `code`.
pub fn error(status: StatusCode, kind: Option<&str>, body: &[u8]) -> (StatusCode, Value) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|body| body.get(name)).and_then(Value::as_str);
    let message = field("message")
        .or_else(|| field("Message"))
        .map_or_else(|| format!("the provider answered {status}"), str::to_owned);
    // The header first; then a body's `__type` (`com.amazon.bedrock#ThrottlingException`).
    let code = kind
        .or_else(|| field("__type"))
        .map(|kind| kind.split(':').next().unwrap_or(kind))
        .map(|kind| kind.rsplit('#').next().unwrap_or(kind))
        .filter(|kind| !kind.is_empty());
    (status, openai::error_body(&message, openai::error_kind(status), code))
}

/// Splits an event stream into its messages: an event's name is its `:event-type` and its
/// data the JSON payload; an exception (or an error message) becomes an `exception` event
/// whose data is `{"type": ..., "message": ...}`.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buffer: BytesMut,
    frames: MessageFrameDecoder,
}

impl EventDecoder for EventStreamDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            match self.frames.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => events.push(event_of(&message)),
                Ok(DecodedFrame::Incomplete) => return Ok(events),
                Err(err) => return Err(format!("the provider's event stream is broken: {err}")),
            }
        }
    }
}

fn event_of(message: &Message) -> StreamEvent {
    let header = |name: &str| {
        message
            .headers()
            .iter()
            .find(|header| header.name().as_str() == name)
            .and_then(|header| header.value().as_string().ok())
            .map(|value| value.as_str().to_owned())
    };
    let payload = String::from_utf8_lossy(message.payload()).into_owned();
    match header(":message-type").as_deref() {
        Some("exception") => {
            let parsed: Option<Value> = serde_json::from_str(&payload).ok();
            let text = parsed.as_ref().and_then(|body| body.get("message").or_else(|| body.get("Message")));
            let text = text.and_then(Value::as_str).unwrap_or("the provider's stream failed");
            let kind = header(":exception-type").unwrap_or_default();
            StreamEvent { event: "exception".to_owned(), data: json!({ "type": kind, "message": text }).to_string() }
        }
        Some("error") => {
            let kind = header(":error-code").unwrap_or_default();
            let text = header(":error-message").unwrap_or_else(|| "the provider's stream failed".to_owned());
            StreamEvent { event: "exception".to_owned(), data: json!({ "type": kind, "message": text }).to_string() }
        }
        _ => StreamEvent { event: header(":event-type").unwrap_or_else(|| "message".to_owned()), data: payload },
    }
}

/// Translates a Converse stream into `chat.completion.chunk` events, one event at a time.
#[derive(Debug)]
pub struct ConverseStream {
    id: String,
    model: String,
    created: u64,
    /// Content block index to OpenAI tool call index.
    tool_calls: Vec<(u64, u64)>,
    done: bool,
}

impl ConverseStream {
    pub fn new(model: &str) -> Self {
        Self {
            id: completion_id(),
            model: model.to_owned(),
            created: openai::now(),
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
}

impl StreamTranslator for ConverseStream {
    fn event(&mut self, event: &str, data: &str) -> Vec<Value> {
        if self.done {
            return Vec::new();
        }
        let Ok(payload) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        let block = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match event {
            "messageStart" => self.chunk(json!({ "role": "assistant", "content": "" }), None),
            "contentBlockStart" => match payload.pointer("/start/toolUse") {
                Some(call) => {
                    let index = self.tool_calls.len() as u64;
                    self.tool_calls.push((block, index));
                    self.chunk(
                        json!({ "tool_calls": [{
                            "index": index,
                            "id": call.get("toolUseId").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": { "name": call.get("name").cloned().unwrap_or(Value::Null), "arguments": "" },
                        }] }),
                        None,
                    )
                }
                None => Vec::new(),
            },
            "contentBlockDelta" => {
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    self.chunk(json!({ "content": text }), None)
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    match self.tool_index(block) {
                        Some(index) => self.chunk(
                            json!({ "tool_calls": [{ "index": index, "function": { "arguments": input } }] }),
                            None,
                        ),
                        None => Vec::new(),
                    }
                } else {
                    // Reasoning and citation deltas have no place in a chat chunk.
                    Vec::new()
                }
            }
            "messageStop" => {
                let stop_reason = payload.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
                self.chunk(json!({}), Some(finish_reason(stop_reason)))
            }
            "metadata" => {
                let count = |key: &str| payload.get("usage").and_then(|usage| usage.get(key)).and_then(Value::as_u64);
                match count("inputTokens") {
                    Some(input) => {
                        self.done = true;
                        let usage = Usage::new(input, count("outputTokens").unwrap_or(0));
                        vec![openai::chunk(&self.id, &self.model, self.created, None, None, Some(usage))]
                    }
                    None => Vec::new(),
                }
            }
            "exception" => {
                self.done = true;
                let kind = payload.get("type").and_then(Value::as_str).unwrap_or_default();
                let message = payload.get("message").and_then(Value::as_str).unwrap_or("the provider's stream failed");
                let openai_kind = match kind {
                    "throttlingException" | "ThrottlingException" => "rate_limit_error",
                    "validationException" | "ValidationException" => "invalid_request_error",
                    _ => "server_error",
                };
                vec![openai::error_body(message, openai_kind, (!kind.is_empty()).then_some(kind))]
            }
            // `contentBlockStop` and events added later carry nothing for the client.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
