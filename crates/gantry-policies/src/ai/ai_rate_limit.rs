#![doc = include_str!("ai_rate_limit.md")]

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use futures_util::future::join_all;
use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::ai::{AiExchange, AiUsage};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestBody, RequestParts,
    ResponseParts, Stage, Validate,
};
use gantry_state::{CounterStore, Decision, Hit, StoreError};
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::openai::error_response;
use crate::traffic::limit_headers::{add_headers, whole_seconds, HeaderStyle, LegacyNames, LimitHeaders};
use crate::traffic::limit_key::{KeyPart, LimitKey};
use crate::traffic::limit_store::{attachment, check_name, store_key, OnStoreError, StoreFailures, StoreKind};

/// Settings of `ai_rate_limit`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Limits on every request of the key, whatever its model.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Limits on the requests for one model name (as clients write it in `model`), counted
    /// apart from the other models'.
    #[serde(default)]
    pub models: Vec<ModelLimits>,
    /// What requests are counted by: a list of `route`, `consumer`, `credential`, `ip`,
    /// `{header: <name>}` and (in a consumer group's policies) `consumer_group`.
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    /// `fixed_window` (a window starts with a key's first request) or `sliding_window`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Where counters are kept: `memory` or `redis`.
    #[serde(default)]
    pub store: StoreKind,
    /// What to do when the store fails: `allow` the request uncounted, or `deny` it with 503.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Which headers tell clients about the limits: `legacy` (`X-AI-RateLimit-*`), `ietf`
    /// (`RateLimit-Policy` and `RateLimit`), `both` or `none`.
    #[serde(default = "default_headers")]
    pub headers: HeaderStyle,
    /// The counters' name: policies of the same name share counters. Default: named after
    /// where the policy is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Largest request body read for its `model`, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
}

/// The limits of one model name.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// The model name clients ask for; unique.
    pub model: String,
    /// Its limits; at least one.
    pub limits: Vec<LimitConfig>,
}

/// What may be spent in one window: any of requests, tokens and cost, at least one.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The window: `30s`, `1m`, `1h`, `1d`.
    pub window: Duration,
    /// Requests per window, counted when they arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Input and output tokens together per window, charged once the answer is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Prompt tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Answer tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Spend per window, in the currency unit of `ai_proxy`'s prices (`5.0` for 5 dollars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// How a window counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// At most the limit per window; a window starts with a key's first request.
    #[default]
    FixedWindow,
    /// At most the limit in any window ending now, estimated from two fixed windows.
    SlidingWindow,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }

    fn hit<'a>(self, store: &'a dyn CounterStore, key: &'a str, window: StdDuration, limit: u64, cost: u64) -> Hit<'a> {
        match self {
            Algorithm::FixedWindow => store.fixed_window_hit(key, window, limit, cost),
            Algorithm::SlidingWindow => store.sliding_window_hit(key, window, limit, cost),
        }
    }
}

fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::Consumer]
}

fn default_headers() -> HeaderStyle {
    HeaderStyle::Legacy
}

fn default_max_request_bytes() -> u64 {
    1024 * 1024
}

/// Costs are counted in millionths of the currency unit, so the stores count whole numbers.
const COST_UNITS: f64 = 1_000_000.0;

/// The largest count: Redis scripts count in 64-bit floating point, exact up to 2^53.
const MAX_COUNT: u64 = 1_000_000_000_000_000;

/// The measures a window can limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Measure {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    Cost,
}

impl Measure {
    const ALL: [Measure; 5] =
        [Measure::Requests, Measure::Tokens, Measure::InputTokens, Measure::OutputTokens, Measure::Cost];

