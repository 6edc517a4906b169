#![doc = include_str!("ai_semantic_cache.md")]

use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath, Secret};
use gantry_policy_api::subrequest::{subrequests, StreamingSubrequest, Subrequests};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, ResponseParts, Stage, Validate,
};
use gantry_state::response_cache::{CacheKey, ResponseCacheStore, VectorStore};
use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::cache::{self, AnswerStore, CacheRequest, Looked, StoreSettings};
use super::prompt;
use crate::forward::response_cache::StoreKind;

/// The header giving the similarity of the prompt whose answer a hit returned.
const SIMILARITY_HEADER: HeaderName = HeaderName::from_static("x-ai-cache-similarity");

/// Settings of `ai_semantic_cache`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The OpenAI-format embeddings endpoint the prompts are embedded with.
    pub embeddings: EmbeddingsConfig,
    /// Least cosine similarity between a prompt and a stored one for the stored answer to be
    /// given; more than 0 and at most 1.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// What of the request is embedded.
    #[serde(default)]
    pub prompt: PromptPart,
    /// Where answers and vectors are kept: `memory` (this process) or `redis`
    /// (`node.stores.redis`, shared by every gateway process using it).
    #[serde(default)]
    pub store: StoreKind,
    /// Memory store: the zone the answers go in (vectors are kept beside it, under the same name).
    #[serde(default = "cache::default_zone")]
    pub memory_zone: String,
    /// Memory store: bytes of answers the zone holds at most.
    #[serde(default = "cache::default_memory_max_bytes")]
    pub memory_max_bytes: u64,
    /// Prompt vectors kept at most: in memory over all routes and models using the zone, in
    /// Redis per route and model (and consumer). The oldest go first.
    #[serde(default = "default_max_vectors")]
    pub max_vectors: usize,
    /// How long an answer is kept.
    #[serde(default = "cache::default_ttl")]
    pub ttl: gantry_config::Duration,
    /// Largest answer stored, in bytes of JSON.
    #[serde(default = "cache::default_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// Whether each consumer gets its own entries (an identity policy must run before).
    #[serde(default)]
    pub per_consumer: bool,
    /// Largest request body read, in bytes; a longer one is answered 413.
    #[serde(default = "prompt::default_max_request_bytes")]
    pub max_request_bytes: u64,
}

/// The embeddings endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Id of the upstream serving it.
    pub upstream: String,
    /// The embedding model's name, sent as `model`.
    pub model: String,
    /// Sent as `Authorization: Bearer`.
    #[serde(default)]
    pub api_key: Option<Secret<String>>,
    /// The path the API starts at; `/embeddings` follows it.
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// Longest wait for the vector; past it the request is a miss.
    #[serde(default = "default_embeddings_timeout")]
    pub timeout: gantry_config::Duration,
}

/// Which text of a request is embedded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptPart {
    /// The last user message (a completion's `prompt`): the question, whatever came before.
    #[default]
    LastUser,
    /// The text of every message, each on its own line with its role: the whole conversation.
    AllMessages,
}

fn default_threshold() -> f64 {
    0.9
}

fn default_max_vectors() -> usize {
    10_000
}

fn default_base_path() -> String {
    "/v1".to_owned()
}

fn default_embeddings_timeout() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(5)
}

/// Largest embeddings answer read.
const MAX_EMBEDDING_BYTES: usize = 4 * 1024 * 1024;

/// Entries tried, best first, when the best one's answer has gone meanwhile.
const CANDIDATES: usize = 3;

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
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            errors.push(path.key("threshold"), "must be more than 0 and at most 1 (0.9 is usual)");
        }
        if self.max_vectors == 0 {
            errors.push(path.key("max_vectors"), "must be at least 1");
        }
        if self.max_request_bytes == 0 {
            errors.push(path.key("max_request_bytes"), "must be at least 1");
        }
        let at = path.key("embeddings");
        if self.embeddings.model.is_empty() {
            errors.push(at.key("model"), "must not be empty");
        }
        let base_path = &self.embeddings.base_path;
        if !(base_path.is_empty() || base_path.starts_with('/')) || base_path.contains(['?', '#']) {
            errors.push(at.key("base_path"), format!("`{base_path}` is not a path"));
        }
        if let Some(key) = &self.embeddings.api_key {
            if HeaderValue::from_str(&format!("Bearer {}", key.expose())).is_err() {
                errors.push(at.key("api_key"), "must be text that fits in a header");
            }
        }
        if self.embeddings.timeout.get().is_zero() {
            errors.push(at.key("timeout"), "must be more than 0");
        }
    }
}

