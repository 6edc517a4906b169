//! What `ai_response_cache` and `ai_semantic_cache` share: reading the request, the answer
//! store (a `response_cache` memory zone or Redis), answering from a stored answer (whole, or
//! replayed as a stream), the `X-AI-Cache` header and the tap that stores `ai_proxy`'s answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::ai::{AiExchange, AiUsage};
use gantry_policy_api::{BuildContext, Exchange, PolicyResponse, RequestParts, ResponseParts};
use gantry_state::response_cache::{
    CacheKey, CacheRecord, CachedResponse, ResponseCacheStore, ResponseCaches, StoreCall,
};
use gantry_state::{StoreError, StoreMetrics};
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::sse::data_event;
use super::{AnswerTap, AnswerTaps};
use crate::forward::response_cache::StoreKind;

/// The header telling whether an answer came from an AI cache: `hit` or `miss`.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-ai-cache");

pub(crate) fn default_zone() -> String {
    "ai".to_owned()
}

pub(crate) fn default_memory_max_bytes() -> u64 {
    64 * 1024 * 1024
}

pub(crate) fn default_ttl() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(300)
}

pub(crate) fn default_max_entry_bytes() -> u64 {
    256 * 1024
}

/// The store settings both caches have.
pub(crate) struct StoreSettings<'a> {
    pub kind: StoreKind,
    pub memory_zone: &'a str,
    pub memory_max_bytes: u64,
    pub ttl: gantry_config::Duration,
    pub max_entry_bytes: u64,
}

impl StoreSettings<'_> {
    /// Checks them, reporting at `path`'s fields.
    pub(crate) fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.ttl.get().is_zero() {
            errors.push(path.key("ttl"), "must be more than 0");
        }
        if self.max_entry_bytes == 0 {
            errors.push(path.key("max_entry_bytes"), "must be more than 0");
        }
        if self.memory_max_bytes == 0 {
            errors.push(path.key("memory_max_bytes"), "must be more than 0");
        } else if self.kind == StoreKind::Memory && self.max_entry_bytes > self.memory_max_bytes {
            errors.push(
                path.key("max_entry_bytes"),
                "is larger than memory_max_bytes: no such answer would fit the zone",
            );
        }
        if self.memory_zone.trim().is_empty() {
            errors.push(path.key("memory_zone"), "give the zone a name");
        }
    }
}

/// The answer store of one cache policy and what it counts with.
#[derive(Debug)]
pub(crate) struct AnswerStore {
    pub store: ResponseCacheStore,
    pub caches: Arc<ResponseCaches>,
    metrics: StoreMetrics,
    policy: &'static str,
    pub ttl: Duration,
    max_entry_bytes: usize,
}

impl AnswerStore {
    /// The store the settings name, or why there is none (`redis` without `node.stores.redis`).
    pub(crate) fn build(
        policy: &'static str,
        settings: &StoreSettings<'_>,
        path: &FieldPath,
        context: &BuildContext<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Self> {
        let caches = context.stores.response_caches();
        let store = match settings.kind {
            StoreKind::Memory => Some(ResponseCacheStore::Memory(
                caches.memory_zone(settings.memory_zone.trim(), settings.memory_max_bytes.max(1)),
            )),
            StoreKind::Redis => {
                let redis = context.stores.response_cache_redis();
                if redis.is_none() {
                    errors.push(path.key("store"), "`redis` needs `node.stores.redis` in the node settings");
                }
                redis
            }
        }?;
        Some(Self {
            store,
            caches,
            metrics: context.stores.metrics().clone(),
            policy,
            ttl: settings.ttl.get(),
            max_entry_bytes: usize::try_from(settings.max_entry_bytes).unwrap_or(usize::MAX),
        })
    }

    /// The answer stored under `key`; a store failure is a miss.
    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        match self.store.get(key).resolve().await {
            Ok(Some(CacheRecord::Response(response))) => Some(response),
            Ok(_) => None,
            Err(err) => {
                self.metrics.count_error(self.policy, self.store.name(), "miss");
                tracing::warn!(policy = self.policy, error = %err, "AI cache store failed; answered as a miss");
                None
            }
        }
    }

    /// The stored form of `answer`, unless it is longer than `max_entry_bytes`.
    pub(crate) fn entry(&self, answer: &Value) -> Option<CacheRecord> {
        let body = serde_json::to_vec(answer).ok()?;
        if body.len() > self.max_entry_bytes {
            return None;
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some(CacheRecord::Response(Arc::new(CachedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            freshness: self.ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: true,
        })))
    }

