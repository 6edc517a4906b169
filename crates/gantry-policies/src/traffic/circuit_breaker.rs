#![doc = include_str!("circuit_breaker.md")]

mod circuit;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Instant;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, ForwardOutcome, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts,
    ResponseParts, Stage, Validate,
};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::forward::mock_response::{self, CompiledMockResponse};
use circuit::{Admission, Circuit, Thresholds, Trial, WindowShape};

/// Settings of `circuit_breaker`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The forwarded requests the failure ratio is measured over: the last `{calls: <n>}`
    /// (1 to 10000), or those of the last `{duration: <time>}` (at least 1s).
    #[serde(default = "default_window")]
    pub window: Window,
    /// Requests the window must hold before the circuit may open, at least 1.
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: u32,
    /// Share of failed requests in the window, more than 0 and at most 1, at or above which
    /// the circuit opens.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// Upstream statuses that count as failures: codes such as `503` or classes such as
    /// `5xx`. Requests the upstream did not answer (refused connections, timeouts, no
    /// available endpoint) always count as failures.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<StatusPattern>,
    /// How long an open circuit refuses requests before it lets trial requests through.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
    /// Trial requests a half-open circuit lets through, at least 1: any failure opens the
    /// circuit again, and when all of them succeed it closes.
    #[serde(default = "default_half_open_calls")]
    pub half_open_calls: u32,
    /// The answer while the circuit is open, instead of a 503 problem document: `status`,
    /// `headers` and a `body` or `json`.
    #[serde(default)]
    pub fallback: Option<Fallback>,
}

/// What the failure ratio is measured over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// The last this many forwarded requests.
    Calls(u32),
    /// The forwarded requests of this last stretch of time, counted in tenths of it.
    Duration(Duration),
}

/// The response a circuit answers with while open, built once.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Status of the response, from 200 to 599.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Response headers, name to value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body as text (`text/plain` unless `headers` sets a `content-type`).
    #[serde(default)]
    pub body: Option<String>,
    /// Response body as any YAML value, sent as JSON.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
}

/// An upstream status (`503`) or a class of statuses (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusPattern {
    /// One status.
    Code(u16),
    /// Every status of a class: `5` for 500 to 599.
    Class(u8),
}

fn default_window() -> Window {
    Window::Calls(100)
}

fn default_minimum_calls() -> u32 {
    20
}

fn default_failure_ratio() -> f64 {
    0.5
}

fn default_failure_statuses() -> Vec<StatusPattern> {
    vec![StatusPattern::Class(5)]
}

fn default_open_for() -> Duration {
    Duration::from_secs(30)
}

fn default_half_open_calls() -> u32 {
    5
}

fn default_fallback_status() -> u16 {
    200
}

/// Longest count window, so that one route's ring of outcomes stays small (1.25 KiB).
const MAX_WINDOW_CALLS: u32 = 10_000;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        match self.window {
            Window::Calls(calls) => {
                if !(1..=MAX_WINDOW_CALLS).contains(&calls) {
                    errors.push(path.key("window").key("calls"), format!("must be from 1 to {MAX_WINDOW_CALLS}"));
                } else if self.minimum_calls > calls {
                    errors.push(
                        path.key("minimum_calls"),
                        format!("is more than the {calls} calls of the window: the circuit could never open"),
                    );
                }
            }
            Window::Duration(span) => {
                if span.get() < std::time::Duration::from_secs(1) {
                    errors.push(path.key("window").key("duration"), "must be at least 1s");
                }
            }
        }
        if self.minimum_calls == 0 {
            errors.push(path.key("minimum_calls"), "must be at least 1");
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            errors.push(path.key("failure_ratio"), "must be more than 0 and at most 1 (0.5 opens at half failing)");
        }
        if self.failure_statuses.is_empty() {
            errors.push(
                path.key("failure_statuses"),
                "give at least one status or class, such as 5xx (unanswered requests count anyway)",
            );
        }
        for (index, pattern) in self.failure_statuses.iter().enumerate() {
            if let StatusPattern::Code(code) = pattern {
                if !(100..=599).contains(code) {
                    errors.push(path.key("failure_statuses").index(index), format!("{code} is not an HTTP status"));
                }
            }
        }
        if self.open_for.get().is_zero() {
            errors.push(path.key("open_for"), "must be more than 0");
        }
        if self.half_open_calls == 0 {
            errors.push(path.key("half_open_calls"), "must be at least 1");
        }
    }
}

/// Factory of the `circuit_breaker` policy.
#[derive(Debug)]
pub struct CircuitBreaker;