    fn field(self) -> &'static str {
        match self {
            Measure::Requests => "requests",
            Measure::Tokens => "tokens",
            Measure::InputTokens => "input_tokens",
            Measure::OutputTokens => "output_tokens",
            Measure::Cost => "cost",
        }
    }

    /// The limit of this measure in `limit`, in store units.
    fn limit_in(self, limit: &LimitConfig) -> Option<u64> {
        match self {
            Measure::Requests => limit.requests,
            Measure::Tokens => limit.tokens,
            Measure::InputTokens => limit.input_tokens,
            Measure::OutputTokens => limit.output_tokens,
            Measure::Cost => limit.cost.map(cost_units),
        }
    }

    /// What an answer's usage charges, in store units; requests are counted on arrival.
    fn charge(self, usage: &AiUsage) -> u64 {
        match self {
            Measure::Requests => 0,
            Measure::Tokens => usage.total_tokens(),
            Measure::InputTokens => usage.input_tokens,
            Measure::OutputTokens => usage.output_tokens,
            Measure::Cost => usage.cost.map_or(0, cost_units),
        }
    }

    fn legacy_names(self) -> LegacyNames {
        let [limit, remaining, reset] = match self {
            Measure::Requests => {
                ["x-ai-ratelimit-limit-requests", "x-ai-ratelimit-remaining-requests", "x-ai-ratelimit-reset-requests"]
            }
            Measure::Tokens => {
                ["x-ai-ratelimit-limit-tokens", "x-ai-ratelimit-remaining-tokens", "x-ai-ratelimit-reset-tokens"]
            }
            Measure::InputTokens => [
                "x-ai-ratelimit-limit-input-tokens",
                "x-ai-ratelimit-remaining-input-tokens",
                "x-ai-ratelimit-reset-input-tokens",
            ],
            Measure::OutputTokens => [
                "x-ai-ratelimit-limit-output-tokens",
                "x-ai-ratelimit-remaining-output-tokens",
                "x-ai-ratelimit-reset-output-tokens",
            ],
            Measure::Cost => {
                ["x-ai-ratelimit-limit-cost", "x-ai-ratelimit-remaining-cost", "x-ai-ratelimit-reset-cost"]
            }
        };
        LegacyNames {
            limit: HeaderName::from_static(limit),
            remaining: HeaderName::from_static(remaining),
            reset: HeaderName::from_static(reset),
        }
    }
}

/// Millionths of a currency unit, rounded up so that no priced answer is free.
fn cost_units(cost: f64) -> u64 {
    if !cost.is_finite() || cost <= 0.0 {
        return 0;
    }
    let units = (cost * COST_UNITS).ceil();
    if units >= MAX_COUNT as f64 {
        MAX_COUNT
    } else {
        units as u64
    }
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.limits.is_empty() && self.models.is_empty() {
            errors.push(path.key("limits"), "give at least one limit, in `limits` or `models`");
        }
        check_limits(&self.limits, &path.key("limits"), errors);
        let mut names = HashSet::new();
        for (index, model) in self.models.iter().enumerate() {
            let at = path.key("models").index(index);
            if model.model.is_empty() {
                errors.push(at.key("model"), "name the model");
            } else if !names.insert(model.model.as_str()) {
                errors.push(at.key("model"), format!("`{}` is already listed", model.model));
            }
            if model.limits.is_empty() {
                errors.push(at.key("limits"), "give at least one limit");
            }
            check_limits(&model.limits, &at.key("limits"), errors);
        }
        check_name(self.name.as_deref(), &path.key("name"), errors);
        if self.max_request_bytes == 0 {
            errors.push(path.key("max_request_bytes"), "must be at least 1");
        }
    }
}

fn check_limits(limits: &[LimitConfig], path: &FieldPath, errors: &mut ConfigErrors) {
    let mut seen = HashSet::new();
    for (index, limit) in limits.iter().enumerate() {
        let at = path.index(index);
        if limit.window.get().is_zero() {
            errors.push(at.key("window"), "must be more than 0");
        }
        let mut any = false;
        for measure in Measure::ALL {
            let field = at.key(measure.field());
            if measure == Measure::Cost {
                if let Some(cost) = limit.cost {
                    any = true;
                    if !cost.is_finite() || cost <= 0.0 {
                        errors.push(field, "must be more than 0");
                    } else if cost * COST_UNITS >= MAX_COUNT as f64 {
                        errors.push(field, "must be below 1000000000");
                    } else if !seen.insert((measure, limit.window.get())) {
                        errors.push(field, format!("cost per {} is already limited", limit.window));
                    }
                }
                continue;
            }
            let Some(value) = measure.limit_in(limit) else { continue };
            any = true;
            if value == 0 {
                errors.push(field, "must be more than 0 (to refuse every request, use `mock_response`)");
            } else if value > MAX_COUNT {
                errors.push(field, format!("must be at most {MAX_COUNT}"));
            } else if !seen.insert((measure, limit.window.get())) {
                errors.push(field, format!("{} per {} is already limited", measure.field(), limit.window));
            }
        }
        if !any {
            errors.push(
                at.clone(),
                "limit at least one of `requests`, `tokens`, `input_tokens`, `output_tokens`, `cost`",
            );
        }
    }
}