    /// Stores `record` under `key`, then `after` (a semantic cache's vector, which must not
    /// point at an answer not yet stored); a memory store at once, Redis off the request path.
    pub(crate) fn put(
        self: &Arc<Self>,
        key: &CacheKey,
        record: CacheRecord,
        after: impl FnOnce() -> StoreCall<'static, ()> + Send + 'static,
    ) {
        let this = self.clone();
        match self.store.put(key, record, self.ttl) {
            StoreCall::Ready(Ok(())) => match after() {
                StoreCall::Ready(result) => self.stored(result),
                StoreCall::Pending(future) => spawn(async move { this.stored(future.await) }),
            },
            StoreCall::Ready(Err(err)) => self.stored(Err(err)),
            StoreCall::Pending(future) => spawn(async move {
                let result = match future.await {
                    Ok(()) => after().resolve().await,
                    Err(err) => Err(err),
                };
                this.stored(result);
            }),
        }
    }

    fn stored(&self, result: Result<(), StoreError>) {
        if let Err(err) = result {
            self.metrics.count_error(self.policy, self.store.name(), "not_stored");
            tracing::warn!(policy = self.policy, error = %err, "AI cache store failed; answer not stored");
        }
    }
}

fn spawn(work: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(work);
        }
        Err(_) => tracing::debug!("no runtime to store an AI answer on"),
    }
}

/// What a cache reads of a client's request.
pub(crate) struct CacheRequest {
    /// `chat`, `text_completion` or `embeddings`.
    pub operation: &'static str,
    pub body: Map<String, Value>,
    pub model: String,
    pub streamed: bool,
    pub include_usage: bool,
}

/// The request, when it is one an AI cache looks at: a `POST` to one of the AI endpoints with a
/// JSON body naming a `model`. Anything else goes on to `ai_proxy`, which answers it.
pub(crate) fn read_request(request: &RequestParts, exchange: &Exchange) -> Option<CacheRequest> {
    if request.method != Method::POST {
        return None;
    }
    let path = request.uri.path();
    let operation = if path.ends_with("/chat/completions") {
        "chat"
    } else if path.ends_with("/completions") {
        "text_completion"
    } else if path.ends_with("/embeddings") {
        "embeddings"
    } else {
        return None;
    };
    let super::prompt::Body::Json(body) = super::prompt::read_body(exchange) else {
        return None;
    };
    let model = body.get("model").and_then(Value::as_str)?.to_owned();
    let streamed = operation != "embeddings" && body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage =
        body.get("stream_options").and_then(|options| options.get("include_usage")).and_then(Value::as_bool)
            == Some(true);
    Some(CacheRequest { operation, body, model, streamed, include_usage })
}

/// Marks an exchange an AI cache looked at, so its response gets `X-AI-Cache: miss` unless a
/// cache answered it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Looked;

/// Adds `tap` to the exchange's answer taps.
pub(crate) fn add_tap(exchange: &mut Exchange, tap: AnswerTap) {
    exchange.extensions.get_or_insert_default::<AnswerTaps>().0.push(tap);
}

/// Sets `X-AI-Cache: miss` on the response of a request a cache looked at and none answered.
pub(crate) fn mark_miss(response: &mut ResponseParts, exchange: &Exchange) {
    if exchange.extensions.get::<Looked>().is_some() && !response.headers.contains_key(CACHE_HEADER) {
        response.headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    }
}

