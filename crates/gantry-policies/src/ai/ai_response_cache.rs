#![doc = include_str!("ai_response_cache.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, ResponseParts, Stage, Validate,
};
use gantry_state::response_cache::{CacheKey, StoreCall};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cache::{self, AnswerStore, CacheRequest, Looked, StoreSettings};
use crate::forward::response_cache::StoreKind;

/// Settings of `ai_response_cache`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where answers are kept: `memory` (a zone of this process) or `redis`
    /// (`node.stores.redis`, shared by every gateway process using it).
    #[serde(default)]
    pub store: StoreKind,
    /// Memory store: the zone the answers go in, shared with the `response_cache` and AI cache
    /// policies naming it with the same `memory_max_bytes`.
    #[serde(default = "cache::default_zone")]
    pub memory_zone: String,
    /// Memory store: bytes the zone holds at most; the least used answers go first.
    #[serde(default = "cache::default_memory_max_bytes")]
    pub memory_max_bytes: u64,
    /// How long an answer is kept.
    #[serde(default = "cache::default_ttl")]
    pub ttl: gantry_config::Duration,
    /// Largest answer stored, in bytes of JSON; a longer one is passed on without being stored.
    #[serde(default = "cache::default_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// Whether each consumer gets its own entries (an identity policy must run before).
    #[serde(default)]
    pub per_consumer: bool,
    /// Largest request body read, in bytes; a longer one is answered 413.
    #[serde(default = "super::prompt::default_max_request_bytes")]
    pub max_request_bytes: u64,
}

impl Config {
    fn store_settings(&self) -> StoreSettings<'_> {
        StoreSettings {
            kind: self.store,
            memory_zone: &self.memory_zone,
            memory_max_bytes: self.memory_max_bytes,
            ttl: self.ttl,
            max_entry_bytes: self.max_entry_bytes,
        }
    }
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        self.store_settings().validate(path, errors);
        if self.max_request_bytes == 0 {
            errors.push(path.key("max_request_bytes"), "must be at least 1");
        }
    }
}

/// Factory of the `ai_response_cache` policy.
#[derive(Debug)]
pub struct AiResponseCache;

impl PolicyFactory for AiResponseCache {
    const NAME: &'static str = "ai_response_cache";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("ai_response_cache.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let store = AnswerStore::build(Self::NAME, &config.store_settings(), path, context, &mut errors);
        match store {
            Some(store) if errors.is_empty() => Ok(Arc::new(CompiledAiResponseCache {
                store: Arc::new(store),
                per_consumer: config.per_consumer,
                max_request_bytes: config.max_request_bytes,
            })),
            _ => Err(errors),
        }
    }
}

/// Runs per request: one digest of the body and one store lookup.
#[derive(Debug)]
struct CompiledAiResponseCache {
    store: Arc<AnswerStore>,
    per_consumer: bool,
    max_request_bytes: u64,
}

/// The request body fields that do not change the answer: how it is delivered and who the
/// provider is told asked.
const UNKEYED_FIELDS: [&str; 3] = ["stream", "stream_options", "user"];

impl CompiledAiResponseCache {
    /// Route, path (the endpoint) and model in clear; the body without [`UNKEYED_FIELDS`] and
    /// the consumer (when per consumer) in the digest.
    fn key(&self, request: &CacheRequest, path: &str, exchange: &Exchange) -> CacheKey {
        let mut body = request.body.clone();
        for field in UNKEYED_FIELDS {
            body.remove(field);
        }
        let mut canonical = String::new();
        cache::canonical_json(&Value::Object(body), &mut canonical);
        let mut digest = Sha256::new();
        digest.update(exchange.route_id.as_bytes());
        digest.update(b"\0");
        digest.update(request.model.as_bytes());
        digest.update(b"\0");
        digest.update(canonical.as_bytes());
        if self.per_consumer {
            digest.update(b"\0");
            if let Some(consumer) = exchange.consumer() {
                digest.update(consumer.id.as_bytes());
            }
        }
        CacheKey::new(exchange.route_id.clone(), &request.model, path, &cache::digest_hex(digest))
    }

    async fn serve(&self, request: CacheRequest, path: String, exchange: &mut Exchange) -> Flow {
        let key = self.key(&request, &path, exchange);
        exchange.extensions.insert(Looked);
        if let Some(stored) = self.store.get(&key).await {
            if let Some(answer) = cache::answer_from(&stored, &request, exchange) {
                self.store.caches.count(&exchange.route_id, "hit");
                return Flow::Respond(answer);
            }
        }
        self.store.caches.count(&exchange.route_id, "miss");
        let store = self.store.clone();
        cache::add_tap(
            exchange,
            Arc::new(move |answer: &Value| {
                if let Some(record) = store.entry(answer) {
                    store.put(&key, record, || StoreCall::Ready(Ok(())));
                }
            }),
        );
        Flow::Continue
    }
}

impl Policy for CompiledAiResponseCache {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: true, log: false }
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        super::prompt::has_prompt(request).then_some(self.max_request_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(read) = cache::read_request(request, exchange) else {
            return Hook::Done(Flow::Continue);
        };
        let path = request.uri.path().to_owned();
        Hook::Wait(Box::pin(self.serve(read, path, exchange)))
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        cache::mark_miss(response, exchange);
    }
}

#[cfg(test)]
mod tests;
