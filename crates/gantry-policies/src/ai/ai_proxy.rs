#![doc = include_str!("ai_proxy.md")]

mod answer;
mod target;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
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

use gantry_policy_api::ai::AiExchange;

use self::answer::{
    chat_as_completion, completion_as_chat, filter_whole, translate, usage_of, written_text, ClientStream, Price,
    UsageReport,
};
use self::target::{backoff, order, random_below, seconds_until_one_is_back, Circuit, CompiledTarget, TargetHealth};
use super::openai::{error_response, json_response};
pub use super::providers::Provider;
use super::providers::{self, ChatRequest, Operation, TargetInfo};
use super::tokens;
use super::{read_whole, AnswerFilter, AnswerFilters, AnswerTap, AnswerTaps};

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
    /// Tries after a failure, and the backoff between rounds.
    #[serde(default)]
    pub retries: RetryConfig,
    /// Each target's circuit breaker.
    #[serde(default)]
    pub circuit_breaker: CircuitConfig,
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
    /// The provider's API key, sent as `Authorization: Bearer` (OpenAI and compatible
    /// providers) or `x-api-key` (`anthropic`), or in `auth_header` when set.
    #[serde(default)]
    pub api_key: Option<Secret<String>>,
    /// The header carrying `api_key` as it is, instead of the provider's own.
    #[serde(default)]
    pub auth_header: Option<String>,
    /// The path the provider's API starts at; the provider's own (`/v1`, `/openai/v1` for
    /// Groq, ...) when absent.
    #[serde(default)]
    pub base_path: Option<String>,
    /// Share of the requests this target gets first; 0 makes it a fallback only.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `max_tokens` sent to providers that require one when the client gives none.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Price of a million tokens, for the cost of each exchange.
    #[serde(default)]
    pub price: Option<PriceConfig>,
    /// Project, location and credentials of a `vertex_ai` target (required there).
    #[serde(default)]
    pub vertex: Option<providers::vertex::VertexConfig>,
    /// `api_version` and `deployment` of an `azure_openai` target.
    #[serde(default)]
    pub azure: Option<providers::azure::AzureConfig>,
    /// Region and credentials of a `bedrock` target (required there).
    #[serde(default)]
    pub bedrock: Option<providers::bedrock::BedrockConfig>,
}

/// Price of a million tokens, in any currency unit (the same for every target of a policy,
/// so costs add up).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// A million prompt tokens.
    pub input: f64,
    /// A million answer tokens.
    pub output: f64,
}

/// Tries after the first, and the wait before a target is tried again.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries after the first, each on the next target in order, around again when all were
    /// tried; absent: each target once.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Wait before trying a target already tried, doubled each round, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// Longest wait between two rounds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { attempts: None, backoff: default_backoff(), max_backoff: default_max_backoff() }
    }
}

/// When a failing target is left out.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures (no answer, 429, 5xx) that open the target's circuit; 0 never does.
    #[serde(default = "default_circuit_failures")]
    pub failures: u32,
    /// How long an open circuit keeps the target out before one request probes it.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self { failures: default_circuit_failures(), open_for: default_open_for() }
    }
}

fn default_backoff() -> Duration {
    Duration::from_millis(200)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(2)
}

fn default_circuit_failures() -> u32 {
    5
}

fn default_open_for() -> Duration {
    Duration::from_secs(30)
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
        for (at, value) in [
            (path.key("timeout"), self.timeout),
            (path.key("stream_idle_timeout"), self.stream_idle_timeout),
            (path.key("circuit_breaker").key("open_for"), self.circuit_breaker.open_for),
        ] {
            if value.get().is_zero() {
                errors.push(at, "must be more than 0");
            }
        }
        if self.retries.max_backoff.get() < self.retries.backoff.get() {
            errors.push(path.key("retries").key("max_backoff"), "must be at least `backoff`");
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
                validate_target(target, &at.key("targets").index(index), errors);
            }
        }
    }
}