/// Hex of the first 16 bytes of a SHA-256 digest.
pub(crate) fn digest_hex(digest: Sha256) -> String {
    use std::fmt::Write;
    digest.finalize()[..16].iter().fold(String::with_capacity(32), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// `value` as JSON with every object's keys sorted, so equal requests digest alike whatever
/// order their fields came in.
pub(crate) fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            out.push('{');
            for (at, key) in keys.into_iter().enumerate() {
                if at > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&object[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (at, item) in items.iter().enumerate() {
                if at > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The client's answer from a stored one: the JSON as stored, or, for a streamed request, the
/// same answer as server-sent events (the role, each choice's text, its finish reason, the
/// usage when asked, then `[DONE]`). Reports the stored usage to the exchange as a cache hit
/// costing nothing.
pub(crate) fn answer_from(
    stored: &CachedResponse,
    request: &CacheRequest,
    exchange: &mut Exchange,
) -> Option<PolicyResponse> {
    let answer: Value = serde_json::from_slice(&stored.body).ok()?;
    let mut response = if request.streamed {
        let mut response = PolicyResponse::new(Bytes::from(replay(&answer, request.include_usage)));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        let mut response = PolicyResponse::new(stored.body.clone());
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    response.headers_mut().insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    let usage = answer.get("usage");
    let count = |field: &str| usage.and_then(|usage| usage.get(field)).and_then(Value::as_u64).unwrap_or(0);
    let ai = AiExchange::of(&mut exchange.extensions);
    ai.set_request_model(&request.model);
    ai.finish(AiUsage {
        operation: request.operation,
        provider: "",
        request_model: Arc::from(request.model.as_str()),
        response_model: answer.get("model").and_then(Value::as_str).unwrap_or_default().to_owned(),
        input_tokens: count("prompt_tokens"),
        output_tokens: count("completion_tokens"),
        estimated: false,
        cost: Some(0.0),
        cache_hit: true,
    });
    Some(response)
}

/// A whole `chat.completion` or `text_completion` as the chunks of a stream, ending in `[DONE]`.
fn replay(answer: &Value, include_usage: bool) -> Vec<u8> {
    let text_completion = answer.get("object").and_then(Value::as_str) == Some("text_completion");
    let object = if text_completion { "text_completion" } else { "chat.completion.chunk" };
    let chunk = |choices: Value| {
        json!({
            "id": answer.get("id").cloned().unwrap_or(Value::Null),
            "object": object,
            "created": answer.get("created").cloned().unwrap_or(Value::Null),
            "model": answer.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        })
    };
    let mut out = Vec::new();
    let choices = answer.get("choices").and_then(Value::as_array).cloned().unwrap_or_default();
    for (at, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(at));
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        if text_completion {
            let text = choice.get("text").cloned().unwrap_or(json!(""));
            let body = chunk(json!([{ "index": index, "text": text, "logprobs": null, "finish_reason": null }]));
            out.extend(data_event(&body.to_string()));
            let end = chunk(json!([{ "index": index, "text": "", "logprobs": null, "finish_reason": finish }]));
            out.extend(data_event(&end.to_string()));
            continue;
        }
        let message = choice.get("message").cloned().unwrap_or_else(|| json!({}));
        let role = message.get("role").cloned().unwrap_or(json!("assistant"));
        let opening =
            chunk(json!([{ "index": index, "delta": { "role": role, "content": "" }, "finish_reason": null }]));
        out.extend(data_event(&opening.to_string()));
        let mut delta = Map::new();
        if let Some(content) = message.get("content").filter(|content| !content.is_null()) {
            delta.insert("content".to_owned(), content.clone());
        }
        if let Some(Value::Array(calls)) = message.get("tool_calls") {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(at, call)| {
                    let mut call = call.clone();
                    if let Some(object) = call.as_object_mut() {
                        object.entry("index").or_insert(json!(at));
                    }
                    call
                })
                .collect();
            delta.insert("tool_calls".to_owned(), Value::Array(calls));
        }
        if !delta.is_empty() {
            let body = chunk(json!([{ "index": index, "delta": delta, "finish_reason": null }]));
            out.extend(data_event(&body.to_string()));
        }
        let end = chunk(json!([{ "index": index, "delta": {}, "finish_reason": finish }]));
        out.extend(data_event(&end.to_string()));
    }
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = answer.get("usage").cloned().unwrap_or(Value::Null);
        out.extend(data_event(&last.to_string()));
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        text.split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).expect("a JSON chunk"))
            .collect()
    }

    #[test]
    fn replays_a_chat_answer_as_role_content_finish_and_usage_chunks() {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        });
        let chunks = events(&replay(&answer, true));
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert!(chunks.iter().all(|chunk| chunk["object"] == "chat.completion.chunk" && chunk["id"] == "chatcmpl-1"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello!");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"]["total_tokens"], 7);
        assert_eq!(events(&replay(&answer, false)).len(), 3, "no usage chunk unless asked");
    }

    #[test]
    fn replays_tool_calls_and_text_completions() {
        let answer = json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]
        });
        let chunks = events(&replay(&answer, false));
        assert_eq!(chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "f");
        let completion = json!({
            "id": "t", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "done", "logprobs": null, "finish_reason": "stop"}]
        });
        let chunks = events(&replay(&completion, false));
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0]["object"], "text_completion");
        assert_eq!(chunks[0]["choices"][0]["text"], "done");
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let mut a = String::new();
        canonical_json(&json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}}), &mut a);
        assert_eq!(a, r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#);
    }
}
