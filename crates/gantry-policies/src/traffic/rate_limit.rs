#![doc = include_str!("rate_limit.md")]

use std::sync::Arc;
use std::time::Duration as StdDuration;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use gantry_state::{CounterStore, Decision, Hit, StoreError};
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

pub use super::limit_headers::HeaderStyle;
use super::limit_headers::{add_headers, whole_seconds, LegacyNames, LimitHeaders};
use super::limit_key::{KeyPart, LimitKey};
use super::limit_store::{attachment, check_name, store_key, StoreFailures};
pub use super::limit_store::{OnStoreError, StoreKind};

/// Settings of `rate_limit`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How requests are counted: `fixed_window`, `sliding_window`, `token_bucket` or
    /// `leaky_bucket` (which delays requests instead of refusing them).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Requests allowed per `window`, more than 0. For the buckets: the sustained rate is
    /// `limit` per `window`.
    pub limit: u64,
    /// The window `limit` applies to (`1s`, `1m`, `1h`).
    pub window: Duration,
    /// `token_bucket`: requests allowed at once after a quiet time (default: `limit`).
    /// `leaky_bucket`: requests that may wait their turn beyond the rate (default: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `leaky_bucket`: serve the `burst` at once instead of spacing it out at the rate (as
    /// nginx's `nodelay`); it still counts.
    #[serde(default)]
    pub nodelay: bool,
    /// What requests are counted by: a list of `route`, `consumer`, `credential`, `ip`,
    /// `{header: <name>}` and (in a consumer group's policies) `consumer_group`, all of which
    /// together make a request's key. `consumer`, `credential` and a header fall back to the
    /// client IP address when absent.
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    /// Other limits for consumers of these groups: the first group of the list the consumer
    /// is in applies, with counters of its own. Other requests get `limit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupLimit>,
    /// Where counters are kept: `memory` (this process) or `redis` (every process that shares
    /// `node.stores.redis`).
    #[serde(default)]
    pub store: StoreKind,
    /// What to do when the store fails (Redis down or slow): `allow` the request uncounted, or
    /// `deny` it with 503.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Which headers tell clients about the limit: `ietf` (`RateLimit-Policy` and `RateLimit`),
    /// `legacy` (`X-RateLimit-Limit`, `-Remaining`, `-Reset`), `both` or `none`.
    #[serde(default)]
    pub headers: HeaderStyle,
    /// The limit's name: the policy in `RateLimit-Policy`, and the counters' name. Limits of
    /// the same name share counters, wherever they are attached. Default: counters of their
    /// own, named after where the policy is attached; `default` in headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How requests are counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// At most `limit` per window; a window starts with a key's first request.
    #[default]
    FixedWindow,
    /// At most `limit` in any `window` ending now, estimated from two fixed windows.
    SlidingWindow,
    /// A bucket of `burst` tokens refilled at `limit` per `window` (GCRA).
    TokenBucket,
    /// Requests pass at `limit` per `window`; up to `burst` more wait their turn; more are refused.
    LeakyBucket,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }
}

fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::Consumer]
}

/// The limit of a consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupLimit {
    /// The consumer group.
    pub group: String,
    /// Requests allowed per window for this group, more than 0.
    pub limit: u64,
    /// Its window. Default: the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// Its burst (buckets only). Default: the policy's, or this group's `limit` for a token bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        check_limit(self.limit, self.window, path, errors);
        let is_bucket = matches!(self.algorithm, Algorithm::TokenBucket | Algorithm::LeakyBucket);
        if self.burst.is_some() && !is_bucket {
            errors.push(path.key("burst"), "only `token_bucket` and `leaky_bucket` take a burst");
        }
        if self.algorithm == Algorithm::TokenBucket && self.burst == Some(0) {
            errors.push(path.key("burst"), "a token bucket holds at least 1 token");
        }
        if self.nodelay && self.algorithm != Algorithm::LeakyBucket {
            errors.push(path.key("nodelay"), "only `leaky_bucket` delays requests");
        }
        check_name(self.name.as_deref(), &path.key("name"), errors);
        for (index, group) in self.groups.iter().enumerate() {
            let at = path.key("groups").index(index);
            if group.group.is_empty() {
                errors.push(at.key("group"), "name the consumer group");
            }
            if self.groups[..index].iter().any(|earlier| earlier.group == group.group) {
                errors.push(at.key("group"), format!("`{}` is already listed", group.group));
            }
            check_limit(group.limit, group.window.unwrap_or(self.window), &at, errors);
            if group.burst.is_some() && !is_bucket {
                errors.push(at.key("burst"), "only `token_bucket` and `leaky_bucket` take a burst");
            }
        }
    }
}

