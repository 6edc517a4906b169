#![doc = include_str!("ai_proxy.md")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use gantry_config::{ConfigErrors, Duration, FieldPath, Secret};
use gantry_policy_api::response_body::stream_response_body;
use gantry_policy_api::subrequest::{subrequests, ChunkStream, StreamingSubrequest};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestBody, RequestParts, Stage,
    Validate,
};
use http::header::{HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai::{error_response, json_response};
use super::providers::{self, anthropic, ChatRequest, StreamTranslator};
use super::sse;

/// Settings of `ai_proxy`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The model names clients ask for, each served by one or more targets; at least one.
    pub models: Vec<ModelConfig>,
    /// Time limit of one try of one target, up to the response head (and, for an answer that
    /// is not streamed, its whole body); more than 0.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Longest wait for the next bytes of a streamed answer; more than 0. A stream silent
    /// for longer is broken off.
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
    /// Largest client request body, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Largest answer read whole (not streamed) from a provider, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

/// One model name and the targets serving it.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients put in `model`; unique.
    pub name: String,
    /// Where requests for it go: one is picked by weight, the others follow in weighted order
    /// when it fails (no connection, a timeout, 429 or 5xx).
    pub targets: Vec<TargetConfig>,
}

/// One provider deployment of a model.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The API format the target speaks.
    pub provider: Provider,
    /// Id of the upstream (with its TLS, pool and timeouts) the provider is reached through.
    pub upstream: String,
    /// The provider's model name.
    pub model: String,
    /// The provider's API key, sent as `Authorization: Bearer` (`openai`) or `x-api-key`
    /// (`anthropic`), or in `auth_header` when set.
    #[serde(default)]
    pub api_key: Option<Secret<String>>,
    /// The header carrying `api_key` as it is (`api-key` for Azure OpenAI).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// The path the provider's API starts at: `/v1` for OpenAI and Anthropic, `/openai/v1`
    /// for Groq, `/v1` for vLLM and Ollama.
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// Share of the requests this target gets first; 0 makes it a fallback only.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `max_tokens` sent to Anthropic when the client gives none (Anthropic requires it).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
}

/// The API format of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI's Chat Completions, and every API compatible with it.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_request_bytes() -> u64 {
    1024 * 1024
}

fn default_max_response_bytes() -> u64 {
    8 * 1024 * 1024
}

fn default_base_path() -> String {
    "/v1".to_owned()
}

fn default_weight() -> u32 {
    1
}

fn default_max_tokens() -> u64 {
    4096
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.models.is_empty() {
            errors.push(path.key("models"), "list at least one model");
        }
        for (key, value) in [("timeout", self.timeout), ("stream_idle_timeout", self.stream_idle_timeout)] {
            if value.get().is_zero() {
                errors.push(path.key(key), "must be more than 0");
            }
        }
        for (key, value) in
            [("max_request_bytes", self.max_request_bytes), ("max_response_bytes", self.max_response_bytes)]
        {
            if value == 0 {
                errors.push(path.key(key), "must be at least 1");
            }
        }
        let mut names = HashSet::new();
        for (index, model) in self.models.iter().enumerate() {
            let at = path.key("models").index(index);
            if model.name.is_empty() {
                errors.push(at.key("name"), "must not be empty");
            } else if !names.insert(model.name.as_str()) {
                errors.push(at.key("name"), format!("`{}` names another model too", model.name));
            }
            if model.targets.is_empty() {
                errors.push(at.key("targets"), "list at least one target");
            } else if model.targets.iter().all(|target| target.weight == 0) {
                errors.push(at.key("targets"), "at least one target needs a weight above 0");
            }
            for (index, target) in model.targets.iter().enumerate() {
                let at = at.key("targets").index(index);
                if target.model.is_empty() {
                    errors.push(at.key("model"), "must not be empty");
                }
                if !target.base_path.starts_with('/') || target.base_path.contains(['?', '#']) {
                    errors.push(at.key("base_path"), format!("`{}` is not a path", target.base_path));
                }
                if let Some(header) = &target.auth_header {
                    if HeaderName::from_bytes(header.as_bytes()).is_err() {
                        errors.push(at.key("auth_header"), format!("`{header}` is not a header name"));
                    }
                }
                if let Some(key) = &target.api_key {
                    if HeaderValue::from_str(key.expose()).is_err() {
                        errors.push(at.key("api_key"), "must be text that fits in a header");
                    }
                }
                if target.default_max_tokens == 0 {
                    errors.push(at.key("default_max_tokens"), "must be at least 1");
                }
            }
        }
    }
}

/// Factory of the `ai_proxy` policy.
#[derive(Debug)]
pub struct AiProxy;