/// Factory of the `ai_rate_limit` policy.
#[derive(Debug)]
pub struct AiRateLimit;

impl PolicyFactory for AiRateLimit {
    const NAME: &'static str = "ai_rate_limit";
    const STAGE: Stage = Stage::Traffic;
    const DOCS: &'static str = include_str!("ai_rate_limit.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let key = LimitKey::compile(&config.key, &path.key("key"), &mut errors);
        let store = config.store.select(context, &path.key("store"), &mut errors);
        errors.into_result(())?;
        let Some(store) = store else { return Err(ConfigErrors::one(path.key("store"), "no store")) };
        let namespace = config.name.clone().unwrap_or_else(|| attachment(path));
        let every_model = meters(&config.limits, config.algorithm, &namespace, None);
        let models = config
            .models
            .iter()
            .map(|model| (model.model.clone(), meters(&model.limits, config.algorithm, &namespace, Some(&model.model))))
            .collect();
        Ok(Arc::new(CompiledAiRateLimit {
            key,
            every_model,
            models,
            algorithm: config.algorithm,
            store,
            headers: config.headers,
            max_request_bytes: config.max_request_bytes,
            failures: Arc::new(StoreFailures::new(
                AiRateLimit::NAME,
                config.on_store_error,
                context.stores.metrics().clone(),
                "ai-rate-limit-unavailable",
                "the AI rate limit cannot be checked right now",
            )),
        }))
    }
}

fn meters(limits: &[LimitConfig], algorithm: Algorithm, namespace: &str, model: Option<&str>) -> Vec<Arc<Meter>> {
    let scope = model.map_or_else(|| "*".to_owned(), |model| format!("m={model}"));
    let scope = scope.as_str();
    limits
        .iter()
        .flat_map(|limit| {
            Measure::ALL.into_iter().filter_map(move |measure| {
                let amount = measure.limit_in(limit)?;
                let window = limit.window.get();
                let seconds = whole_seconds(window);
                let label = match model {
                    Some(model) => format!("{model}:{}-{}", measure.field(), limit.window),
                    None => format!("{}-{}", measure.field(), limit.window),
                };
                Some(Arc::new(Meter {
                    measure,
                    limit: amount,
                    window,
                    model: model.map(str::to_owned),
                    prefix: format!("ai:{namespace}:{scope}:{}:{seconds}:{}:", measure.field(), algorithm.name()),
                    headers: LimitHeaders::new(&label, amount, seconds, measure.legacy_names()),
                }))
            })
        })
        .collect()
}

/// One measure limited over one window, for every model or one.
#[derive(Debug)]
struct Meter {
    measure: Measure,
    /// In store units: requests, tokens, or millionths of the currency unit.
    limit: u64,
    window: StdDuration,
    model: Option<String>,
    /// Prefix of the meter's store keys: name, scope, measure, window and algorithm.
    prefix: String,
    headers: LimitHeaders,
}

impl Meter {
    fn is_charged_after(&self) -> bool {
        self.measure != Measure::Requests
    }

    /// The limit as clients read it: cost in currency units.
    fn shown(&self, units: u64) -> String {
        match self.measure {
            Measure::Cost => format_cost(units),
            _ => units.to_string(),
        }
    }

    fn describe(&self) -> String {
        let what = match self.measure {
            Measure::Requests => "requests",
            Measure::Tokens => "tokens",
            Measure::InputTokens => "input tokens",
            Measure::OutputTokens => "output tokens",
            Measure::Cost => "cost",
        };
        let model = self.model.as_deref().map_or(String::new(), |model| format!(" for {model}"));
        format!("{what}{model} per {}: limit {}", Duration(self.window), self.shown(self.limit))
    }
}

fn format_cost(units: u64) -> String {
    let whole = units / 1_000_000;
    let fraction = units % 1_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{whole}.{fraction:06}");
    digits.trim_end_matches('0').to_owned()
}

/// What a meter said about one request.
struct Reading {
    meter: Arc<Meter>,
    decision: Decision,
}

impl Reading {
    /// Units left in the window.
    fn remaining(&self) -> u64 {
        if !self.decision.allowed {
            return 0;
        }
        if self.meter.is_charged_after() {
            // Checked against one unit less than the limit, so a window exactly spent refuses.
            self.decision.remaining.saturating_add(1).min(self.meter.limit)
        } else {
            self.decision.remaining
        }
    }