fn check_limit(limit: u64, window: Duration, path: &FieldPath, errors: &mut ConfigErrors) {
    if limit == 0 {
        errors.push(path.key("limit"), "must be more than 0 (to refuse every request, use `mock_response`)");
    } else if window.get().is_zero() {
        errors.push(path.key("window"), "must be more than 0");
    } else if emission_interval(window.get(), limit) < StdDuration::from_micros(1) {
        errors.push(path.key("limit"), "more than one request per microsecond cannot be limited");
    }
}

/// The time one request takes of a rate of `limit` per `window`.
fn emission_interval(window: StdDuration, limit: u64) -> StdDuration {
    let nanos = window.as_nanos() / u128::from(limit.max(1));
    StdDuration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Factory of the `rate_limit` policy.
#[derive(Debug)]
pub struct RateLimit;

impl PolicyFactory for RateLimit {
    const NAME: &'static str = "rate_limit";
    const STAGE: Stage = Stage::Traffic;
    const DOCS: &'static str = include_str!("rate_limit.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let key = LimitKey::compile(&config.key, &path.key("key"), &mut errors);
        let store = config.store.select(context, &path.key("store"), &mut errors);
        errors.into_result(())?;
        let Some(store) = store else { return Err(ConfigErrors::one(path.key("store"), "no store")) };
        let label = config.name.clone().unwrap_or_else(|| "default".to_owned());
        let namespace = config.name.clone().unwrap_or_else(|| attachment(path));
        let default = CompiledLimit::new(&config, &label, &namespace, None);
        let groups = config
            .groups
            .iter()
            .map(|group| (group.group.clone(), CompiledLimit::new(&config, &group.group, &namespace, Some(group))))
            .collect();
        Ok(Arc::new(CompiledRateLimit {
            key,
            default,
            groups,
            store,
            headers: config.headers,
            failures: StoreFailures::new(
                RateLimit::NAME,
                config.on_store_error,
                context.stores.metrics().clone(),
                "rate-limit-unavailable",
                "the rate limit cannot be checked right now",
            ),
        }))
    }
}

/// One limit, ready to count: the default one or a group's.
struct CompiledLimit {
    algorithm: Algorithm,
    limit: u64,
    window: StdDuration,
    /// GCRA: one request per interval; up to `burst` at once.
    interval: StdDuration,
    burst: u64,
    nodelay: bool,
    /// Prefix of every key of this limit: name, algorithm and group.
    prefix: String,
    headers: LimitHeaders,
}

impl CompiledLimit {
    fn new(config: &Config, label: &str, namespace: &str, group: Option<&GroupLimit>) -> Self {
        let limit = group.map_or(config.limit, |group| group.limit);
        let window = group.and_then(|group| group.window).unwrap_or(config.window).get();
        let burst = group.and_then(|group| group.burst).or(config.burst);
        let interval = emission_interval(window, limit);
        // A leaky bucket admits one request per interval plus `burst` waiting: in GCRA terms
        // a tolerance of burst + 1 intervals, where the wait is how far ahead it was admitted.
        let burst = match config.algorithm {
            Algorithm::TokenBucket => burst.unwrap_or(limit),
            Algorithm::LeakyBucket => burst.unwrap_or(0).saturating_add(1),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => 0,
        };
        let group_part = group.map_or(String::new(), |group| format!(":g={}", group.group));
        Self {
            algorithm: config.algorithm,
            limit,
            window,
            interval,
            burst,
            nodelay: config.nodelay,
            prefix: format!("rl:{namespace}:{}{group_part}:", config.algorithm.name()),
            headers: LimitHeaders::new(label, limit, whole_seconds(window), LegacyNames::PLAIN),
        }
    }

    fn hit<'a>(&self, store: &'a dyn CounterStore, key: &'a str) -> Hit<'a> {
        match self.algorithm {
            Algorithm::FixedWindow => store.fixed_window_hit(key, self.window, self.limit, 1),
            Algorithm::SlidingWindow => store.sliding_window_hit(key, self.window, self.limit, 1),
            Algorithm::TokenBucket | Algorithm::LeakyBucket => store.gcra_hit(key, self.interval, self.burst, 1),
        }
    }