fn validate_target(target: &TargetConfig, at: &FieldPath, errors: &mut ConfigErrors) {
    if target.model.is_empty() {
        errors.push(at.key("model"), "must not be empty");
    }
    if let Some(base_path) = &target.base_path {
        if !(base_path.is_empty() || base_path.starts_with('/')) || base_path.contains(['?', '#']) {
            errors.push(at.key("base_path"), format!("`{base_path}` is not a path"));
        }
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
    providers::vertex::validate(target.provider, target.vertex.as_ref(), at, errors);
    providers::azure::validate(target.provider, target.azure.as_ref(), at, errors);
    providers::bedrock::validate(target.provider, target.bedrock.as_ref(), target.api_key.is_some(), at, errors);
    if let Some(price) = target.price {
        for (key, value) in [("input", price.input), ("output", price.output)] {
            if !value.is_finite() || value < 0.0 {
                errors.push(at.key("price").key(key), "must be a number of at least 0");
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
                    CompiledModel { name: Arc::from(model.name.as_str()), targets }
                })
                .collect::<Vec<_>>()
        })?;
        let timeout = config.timeout.get();
        Ok(Arc::new(CompiledAiProxy {
            models,
            timeout,
            stream_idle_timeout: config.stream_idle_timeout.get(),
            max_request_bytes: config.max_request_bytes,
            max_response_bytes: usize::try_from(config.max_response_bytes).unwrap_or(usize::MAX),
            retries: config.retries.attempts,
            backoff: config.retries.backoff.get(),
            max_backoff: config.retries.max_backoff.get(),
            circuit: Circuit {
                failures: config.circuit_breaker.failures,
                open_for: config.circuit_breaker.open_for.get(),
                probe_for: timeout,
            },
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
    let upstream = context.spec.upstreams.iter().find(|upstream| upstream.id == target.upstream);
    providers::bedrock::check_upstream(target.provider, upstream, &path.key("upstream"), errors);
    let adapter = target.provider.adapter();
    let auth = target.api_key.as_ref().and_then(|key| {
        let (name, value) = match &target.auth_header {
            Some(header) => (HeaderName::from_bytes(header.as_bytes()).ok()?, key.expose().clone()),
            None => adapter.auth(key.expose()),
        };
        Some((name, providers::secret_header(&value)?))
    });
    let base_path = target.base_path.as_deref().unwrap_or_else(|| target.provider.default_base_path());
    CompiledTarget {
        info: TargetInfo {
            provider: target.provider,
            model: target.model.clone(),
            base_path: base_path.trim_end_matches('/').to_owned(),
            default_max_tokens: target.default_max_tokens,
            vertex: providers::vertex::VertexAccess::load(target.vertex.as_ref(), &path.key("vertex"), errors),
            azure: (target.provider == Provider::AzureOpenai)
                .then(|| providers::azure::AzureApi::of(target.azure.as_ref(), &target.model)),
            bedrock: providers::bedrock::BedrockAccess::of(target.provider, target.bedrock.as_ref()),
        },
        adapter,
        upstream: Arc::from(target.upstream.as_str()),
        auth,
        weight: target.weight,
        price: target.price.map(|price| Price { input: price.input, output: price.output }),
        health: TargetHealth::default(),
    }
}

#[derive(Debug)]
struct CompiledModel {
    name: Arc<str>,
    targets: Vec<CompiledTarget>,
}

/// Runs per request.
#[derive(Debug)]
struct CompiledAiProxy {
    models: Vec<CompiledModel>,
    timeout: std::time::Duration,
    stream_idle_timeout: std::time::Duration,
    max_request_bytes: u64,
    max_response_bytes: usize,
    retries: Option<u32>,
    backoff: std::time::Duration,
    max_backoff: std::time::Duration,
    circuit: Circuit,
    created: u64,
}

/// Why one target gave no answer to pass on.
enum Failure {
    /// No answer (no connection, a timeout, a broken body).
    Unanswered(StatusCode, String),
    /// An error answer, already in OpenAI's shape.
    Answered(StatusCode, Value),
}

/// One client request, read and checked.
struct AiRequest<'a> {
    operation: Operation,
    body: Arc<ChatRequest>,
    model: &'a CompiledModel,
    streamed: bool,
    /// The client wants the usage chunk at the end of a stream.
    include_usage: bool,
}

fn invalid(status: StatusCode, message: &str) -> Flow {
    Flow::Respond(error_response(status, message, "invalid_request_error", None))
}

impl CompiledAiProxy {
    fn models(&self) -> PolicyResponse {
        let data: Vec<Value> = self
            .models
            .iter()
            .map(
                |model| json!({ "id": &*model.name, "object": "model", "created": self.created, "owned_by": "gantry" }),
            )
            .collect();
        json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
    }

    /// The request, or the client's error answer.
    fn read(&self, operation: Operation, body: Option<Bytes>) -> Result<AiRequest<'_>, Box<Flow>> {
        let body = body.ok_or_else(|| invalid(StatusCode::BAD_REQUEST, "the request has no body"))?;
        let body: ChatRequest = serde_json::from_slice(&body)
            .map_err(|err| invalid(StatusCode::BAD_REQUEST, &format!("the body is not a JSON object: {err}")))?;
        let name = body
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(StatusCode::BAD_REQUEST, "`model` is required"))?;
        let model = self.models.iter().find(|model| &*model.name == name).ok_or_else(|| {
            let message = format!("The model `{name}` does not exist");
            Flow::Respond(error_response(
                StatusCode::NOT_FOUND,
                &message,
                "invalid_request_error",
                Some("model_not_found"),
            ))
        })?;
        let streamed =
            operation != Operation::Embeddings && body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(AiRequest { operation, body: Arc::new(body), model, streamed, include_usage })
    }

    async fn serve(&self, operation: Operation, body: Option<Bytes>, exchange: &mut Exchange) -> Flow {
        let request = match self.read(operation, body) {
            Ok(request) => request,
            Err(answer) => return *answer,
        };
        let Some(sender) = subrequests(exchange) else {
            return Flow::Respond(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "subrequests are not available here",
                "server_error",
                None,
            ));
        };
        let ai = AiExchange::of(&mut exchange.extensions);
        ai.set_request_model(&request.model.name);
        let filters = exchange.extensions.get::<AnswerFilters>().map(|filters| filters.0.clone()).unwrap_or_default();
        let taps = exchange.extensions.get::<AnswerTaps>().map(|taps| taps.0.clone()).unwrap_or_default();
        let targets = &request.model.targets;
        // Embeddings cannot be made of chats: targets without them are not tried.
        let able = |target: &CompiledTarget| operation != Operation::Embeddings || target.adapter.serves(operation);
        if !targets.iter().any(able) {
            let message = format!("The model `{}` does not serve {}", request.model.name, operation.name());
            return invalid(StatusCode::BAD_REQUEST, &message);
        }
        let ordered: Vec<&CompiledTarget> =
            order(targets, &self.circuit, random_below).into_iter().filter(|target| able(target)).collect();
        let tries = self
            .retries
            .map_or(ordered.len(), |retries| usize::try_from(retries).unwrap_or(usize::MAX).saturating_add(1));
        let mut last =
            Failure::Unanswered(StatusCode::SERVICE_UNAVAILABLE, "every target is left out for now".to_owned());
        // Bounded so a large `attempts` cannot keep a request for ever.
        for attempt in 0..tries.min(ordered.len().saturating_mul(64)) {
            let target = ordered[attempt % ordered.len()];
            let round = attempt / ordered.len();
            if round > 0 && attempt % ordered.len() == 0 {
                tokio::time::sleep(backoff(u32::try_from(round).unwrap_or(u32::MAX), self.backoff, self.max_backoff))
                    .await;
            }
            if round > 0 && target.health.is_blocked() {
                // It asked for a longer wait (`Retry-After`), or its circuit opened meanwhile.
                continue;
            }
            let outcome = self.try_target(target, &sender, &request, &ai, &filters, &taps).await;
            match outcome {
                Ok(answer) => return Flow::Respond(answer),
                Err(Attempt::ClientError(answer)) => return Flow::Respond(answer),
                Err(Attempt::Failed(failure)) => {
                    match &failure {
                        Failure::Unanswered(_, reason) => {
                            tracing::debug!(upstream = &*target.upstream, reason = %reason, "AI target gave no answer");
                        }
                        Failure::Answered(status, _) => {
                            tracing::debug!(upstream = &*target.upstream, status = status.as_u16(), "AI target failed");
                        }
                    }
                    target.health.failed(&self.circuit);
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
            if let Some(seconds) = seconds_until_one_is_back(targets) {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
        }
        Flow::Respond(response)
    }

    /// One try of one target: the client's answer, or why the next target is tried.
    async fn try_target(
        &self,
        target: &CompiledTarget,
        sender: &gantry_policy_api::subrequest::Subrequests,
        request: &AiRequest<'_>,
        ai: &AiExchange,
        filters: &[Arc<dyn AnswerFilter>],
        taps: &[AnswerTap],
    ) -> Result<PolicyResponse, Attempt> {
        let adapter = target.adapter;
        // A completion asked of a provider that only chats goes as a chat of one message.
        let as_chat = request.operation == Operation::Completion && !adapter.serves(Operation::Completion);
        let (operation, converted) = if as_chat {
            match completion_as_chat(&request.body) {
                Ok(chat) => (Operation::Chat, Some(chat)),
                Err(message) => {
                    return Err(Attempt::ClientError(error_response(
                        StatusCode::BAD_REQUEST,
                        &message,
                        "invalid_request_error",
                        None,
                    )))
                }
            }
        } else {
            (request.operation, None)
        };
        let body = converted.as_ref().unwrap_or(&*request.body);
        let upstream_body = adapter.request(&target.info, operation, body, request.streamed).map_err(|message| {
            Attempt::ClientError(error_response(StatusCode::BAD_REQUEST, &message, "invalid_request_error", None))
        })?;
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(adapter.path(&target.info, operation, request.streamed))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, if request.streamed { "text/event-stream" } else { "application/json" });
        for (name, value) in adapter.headers() {
            builder = builder.header(*name, *value);
        }
        if let Some((name, value)) = &target.auth {
            builder = builder.header(name, value.clone());
        }
        let failed = |status: StatusCode, reason: String| Attempt::Failed(Failure::Unanswered(status, reason));
        let mut head =
            builder.body(()).map_err(|err| failed(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?.into_parts().0;
        adapter
            .authorize(&target.info, &mut head, &upstream_body)
            .await
            .map_err(|reason| failed(StatusCode::BAD_GATEWAY, reason))?;
        let opened = sender.open(StreamingSubrequest {
            upstream: target.upstream.clone(),
            head,
            body: Bytes::from(upstream_body),
            // Providers are third parties: they get the gateway's key, not the client's address.
            forwarding_headers: false,
        });
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, opened).await {
            Err(_) => return Err(failed(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {:?}", self.timeout))),
            Ok(Err(err)) => return Err(failed(StatusCode::BAD_GATEWAY, err.to_string())),
            Ok(Ok(response)) => response,
        };
        let (parts, chunks) = response.into_parts();
        let status = parts.status;
        if !status.is_success() {
            let read = tokio::time::timeout_at(deadline, read_whole(chunks, self.max_response_bytes)).await;
            let error_body = read.ok().and_then(Result::ok).unwrap_or_default();
            let (status, body) = adapter.error_with_headers(status, &parts.headers, &error_body);
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                if let Some(seconds) = retry_after(&parts.headers).or_else(|| adapter.retry_delay(&error_body)) {
                    target.health.block_for(std::time::Duration::from_secs(seconds));
                }
                return Err(Attempt::Failed(Failure::Answered(status, body)));
            }
            // 400, 401, 404...: the next target would refuse the same request the same way.
            target.health.succeeded();
            return Err(Attempt::ClientError(json_response(status, &body)));
        }
        let report = UsageReport {
            exchange: ai.clone(),
            operation: request.operation,
            provider: target.info.provider.system(),
            request_model: request.model.name.clone(),
            response_model: target.info.model.clone(),
            price: target.price,
            prompt: request.body.clone(),
        };
        if request.streamed {
            target.health.succeeded();
            let client = ClientStream::new(
                adapter.decoder(),
                adapter.stream(&target.info, operation),
                as_chat,
                request.include_usage,
                filters.to_vec(),
                report,
            )
            .with_taps(taps.to_vec());
            let mut response = PolicyResponse::new(Bytes::new());
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response.extensions_mut().insert(StreamBody(Arc::new(std::sync::Mutex::new(Some(translate(
                chunks,
                client,
                self.stream_idle_timeout,
            ))))));
            return Ok(response);
        }
        let whole = match tokio::time::timeout_at(deadline, read_whole(chunks, self.max_response_bytes)).await {
            Err(_) => {
                return Err(failed(StatusCode::GATEWAY_TIMEOUT, format!("no whole answer within {:?}", self.timeout)));
            }
            Ok(Err(reason)) => return Err(failed(StatusCode::BAD_GATEWAY, reason)),
            Ok(Ok(whole)) => whole,
        };
        let mut answer = adapter
            .response(&target.info, operation, &whole)
            .map_err(|reason| failed(StatusCode::BAD_GATEWAY, reason))?;
        target.health.succeeded();
        if as_chat {
            answer = chat_as_completion(answer);
        }
        let reported = usage_of(&answer);
        let estimated_output = match reported {
            Some(_) => 0,
            None => {
                let mut counter = tokens::CompletionCounter::new(&target.info.model);
                counter.push(&written_text(&answer));
                counter.tokens()
            }
        };
        report.finish(reported, estimated_output);
        filter_whole(&mut answer, filters);
        for tap in taps {
            tap(&answer);
        }
        Ok(json_response(StatusCode::OK, &answer))
    }
}

/// How one try ended when it gave the client no answer of the provider's to pass on.
enum Attempt {
    /// The request itself is at fault: the client's answer, not retried elsewhere.
    ClientError(PolicyResponse),
    /// The target failed; the next one is tried.
    Failed(Failure),
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

/// The endpoint a request path asks for, by its last segments.
fn operation_of(path: &str) -> Option<Operation> {
    if path.ends_with("/chat/completions") {
        Some(Operation::Chat)
    } else if path.ends_with("/completions") {
        Some(Operation::Completion)
    } else if path.ends_with("/embeddings") {
        Some(Operation::Embeddings)
    } else {
        None
    }
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
        let Some(operation) = operation_of(path) else {
            let message = format!(
                "no AI endpoint at {path}; this route serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models"
            );
            return Hook::Done(invalid(StatusCode::NOT_FOUND, &message));
        };
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
            let mut flow = self.serve(operation, body, exchange).await;
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