impl PolicyFactory for CircuitBreaker {
    const NAME: &'static str = "circuit_breaker";
    const STAGE: Stage = Stage::Traffic;
    const DOCS: &'static str = include_str!("circuit_breaker.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let fallback = match &config.fallback {
            None => None,
            Some(fallback) => {
                let as_mock = mock_response::Config {
                    status: fallback.status,
                    headers: fallback.headers.clone(),
                    body: fallback.body.clone(),
                    json: fallback.json.clone(),
                    delay: None,
                };
                Some(ConfigErrors::collect(|errors| mock_response::compile(&as_mock, &path.key("fallback"), errors))?)
            }
        };
        let shape = match config.window {
            Window::Calls(calls) => WindowShape::Calls(calls.clamp(1, MAX_WINDOW_CALLS)),
            Window::Duration(span) => WindowShape::Time(span.get()),
        };
        let routes = context.spec.routes.iter().map(|route| route.id.as_str());
        Ok(Arc::new(CompiledCircuitBreaker {
            circuits: shared_circuits(&path.to_string(), shape, routes),
            thresholds: Thresholds {
                minimum_calls: config.minimum_calls,
                failure_ratio: config.failure_ratio,
                open_for: config.open_for.get(),
                half_open_calls: config.half_open_calls,
            },
            failure_statuses: FailureStatuses::new(&config.failure_statuses),
            fallback,
        }))
    }
}

/// Runs per request: one map lookup and one atomic load to admit while closed; one short lock
/// per outcome.
struct CompiledCircuitBreaker {
    /// Each route's circuit; the same ones as the previous build's, when the breaker stays
    /// where it is configured with the same window.
    circuits: HashMap<Arc<str>, Arc<Circuit>>,
    thresholds: Thresholds,
    failure_statuses: FailureStatuses,
    fallback: Option<CompiledMockResponse>,
}

/// A half-open circuit's trial, in the exchange's extensions until its outcome is known.
/// Extensions must be `Clone`; the place is given back when the last clone is dropped
/// unfinished (the client went away).
#[derive(Clone)]
struct TrialCall(Arc<Mutex<Option<Trial>>>);

impl CompiledCircuitBreaker {
    fn refuse(&self, route: &str, retry_after: std::time::Duration) -> PolicyResponse {
        if let Some(fallback) = &self.fallback {
            return fallback.response();
        }
        let detail = format!("the upstream of route `{route}` is failing; requests are refused for a while");
        let mut response =
            problem_response(StatusCode::SERVICE_UNAVAILABLE, "circuit-open", "Service Unavailable", Some(&detail));
        // Whole seconds, rounded up: a client retrying at once would only be refused again.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        response
    }

    fn is_failure(&self, outcome: ForwardOutcome) -> bool {
        match outcome {
            ForwardOutcome::Answered(status) => self.failure_statuses.contains(status),
            ForwardOutcome::Failed => true,
        }
    }
}

impl Policy for CompiledCircuitBreaker {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: true, log: false }
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(circuit) = self.circuits.get(&exchange.route_id) else {
            // Every route of the configuration has a circuit; a route unknown here belongs to
            // another configuration, and is let through.
            return Hook::Done(Flow::Continue);
        };
        match circuit.admit(&self.thresholds, Instant::now()) {
            Admission::Closed => Hook::Done(Flow::Continue),
            Admission::Trial(trial) => {
                exchange.extensions.insert(TrialCall(Arc::new(Mutex::new(Some(trial)))));
                Hook::Done(Flow::Continue)
            }
            Admission::Refused { retry_after } => {
                tracing::debug!(route = &*exchange.route_id, "circuit open: request refused");
                self.refuse(&exchange.route_id, retry_after).into()
            }
        }
    }

    fn on_response(&self, _: &mut ResponseParts, exchange: &mut Exchange) {
        let trial = exchange
            .extensions
            .remove::<TrialCall>()
            .and_then(|call| call.0.lock().unwrap_or_else(PoisonError::into_inner).take());
        // Not forwarded (a later policy answered): no outcome, and a trial's place is given
        // back as it is dropped.
        let Some(outcome) = exchange.forward_outcome else { return };
        let failed = self.is_failure(outcome);
        let now = Instant::now();
        match trial {
            Some(trial) => trial.finish(failed, &self.thresholds, now),
            None => {
                if let Some(circuit) = self.circuits.get(&exchange.route_id) {
                    circuit.record(failed, &self.thresholds, now);
                }
            }
        }
    }
}

/// Which statuses are failures, one flag per status from 100 to 599.
struct FailureStatuses([bool; 500]);

impl FailureStatuses {
    fn new(patterns: &[StatusPattern]) -> Self {
        let mut flags = [false; 500];
        for pattern in patterns {
            let range = match *pattern {
                StatusPattern::Code(code) => code..=code,
                StatusPattern::Class(class) => u16::from(class) * 100..=u16::from(class) * 100 + 99,
            };
            for code in range {
                if let Some(flag) = code.checked_sub(100).and_then(|at| flags.get_mut(usize::from(at))) {
                    *flag = true;
                }
            }
        }
        Self(flags)
    }