    /// This meter's members of the IETF fields, which list every meter (the legacy headers
    /// show one meter per measure: [`legacy_headers`]). Cost is left out, as the fields'
    /// quotas are whole numbers.
    fn ietf_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        if self.meter.measure == Measure::Cost {
            return Vec::new();
        }
        let decision = Decision { remaining: self.remaining(), ..self.decision };
        self.meter.headers.for_decision(HeaderStyle::Ietf, &decision)
    }
}

/// The `X-AI-RateLimit-*` headers: for each measure, the meter with the least left.
fn legacy_headers(readings: &[Reading]) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    for measure in Measure::ALL {
        let tightest = readings.iter().filter(|reading| reading.meter.measure == measure).min_by(|a, b| {
            let left = |reading: &Reading| reading.remaining() as f64 / reading.meter.limit.max(1) as f64;
            left(a).total_cmp(&left(b)).then(b.decision.reset_after.cmp(&a.decision.reset_after))
        });
        let Some(reading) = tightest else { continue };
        let names = measure.legacy_names();
        let meter = &reading.meter;
        for (name, value) in [
            (names.limit, meter.shown(meter.limit)),
            (names.remaining, meter.shown(reading.remaining())),
            (names.reset, whole_seconds(reading.decision.reset_after).to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.push((name, value));
            }
        }
    }
    headers
}

/// Headers for an admitted request's response, kept in the exchange until it comes.
#[derive(Clone, Debug)]
struct PendingHeaders(Vec<(HeaderName, HeaderValue)>);

/// Runs per request: reads `model` from the body, makes one store call per meter (checks of
/// the spent tokens and cost first, then the request counts, each group at once), and charges
/// the answer's usage to the token and cost meters when `ai_proxy` reports it.
struct CompiledAiRateLimit {
    key: LimitKey,
    every_model: Vec<Arc<Meter>>,
    models: Vec<(String, Vec<Arc<Meter>>)>,
    algorithm: Algorithm,
    store: Arc<dyn CounterStore>,
    headers: HeaderStyle,
    max_request_bytes: u64,
    failures: Arc<StoreFailures>,
}

/// The one field of the request body this policy reads.
#[derive(Deserialize)]
struct ModelField<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// A meter and the key it counts this request under.
struct Counted {
    meter: Arc<Meter>,
    key: String,
}

impl CompiledAiRateLimit {
    fn meters_for(&self, model: Option<&str>) -> Vec<Arc<Meter>> {
        let of_model = model
            .and_then(|model| self.models.iter().find(|(name, _)| name == model))
            .map_or(&[][..], |(_, meters)| meters.as_slice());
        self.every_model.iter().chain(of_model).cloned().collect()
    }

    /// Spent tokens and cost are checked without counting: the window refuses once it is
    /// spent, so the check asks whether a request of 0 fits under one unit less than the limit.
    fn check<'a>(&'a self, counted: &'a Counted) -> Hit<'a> {
        let meter = &counted.meter;
        if meter.is_charged_after() {
            self.algorithm.hit(&*self.store, &counted.key, meter.window, meter.limit - 1, 0)
        } else {
            self.algorithm.hit(&*self.store, &counted.key, meter.window, meter.limit, 1)
        }
    }

    async fn admit(&self, meters: Vec<Arc<Meter>>, key: Vec<u8>, exchange: &mut Exchange) -> Flow {
        let counted: Vec<Counted> =
            meters.into_iter().map(|meter| Counted { key: store_key(&meter.prefix, &key), meter }).collect();
        let (charged, requests): (Vec<&Counted>, Vec<&Counted>) =
            counted.iter().partition(|counted| counted.meter.is_charged_after());
        let mut readings = Vec::with_capacity(counted.len());
        // Requests are counted only when no spent window refuses the request.
        for group in [charged, requests] {
            let results = join_all(group.iter().map(|counted| self.check(counted).resolve())).await;
            for (counted, result) in group.iter().zip(results) {
                match result {
                    Ok(decision) => readings.push(Reading { meter: counted.meter.clone(), decision }),
                    Err(error) => {
                        if let Some(refusal) = self.store_failed(&error) {
                            return Flow::Respond(refusal);
                        }
                    }
                }
            }
            if let Some(refused) = readings.iter().find(|reading| !reading.decision.allowed) {
                return Flow::Respond(self.refusal(refused, &readings));
            }
        }
        let charges: Vec<Counted> = counted.into_iter().filter(|counted| counted.meter.is_charged_after()).collect();
        if !charges.is_empty() {
            let store = self.store.clone();
            let failures = self.failures.clone();
            let algorithm = self.algorithm;
            AiExchange::of(&mut exchange.extensions).on_usage(move |usage| {
                charge(algorithm, store, failures, charges, usage);
            });
        }
        let headers = self.headers_for(&readings);
        if !headers.is_empty() {
            exchange.extensions.insert(PendingHeaders(headers));
        }
        Flow::Continue
    }