/// Factory of the `ai_semantic_cache` policy.
#[derive(Debug)]
pub struct AiSemanticCache;

impl PolicyFactory for AiSemanticCache {
    const NAME: &'static str = "ai_semantic_cache";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("ai_semantic_cache.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let upstream = &config.embeddings.upstream;
        if !context.spec.upstreams.iter().any(|known| known.id == *upstream) {
            let known: Vec<&str> = context.spec.upstreams.iter().map(|known| known.id.as_str()).collect();
            errors.push(
                path.key("embeddings").key("upstream"),
                format!("unknown upstream `{upstream}`; configured upstreams: {}", known.join(", ")),
            );
        }
        let store = AnswerStore::build(Self::NAME, &config.store_settings(), path, context, &mut errors);
        let (Some(store), true) = (store, errors.is_empty()) else {
            return Err(errors);
        };
        let vectors = match &store.store {
            ResponseCacheStore::Memory(_) => {
                VectorStore::Memory(store.caches.vector_index(config.memory_zone.trim(), config.max_vectors))
            }
            ResponseCacheStore::Redis(redis) => {
                VectorStore::Redis { redis: redis.clone(), max_entries: config.max_vectors }
            }
        };
        let auth = config.embeddings.api_key.as_ref().and_then(|key| {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Ok(Arc::new(CompiledAiSemanticCache {
            store: Arc::new(store),
            vectors,
            embedder: Embedder {
                upstream: Arc::from(upstream.as_str()),
                model: config.embeddings.model.clone(),
                path: format!("{}/embeddings", config.embeddings.base_path.trim_end_matches('/')),
                auth,
                timeout: config.embeddings.timeout.get(),
            },
            threshold: config.threshold as f32,
            prompt: config.prompt,
            per_consumer: config.per_consumer,
            max_request_bytes: config.max_request_bytes,
        }))
    }
}

/// Calls the embeddings endpoint.
#[derive(Debug)]
struct Embedder {
    upstream: Arc<str>,
    model: String,
    path: String,
    auth: Option<HeaderValue>,
    timeout: std::time::Duration,
}

impl Embedder {
    /// The vector of `text`, or why there is none.
    async fn embed(&self, sender: &Subrequests, text: &str) -> Result<Vec<f32>, String> {
        let body = json!({ "model": self.model, "input": text }).to_string();
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(&self.path)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json");
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let head = builder.body(()).map_err(|err| err.to_string())?.into_parts().0;
        let call = async {
            let opened = sender
                .open(StreamingSubrequest {
                    upstream: self.upstream.clone(),
                    head,
                    body: Bytes::from(body),
                    forwarding_headers: false,
                })
                .await
                .map_err(|err| err.to_string())?;
            let (parts, chunks) = opened.into_parts();
            if !parts.status.is_success() {
                return Err(format!("the embeddings endpoint answered {}", parts.status));
            }
            let whole = super::read_whole(chunks, MAX_EMBEDDING_BYTES)
                .await
                .map_err(|reason| format!("the embeddings endpoint's answer: {reason}"))?;
            vector_of(&whole)
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_| format!("no embedding within {:?}", self.timeout))?
    }
}

/// The first vector of an OpenAI embeddings answer (`data[0].embedding`).
fn vector_of(body: &[u8]) -> Result<Vec<f32>, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("unreadable embeddings answer: {err}"))?;
    let numbers = answer
        .pointer("/data/0/embedding")
        .and_then(Value::as_array)
        .ok_or("the embeddings answer has no `data[0].embedding`")?;
    let vector: Option<Vec<f32>> = numbers.iter().map(|number| number.as_f64().map(|number| number as f32)).collect();
    match vector {
        Some(vector) if !vector.is_empty() => Ok(vector),
        _ => Err("the embedding is not a list of numbers".to_owned()),
    }
}

/// The text of `body` the cache embeds, if it has any.
fn prompt_text(body: &Map<String, Value>, part: PromptPart) -> Option<String> {
    if let Some(Value::String(text)) = body.get("prompt") {
        return Some(text.clone());
    }
    let messages = body.get("messages").and_then(Value::as_array)?;
    let text = match part {
        PromptPart::LastUser => messages
            .iter()
            .rev()
            .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|message| message.get("content"))
            .and_then(prompt::content_text)?
            .into_owned(),
        PromptPart::AllMessages => prompt::texts(body)
            .into_iter()
            .map(|(at, text)| format!("{}: {text}", at.role()))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    (!text.trim().is_empty()).then_some(text)
}