impl PolicyFactory for AiProxy {
    const NAME: &'static str = "ai_proxy";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("ai_proxy.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let models = ConfigErrors::collect(|errors| {
            config
                .models
                .iter()
                .enumerate()
                .map(|(index, model)| {
                    let targets = model
                        .targets
                        .iter()
                        .enumerate()
                        .map(|(at, target)| {
                            let at = path.key("models").index(index).key("targets").index(at);
                            compile_target(target, &at, context, errors)
                        })
                        .collect();
                    CompiledModel { name: model.name.clone(), targets }
                })
                .collect::<Vec<_>>()
        })?;
        Ok(Arc::new(CompiledAiProxy {
            models,
            timeout: config.timeout.get(),
            stream_idle_timeout: config.stream_idle_timeout.get(),
            max_request_bytes: config.max_request_bytes,
            max_response_bytes: usize::try_from(config.max_response_bytes).unwrap_or(usize::MAX),
            created: super::openai::now(),
        }))
    }
}

fn compile_target(
    target: &TargetConfig,
    path: &FieldPath,
    context: &BuildContext<'_>,
    errors: &mut ConfigErrors,
) -> CompiledTarget {
    if !context.spec.upstreams.iter().any(|upstream| upstream.id == target.upstream) {
        let known: Vec<&str> = context.spec.upstreams.iter().map(|upstream| upstream.id.as_str()).collect();
        errors.push(
            path.key("upstream"),
            format!("unknown upstream `{}`; configured upstreams: {}", target.upstream, known.join(", ")),
        );
    }
    let auth = target.api_key.as_ref().and_then(|key| {
        let (name, value) = match (&target.auth_header, target.provider) {
            (Some(header), _) => (HeaderName::from_bytes(header.as_bytes()).ok()?, key.expose().clone()),
            (None, Provider::Openai) => (http::header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            (None, Provider::Anthropic) => (HeaderName::from_static("x-api-key"), key.expose().clone()),
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    });
    let suffix = match target.provider {
        Provider::Openai => "/chat/completions",
        Provider::Anthropic => "/messages",
    };
    CompiledTarget {
        provider: target.provider,
        upstream: Arc::from(target.upstream.as_str()),
        model: target.model.clone(),
        auth,
        path: format!("{}{suffix}", target.base_path.trim_end_matches('/')),
        weight: target.weight,
        default_max_tokens: target.default_max_tokens,
        cooling_until: AtomicU64::new(0),
    }
}

#[derive(Debug)]
struct CompiledModel {
    name: String,
    targets: Vec<CompiledTarget>,
}

#[derive(Debug)]
struct CompiledTarget {
    provider: Provider,
    upstream: Arc<str>,
    model: String,
    auth: Option<(HeaderName, HeaderValue)>,
    path: String,
    weight: u32,
    default_max_tokens: u64,
    /// Milliseconds since the policy's epoch before which the target asked not to be called
    /// (`Retry-After` on a 429 or 503).
    cooling_until: AtomicU64,
}

/// Runs per request.
#[derive(Debug)]
struct CompiledAiProxy {
    models: Vec<CompiledModel>,
    timeout: std::time::Duration,
    stream_idle_timeout: std::time::Duration,
    max_request_bytes: u64,
    max_response_bytes: usize,
    created: u64,
}

/// Why one target gave no answer to pass on.
enum Failure {
    /// No answer (no connection, a timeout, a broken body).
    Unanswered(StatusCode, String),
    /// An error answer, already in OpenAI's shape.
    Answered(StatusCode, Value),
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_millis() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The targets in the order they are tried: weighted random without replacement, targets of
/// weight 0 last, targets still cooling off after a `Retry-After` left out.
fn order(targets: &[CompiledTarget], mut random: impl FnMut(u64) -> u64) -> Vec<&CompiledTarget> {
    let now = now_millis();
    let mut left: Vec<&CompiledTarget> =
        targets.iter().filter(|target| target.cooling_until.load(Ordering::Relaxed) <= now).collect();
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|target| u64::from(target.weight)).sum();
        let at = if total == 0 {
            0
        } else {
            let mut pick = random(total);
            left.iter()
                .position(|target| {
                    let weight = u64::from(target.weight);
                    if pick < weight {
                        true
                    } else {
                        pick -= weight;
                        false
                    }
                })
                .unwrap_or(0)
        };
        ordered.push(left.remove(at));
    }
    ordered
}

/// Whole seconds until the first target that asked for a wait (`Retry-After`) may be called
/// again, if any is waiting.
fn seconds_until_one_is_back(targets: &[CompiledTarget]) -> Option<u64> {
    let now = now_millis();
    targets
        .iter()
        .map(|target| target.cooling_until.load(Ordering::Relaxed))
        .filter(|&until| until > now)
        .min()
        .map(|until| (until - now).div_ceil(1000))
}

fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % bound.max(1)
}