    /// How long an admitted request waits (leaky bucket only).
    fn delay(&self, decision: &Decision) -> StdDuration {
        if self.algorithm != Algorithm::LeakyBucket || self.nodelay {
            return StdDuration::ZERO;
        }
        decision.reset_after.saturating_sub(self.interval)
    }
}

/// Headers for an admitted request's response, kept in the exchange until it comes.
#[derive(Clone, Debug)]
struct PendingHeaders(Vec<(HeaderName, HeaderValue)>);

/// Runs per request: builds one key (one allocation), one store call (a shard lock in memory,
/// one round trip to Redis), and formats headers only when they are sent.
struct CompiledRateLimit {
    key: LimitKey,
    default: CompiledLimit,
    groups: Vec<(String, CompiledLimit)>,
    store: Arc<dyn CounterStore>,
    headers: HeaderStyle,
    failures: StoreFailures,
}

/// What the policy decided, before it is sent.
enum Verdict {
    Continue(Vec<(HeaderName, HeaderValue)>, StdDuration),
    Respond(PolicyResponse),
}

impl CompiledRateLimit {
    fn limit_for(&self, exchange: &Exchange) -> &CompiledLimit {
        let Some(consumer) = exchange.consumer() else { return &self.default };
        self.groups.iter().find(|(group, _)| consumer.is_in(group)).map_or(&self.default, |(_, limit)| limit)
    }

    fn key(&self, limit: &CompiledLimit, request: &RequestParts, exchange: &Exchange) -> String {
        store_key(&limit.prefix, self.key.value(request, exchange).as_bytes())
    }

    fn verdict(&self, limit: &CompiledLimit, result: Result<Decision, StoreError>) -> Verdict {
        let decision = match result {
            Ok(decision) => decision,
            Err(error) => return self.store_failed(&error),
        };
        let headers = limit.headers.for_decision(self.headers, &decision);
        if decision.allowed {
            return Verdict::Continue(headers, limit.delay(&decision));
        }
        tracing::debug!(limit = limit.limit, policy = %limit.headers.label, "rate limited");
        let retry_after = whole_seconds(decision.retry_after).max(1);
        let detail = format!(
            "at most {} requests per {} are allowed; retry in {retry_after} s",
            limit.limit,
            Duration(limit.window)
        );
        let mut response =
            problem_response(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too Many Requests", Some(&detail));
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
        add_headers(response.headers_mut(), headers);
        Verdict::Respond(response)
    }

    fn store_failed(&self, error: &StoreError) -> Verdict {
        match self.failures.handle(self.store.name(), error) {
            None => Verdict::Continue(Vec::new(), StdDuration::ZERO),
            Some(response) => Verdict::Respond(response),
        }
    }
}

/// Turns a verdict into the request hook's flow, keeping headers for the response.
fn apply(verdict: Verdict, exchange: &mut Exchange) -> (Flow, StdDuration) {
    match verdict {
        Verdict::Respond(response) => (Flow::Respond(response), StdDuration::ZERO),
        Verdict::Continue(headers, delay) => {
            if !headers.is_empty() {
                exchange.extensions.insert(PendingHeaders(headers));
            }
            (Flow::Continue, delay)
        }
    }
}

impl Policy for CompiledRateLimit {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: self.headers != HeaderStyle::None, log: false }
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let limit = self.limit_for(exchange);
        let key = self.key(limit, request, exchange);
        // The memory store decides at once: no future is allocated unless a request must wait.
        let ready = match limit.hit(&*self.store, &key) {
            Hit::Ready(result) => Some(result),
            Hit::Pending(_) => None,
        };
        if let Some(result) = ready {
            let (flow, delay) = apply(self.verdict(limit, result), exchange);
            if delay.is_zero() {
                return Hook::Done(flow);
            }
            return Hook::Wait(Box::pin(async move {
                tokio::time::sleep(delay).await;
                flow
            }));
        }
        Hook::Wait(Box::pin(async move {
            let result = limit.hit(&*self.store, &key).resolve().await;
            let (flow, delay) = apply(self.verdict(limit, result), exchange);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            flow
        }))
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        if let Some(PendingHeaders(headers)) = exchange.extensions.remove::<PendingHeaders>() {
            add_headers(&mut response.headers, headers);
        }
    }
}

#[cfg(test)]
mod tests;