/// Runs per request: one embedding call, one search of the scope's vectors, and on a hit one
/// store lookup.
#[derive(Debug)]
struct CompiledAiSemanticCache {
    store: Arc<AnswerStore>,
    vectors: VectorStore,
    embedder: Embedder,
    threshold: f32,
    prompt: PromptPart,
    per_consumer: bool,
    max_request_bytes: u64,
}

impl CompiledAiSemanticCache {
    /// The vectors compared with the request's: those of its route, endpoint, model and, when
    /// per consumer, consumer.
    fn scope(&self, request: &CacheRequest, path: &str, exchange: &Exchange) -> String {
        let mut digest = Sha256::new();
        digest.update(path.as_bytes());
        digest.update(b"\0");
        digest.update(request.model.as_bytes());
        if self.per_consumer {
            digest.update(b"\0");
            if let Some(consumer) = exchange.consumer() {
                digest.update(consumer.id.as_bytes());
            }
        }
        format!("{} {}", exchange.route_id, cache::digest_hex(digest))
    }

    fn answer_key(&self, exchange: &Exchange, request: &CacheRequest, path: &str, id: &str) -> CacheKey {
        CacheKey::new(exchange.route_id.clone(), &request.model, path, &format!("semantic.{id}"))
    }

    async fn serve(&self, request: CacheRequest, path: String, exchange: &mut Exchange) -> Flow {
        let Some(text) = prompt_text(&request.body, self.prompt) else {
            return Flow::Continue;
        };
        exchange.extensions.insert(Looked);
        let route = exchange.route_id.clone();
        let Some(sender) = subrequests(exchange) else {
            self.store.caches.count(&route, "miss");
            return Flow::Continue;
        };
        let vector = match self.embedder.embed(&sender, &text).await {
            Ok(vector) => vector,
            Err(reason) => {
                tracing::warn!(route = &*route, reason = %reason, "prompt not embedded; answered as a cache miss");
                self.store.caches.count(&route, "miss");
                return Flow::Continue;
            }
        };
        let scope = self.scope(&request, &path, exchange);
        let neighbours = match self.vectors.nearest(&scope, &vector, self.threshold, CANDIDATES).resolve().await {
            Ok(neighbours) => neighbours,
            Err(err) => {
                tracing::warn!(route = &*route, error = %err, "semantic cache search failed; answered as a miss");
                Vec::new()
            }
        };
        for neighbour in neighbours {
            let key = self.answer_key(exchange, &request, &path, &neighbour.id);
            let Some(stored) = self.store.get(&key).await else { continue };
            if let Some(mut answer) = cache::answer_from(&stored, &request, exchange) {
                if let Ok(value) = HeaderValue::from_str(&format!("{:.4}", neighbour.similarity)) {
                    answer.headers_mut().insert(SIMILARITY_HEADER, value);
                }
                self.store.caches.count(&route, "hit");
                return Flow::Respond(answer);
            }
        }
        self.store.caches.count(&route, "miss");
        let mut digest = Sha256::new();
        digest.update(scope.as_bytes());
        digest.update(b"\0");
        digest.update(text.as_bytes());
        let id = cache::digest_hex(digest);
        let key = self.answer_key(exchange, &request, &path, &id);
        let (store, vectors, vector) = (self.store.clone(), self.vectors.clone(), Arc::<[f32]>::from(vector));
        cache::add_tap(
            exchange,
            Arc::new(move |answer: &Value| {
                let Some(record) = store.entry(answer) else { return };
                let (vectors, scope, id, vector, ttl) =
                    (vectors.clone(), scope.clone(), id.clone(), vector.clone(), store.ttl);
                store.put(&key, record, move || vectors.add(&scope, &id, &vector, ttl));
            }),
        );
        Flow::Continue
    }
}

impl Policy for CompiledAiSemanticCache {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: true, log: false }
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn sends_subrequests(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        prompt::has_prompt(request).then_some(self.max_request_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        // Embeddings requests have no answer text to reuse.
        let Some(read) = cache::read_request(request, exchange).filter(|read| read.operation != "embeddings") else {
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