impl CompiledAiProxy {
    fn models(&self) -> PolicyResponse {
        let data: Vec<Value> = self
            .models
            .iter()
            .map(|model| json!({ "id": model.name, "object": "model", "created": self.created, "owned_by": "gantry" }))
            .collect();
        json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
    }

    async fn chat(&self, body: Option<Bytes>, exchange: &Exchange) -> Flow {
        let Some(body) = body else {
            return Flow::Respond(error_response(
                StatusCode::BAD_REQUEST,
                "the request has no body",
                "invalid_request_error",
                None,
            ));
        };
        let request: ChatRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => {
                let message = format!("the body is not a JSON object: {err}");
                return Flow::Respond(error_response(StatusCode::BAD_REQUEST, &message, "invalid_request_error", None));
            }
        };
        let Some(name) = request.get("model").and_then(Value::as_str) else {
            return Flow::Respond(error_response(
                StatusCode::BAD_REQUEST,
                "`model` is required",
                "invalid_request_error",
                None,
            ));
        };
        let Some(model) = self.models.iter().find(|model| model.name == name) else {
            let message = format!("The model `{name}` does not exist");
            return Flow::Respond(error_response(
                StatusCode::NOT_FOUND,
                &message,
                "invalid_request_error",
                Some("model_not_found"),
            ));
        };
        let Some(sender) = subrequests(exchange) else {
            return Flow::Respond(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "subrequests are not available here",
                "server_error",
                None,
            ));
        };
        let streamed = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let mut last = Failure::Unanswered(StatusCode::SERVICE_UNAVAILABLE, "every target is cooling off".to_owned());
        for target in order(&model.targets, random_below) {
            let body = match target.provider {
                Provider::Openai => providers::openai::request(request.clone(), &target.model),
                Provider::Anthropic => match anthropic::request(&request, &target.model, target.default_max_tokens) {
                    Ok(body) => body,
                    Err(message) => {
                        return Flow::Respond(error_response(
                            StatusCode::BAD_REQUEST,
                            &message,
                            "invalid_request_error",
                            None,
                        ));
                    }
                },
            };
            match self.try_target(target, &sender, Bytes::from(body), streamed, &request).await {
                Ok(answer) => return Flow::Respond(answer),
                Err(failure) => {
                    match &failure {
                        Failure::Unanswered(_, reason) => {
                            tracing::debug!(upstream = &*target.upstream, reason = %reason, "AI target gave no answer");
                        }
                        Failure::Answered(status, _) => {
                            tracing::debug!(upstream = &*target.upstream, status = status.as_u16(), "AI target failed");
                        }
                    }
                    last = failure;
                }
            }
        }
        let mut response = match last {
            Failure::Unanswered(status, reason) => {
                error_response(status, &format!("no provider answered: {reason}"), "server_error", None)
            }
            Failure::Answered(status, body) => json_response(status, &body),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            if let Some(seconds) = seconds_until_one_is_back(&model.targets) {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
        }
        Flow::Respond(response)
    }

    /// One try of one target: the client's answer, or why the next target is tried. Other
    /// error answers (400, 401, ...) are the client's answer too.
    async fn try_target(
        &self,
        target: &CompiledTarget,
        sender: &gantry_policy_api::subrequest::Subrequests,
        body: Bytes,
        streamed: bool,
        request: &ChatRequest,
    ) -> Result<PolicyResponse, Failure> {
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(target.path.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, if streamed { "text/event-stream" } else { "application/json" });
        if target.provider == Provider::Anthropic {
            builder = builder.header("anthropic-version", anthropic::VERSION);
        }
        if let Some((name, value)) = &target.auth {
            builder = builder.header(name, value.clone());
        }
        let head = builder
            .body(())
            .map_err(|err| Failure::Unanswered(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
            .into_parts()
            .0;
        let opened = sender.open(StreamingSubrequest {
            upstream: target.upstream.clone(),
            head,
            body,
            // Providers are third parties: they get the gateway's key, not the client's address.
            forwarding_headers: false,
        });
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, opened).await {
            Err(_) => {
                return Err(Failure::Unanswered(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no answer within {:?}", self.timeout),
                ));
            }
            Ok(Err(err)) => return Err(Failure::Unanswered(StatusCode::BAD_GATEWAY, err.to_string())),
            Ok(Ok(response)) => response,
        };
        let (parts, chunks) = response.into_parts();
        let status = parts.status;
        if !status.is_success() {
            let read = tokio::time::timeout_at(deadline, read_whole(chunks, self.max_response_bytes)).await;
            let error_body = read.ok().and_then(Result::ok).unwrap_or_default();
            let (status, body) = match target.provider {
                Provider::Openai => providers::openai::error(status, &error_body),
                Provider::Anthropic => anthropic::error(status, &error_body),
            };
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                if let Some(seconds) = retry_after(&parts.headers) {
                    target.cooling_until.store(now_millis().saturating_add(seconds * 1000), Ordering::Relaxed);
                }
                return Err(Failure::Answered(status, body));
            }
            return Ok(json_response(status, &body));
        }
        if streamed {
            let translator: Box<dyn StreamTranslator> = match target.provider {
                Provider::Openai => Box::<providers::openai::Passthrough>::default(),
                Provider::Anthropic => {
                    let include_usage = request
                        .get("stream_options")
                        .and_then(|options| options.get("include_usage"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    Box::new(anthropic::Stream::new(&target.model, include_usage))
                }
            };
            let mut response = PolicyResponse::new(Bytes::new());
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response.extensions_mut().insert(StreamBody(Arc::new(std::sync::Mutex::new(Some(translate(
                chunks,
                translator,
                self.stream_idle_timeout,
            ))))));
            return Ok(response);
        }
        let whole = match tokio::time::timeout_at(deadline, read_whole(chunks, self.max_response_bytes)).await {
            Err(_) => {
                return Err(Failure::Unanswered(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no whole answer within {:?}", self.timeout),
                ));
            }
            Ok(Err(reason)) => return Err(Failure::Unanswered(StatusCode::BAD_GATEWAY, reason)),
            Ok(Ok(whole)) => whole,
        };
        match target.provider {
            Provider::Openai => {
                let mut response = PolicyResponse::new(whole);
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(response)
            }
            Provider::Anthropic => match anthropic::response(&whole) {
                Ok(completion) => Ok(json_response(StatusCode::OK, &completion)),
                Err(reason) => Err(Failure::Unanswered(StatusCode::BAD_GATEWAY, reason)),
            },
        }
    }
}

/// Carries a streamed body from the try that opened it to the hook that answers with it.
#[derive(Clone)]
struct StreamBody(Arc<std::sync::Mutex<Option<ChunkStream>>>);

/// `Retry-After` in seconds (delay-seconds; an HTTP date counts from now).
fn retry_after(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).map_or(0, |left| left.as_secs()))
}