    fn contains(&self, status: StatusCode) -> bool {
        status.as_u16().checked_sub(100).and_then(|at| self.0.get(usize::from(at))).copied().unwrap_or(false)
    }
}

/// What makes two builds share a route's circuit: where the breaker is configured, the shape
/// of its window, and the route.
type CircuitId = (String, WindowShape, Arc<str>);

/// Circuits alive in this process, so that a reload keeps each route's phase and outcomes.
/// A circuit lives as long as a built breaker holds it; the `/metrics` gauge reads them here.
static SHARED: LazyLock<Mutex<HashMap<CircuitId, Weak<Circuit>>>> = LazyLock::new(Mutex::default);

fn shared_circuits<'r>(
    path: &str,
    shape: WindowShape,
    routes: impl Iterator<Item = &'r str>,
) -> HashMap<Arc<str>, Arc<Circuit>> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    shared.retain(|_, circuit| circuit.strong_count() > 0);
    let mut circuits = HashMap::new();
    for route in routes {
        let route: Arc<str> = Arc::from(route);
        let id = (path.to_owned(), shape, route.clone());
        let circuit = match shared.get(&id).and_then(Weak::upgrade) {
            Some(alive) => alive,
            None => {
                let created = Arc::new(Circuit::new(shape));
                shared.insert(id, Arc::downgrade(&created));
                created
            }
        };
        circuits.insert(route, circuit);
    }
    circuits
}

/// Registers `gantry_circuit_state{route}` in `registry`: 0 closed, 1 half-open, 2 open, for
/// each route whose requests have reached a circuit breaker. Read from the live circuits at
/// each scrape; nothing is counted per request.
pub fn register_metrics(registry: &mut prometheus_client::registry::Registry) {
    registry.register_collector(Box::new(CircuitStates));
}

/// The collector of `gantry_circuit_state`.
#[derive(Debug)]
struct CircuitStates;

impl Collector for CircuitStates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A route may have several circuits (its own breaker and a consumer's): the most open
        // one is reported.
        let mut phases: BTreeMap<Arc<str>, u8> = BTreeMap::new();
        {
            let shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
            for ((_, _, route), circuit) in shared.iter() {
                let Some(circuit) = circuit.upgrade().filter(|circuit| circuit.is_used()) else { continue };
                let phase = phases.entry(route.clone()).or_insert(circuit::CLOSED);
                *phase = (*phase).max(circuit.phase());
            }
        }
        if phases.is_empty() {
            return Ok(());
        }
        let gauge = ConstGauge::new(0i64);
        let mut metric = encoder.encode_descriptor(
            "gantry_circuit_state",
            "Phase of each route's circuit breaker: 0 closed, 1 half-open, 2 open",
            None,
            gauge.metric_type(),
        )?;
        for (route, phase) in phases {
            let labels = [("route", Cow::<str>::Owned(route.to_string()))];
            ConstGauge::new(i64::from(phase)).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PatternVisitor;

        impl serde::de::Visitor<'_> for PatternVisitor {
            type Value = StatusPattern;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a status such as 503 or a class such as 5xx")
            }

            fn visit_u64<E: serde::de::Error>(self, code: u64) -> Result<StatusPattern, E> {
                u16::try_from(code)
                    .map(StatusPattern::Code)
                    .map_err(|_| E::custom(format!("{code} is not an HTTP status")))
            }

            fn visit_i64<E: serde::de::Error>(self, code: i64) -> Result<StatusPattern, E> {
                u64::try_from(code)
                    .map_err(|_| E::custom(format!("{code} is not an HTTP status")))
                    .and_then(|code| self.visit_u64(code))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<StatusPattern, E> {
                let bytes = text.as_bytes();
                match bytes {
                    [class @ b'1'..=b'5', x, y] if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') => {
                        Ok(StatusPattern::Class(class - b'0'))
                    }
                    _ => match text.parse::<u64>() {
                        Ok(code) => self.visit_u64(code),
                        Err(_) => {
                            Err(E::custom(format!("`{text}` is not a status such as 503 or a class from 1xx to 5xx")))
                        }
                    },
                }
            }
        }

        deserializer.deserialize_any(PatternVisitor)
    }
}

impl JsonSchema for StatusPattern {
    fn schema_name() -> Cow<'static, str> {
        "StatusPattern".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An HTTP status such as 503, or a class of statuses from \"1xx\" to \"5xx\".",
            "oneOf": [
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^[1-5][xX][xX]$"}
            ],
            "examples": ["5xx", 429]
        })
    }
}

#[cfg(test)]
mod tests;