    fn headers_for(&self, readings: &[Reading]) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if matches!(self.headers, HeaderStyle::Ietf | HeaderStyle::Both) {
            headers.extend(readings.iter().flat_map(Reading::ietf_headers));
        }
        if matches!(self.headers, HeaderStyle::Legacy | HeaderStyle::Both) {
            headers.extend(legacy_headers(readings));
        }
        headers
    }

    fn refusal(&self, refused: &Reading, readings: &[Reading]) -> PolicyResponse {
        let meter = &refused.meter;
        let retry_after = whole_seconds(refused.decision.retry_after).max(1);
        tracing::debug!(limit = %meter.describe(), "AI rate limited");
        let message = format!("Rate limit reached on {}. Please try again in {retry_after}s.", meter.describe());
        let kind = match meter.measure {
            Measure::Requests => "requests",
            Measure::Cost => "cost",
            Measure::Tokens | Measure::InputTokens | Measure::OutputTokens => "tokens",
        };
        let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, &message, kind, Some("rate_limit_exceeded"));
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
        add_headers(response.headers_mut(), self.headers_for(readings));
        response
    }

    fn store_failed(&self, error: &StoreError) -> Option<PolicyResponse> {
        self.failures.handle(self.store.name(), error)?;
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the AI rate limit cannot be checked right now",
            "server_error",
            None,
        );
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
        Some(response)
    }
}

/// Adds an answer's usage to the token and cost meters. The stores refuse a cost that does
/// not fit, so charges are made against the largest count: an answer that overspends is
/// counted whole, and the next request finds the window spent.
fn charge(
    algorithm: Algorithm,
    store: Arc<dyn CounterStore>,
    failures: Arc<StoreFailures>,
    charges: Vec<Counted>,
    usage: &AiUsage,
) {
    if usage.cache_hit {
        return;
    }
    let mut later = Vec::new();
    for counted in charges {
        let amount = counted.meter.measure.charge(usage);
        if amount == 0 {
            continue;
        }
        // The memory store counts at once; a Redis call is sent from a task of its own, as the
        // usage is reported from inside the answer's stream.
        let ready = match algorithm.hit(&*store, &counted.key, counted.meter.window, MAX_COUNT, amount) {
            Hit::Ready(result) => Some(result),
            Hit::Pending(_) => None,
        };
        match ready {
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                failures.handle(store.name(), &error);
            }
            None => later.push((counted, amount)),
        }
    }
    if later.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("AI usage reported outside the runtime; its tokens are not charged");
        return;
    };
    runtime.spawn(async move {
        for (counted, amount) in later {
            let hit = algorithm.hit(&*store, &counted.key, counted.meter.window, MAX_COUNT, amount);
            if let Err(error) = hit.resolve().await {
                failures.handle(store.name(), &error);
            }
        }
    });
}

impl Policy for CompiledAiRateLimit {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: self.headers != HeaderStyle::None, log: false }
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        (request.method == Method::POST).then_some(self.max_request_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        // Only POSTs ask a model for anything; the model list (`GET /v1/models`) is free.
        if request.method != Method::POST {
            return Hook::Done(Flow::Continue);
        }
        let model = exchange
            .extensions
            .get::<RequestBody>()
            .and_then(|body| serde_json::from_slice::<ModelField<'_>>(&body.0).ok())
            .and_then(|field| field.model)
            .map(Cow::into_owned);
        if let Some(model) = &model {
            AiExchange::of(&mut exchange.extensions).set_request_model(model);
        }
        let meters = self.meters_for(model.as_deref());
        let key = self.key.value(request, exchange).as_bytes().to_vec();
        Hook::Wait(Box::pin(self.admit(meters, key, exchange)))
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        if let Some(PendingHeaders(headers)) = exchange.extensions.remove::<PendingHeaders>() {
            add_headers(&mut response.headers, headers);
        }
    }
}

#[cfg(test)]
mod tests;