async fn read_whole(mut chunks: ChunkStream, limit: usize) -> Result<Bytes, String> {
    let mut whole = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if whole.len() + chunk.len() > limit {
            return Err(format!("the answer is longer than {limit} bytes"));
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(whole))
}

/// The client's stream: each upstream chunk's complete events translated and sent on at once.
fn translate(upstream: ChunkStream, translator: Box<dyn StreamTranslator>, idle: std::time::Duration) -> ChunkStream {
    let state = (upstream, sse::Parser::default(), translator, false);
    Box::pin(futures_util::stream::unfold(state, move |(mut upstream, mut parser, mut translator, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let Ok(next) = tokio::time::timeout(idle, upstream.next()).await else {
                let reason = format!("the provider sent nothing for {idle:?}");
                return Some((Err(reason), (upstream, parser, translator, true)));
            };
            match next {
                Some(Ok(bytes)) => {
                    let out: Vec<u8> = parser
                        .feed(&bytes)
                        .iter()
                        .flat_map(|event| translator.event(&event.event, &event.data))
                        .collect();
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), (upstream, parser, translator, false)));
                    }
                }
                Some(Err(reason)) => return Some((Err(reason), (upstream, parser, translator, true))),
                None => {
                    let out = translator.end();
                    return Some((Ok(Bytes::from(out)), (upstream, parser, translator, true)));
                }
            }
        }
    }))
}

impl Policy for CompiledAiProxy {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn answers_every_request(&self) -> bool {
        true
    }

    fn sends_subrequests(&self) -> bool {
        true
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        (request.method == Method::POST).then_some(self.max_request_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let path = request.uri.path();
        if path.ends_with("/models") && request.method == Method::GET {
            return Hook::Done(Flow::Respond(self.models()));
        }
        if !path.ends_with("/chat/completions") {
            let message = format!("no AI endpoint at {path}; this route serves /v1/chat/completions and /v1/models");
            return Hook::Done(Flow::Respond(error_response(
                StatusCode::NOT_FOUND,
                &message,
                "invalid_request_error",
                None,
            )));
        }
        if request.method != Method::POST {
            return Hook::Done(Flow::Respond(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST",
                "invalid_request_error",
                None,
            )));
        }
        let body = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone());
        Hook::Wait(Box::pin(async move {
            let mut flow = self.chat(body, exchange).await;
            if let Flow::Respond(response) = &mut flow {
                let streamed = response.extensions_mut().remove::<StreamBody>();
                if let Some(chunks) = streamed.and_then(|slot| slot.0.lock().ok().and_then(|mut taken| taken.take())) {
                    stream_response_body(exchange, chunks);
                }
            }
            flow
        }))
    }
}

#[cfg(test)]
mod tests;
