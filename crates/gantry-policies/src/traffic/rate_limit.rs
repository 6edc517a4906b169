#![doc = include_str!("rate_limit.md")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use base64::Engine as _;
use gantry_config::error::Segment;
use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use gantry_state::{CounterStore, Decision, Hit, StoreError, StoreMetrics};
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::limit_key::{KeyPart, LimitKey};

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
    /// What requests are counted by: a list of `route`, `consumer`, `credential`, `ip` and
    /// `{header: <name>}`, all of which together make a request's key. `consumer`,
    /// `credential` and a header fall back to the client IP address when absent.
    #[serde(default = "default_key")]
    pub key: Vec<RateKeyPart>,
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

/// One part of a key: the parts every traffic limit knows, plus `credential`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateKeyPart {
    /// The credential that identified the consumer (`alice:key_auth:1`), so each of a
    /// consumer's keys counts on its own. Without one: the client IP address.
    Credential,
    /// `route`, `consumer`, `ip` or `{header: <name>}`.
    #[serde(untagged)]
    Shared(KeyPart),
}

fn default_key() -> Vec<RateKeyPart> {
    vec![RateKeyPart::Shared(KeyPart::Consumer)]
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

/// Where counters are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process: exact, free, and per process.
    #[default]
    Memory,
    /// In `node.stores.redis`: one limit for every gateway process, one round trip per request.
    Redis,
}

/// What to do when the store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through uncounted (fail open): a store outage does not become an API outage.
    #[default]
    Allow,
    /// Refuse the request with 503 (fail closed): no request passes uncounted.
    Deny,
}

/// Which rate limit headers responses carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
    Legacy,
    /// Both sets.
    Both,
    /// None (a refusal still carries `Retry-After`).
    None,
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
        if let Some(name) = &self.name {
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                errors.push(path.key("name"), "use 1 to 64 printable ASCII characters without spaces, `\"` or `\\`");
            }
        }
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
        let shared: Vec<KeyPart> = config
            .key
            .iter()
            .filter_map(|part| match part {
                RateKeyPart::Shared(part) => Some(part.clone()),
                RateKeyPart::Credential => None,
            })
            .collect();
        let by_credential = config.key.contains(&RateKeyPart::Credential);
        if config.key.iter().filter(|part| **part == RateKeyPart::Credential).count() > 1 {
            errors.push(path.key("key"), "`credential` is already in the key");
        }
        // The shared parts' positions differ from the written ones once `credential` is taken
        // out; an error in them is reported at the `key` list itself.
        let mut key_errors = ConfigErrors::default();
        let key = (!shared.is_empty()).then(|| LimitKey::compile(&shared, &path.key("key"), &mut key_errors));
        errors.extend(key_errors.0);
        if config.key.is_empty() {
            errors.push(
                path.key("key"),
                "give at least one part: `route`, `consumer`, `credential`, `ip` or `{header: <name>}`",
            );
        }
        let store = match config.store {
            StoreKind::Memory => Some(context.stores.memory()),
            StoreKind::Redis => {
                let redis = context.stores.redis();
                if redis.is_none() {
                    errors.push(path.key("store"), "`redis` needs `node.stores.redis` in the node settings");
                }
                redis
            }
        };
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
            by_credential,
            default,
            groups,
            store,
            on_store_error: config.on_store_error,
            headers: config.headers,
            metrics: context.stores.metrics().clone(),
            warnings: WarnThrottle::default(),
        }))
    }
}

/// Where a policy is attached, without its position in the list (`routes[orders].rate_limit`),
/// so its counters keep their name when policies are added before it.
fn attachment(path: &FieldPath) -> String {
    let mut kept = FieldPath::root();
    let mut after_policies = false;
    for segment in path.segments() {
        match segment {
            Segment::Index { id: None, .. } if after_policies => {}
            Segment::Key(key) => kept = kept.key(key),
            Segment::Index { index, id: Some(id) } => kept = kept.item(*index, id),
            Segment::Index { index, id: None } => kept = kept.index(*index),
        }
        after_policies = matches!(segment, Segment::Key(key) if key.ends_with("policies"));
    }
    kept.to_string()
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
    /// `RateLimit-Policy` value.
    policy_header: HeaderValue,
    label: String,
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
        let window_seconds = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        let policy_header = HeaderValue::from_str(&format!("\"{label}\";q={limit};w={}", window_seconds.max(1)))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        let group_part = group.map_or(String::new(), |group| format!(":g={}", group.group));
        Self {
            algorithm: config.algorithm,
            limit,
            window,
            interval,
            burst,
            nodelay: config.nodelay,
            prefix: format!("rl:{namespace}:{}{group_part}:", config.algorithm.name()),
            policy_header,
            label: label.to_owned(),
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

/// Logs store failures at most once per [`WARN_EVERY`], with how many were not logged.
#[derive(Default)]
struct WarnThrottle {
    last: AtomicU64,
    suppressed: AtomicU64,
}

/// Least time between two warnings about store failures of one policy.
const WARN_EVERY: StdDuration = StdDuration::from_secs(10);

static PROCESS_START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

impl WarnThrottle {
    fn warn(&self, error: &StoreError, action: &'static str) {
        let now = u64::try_from(PROCESS_START.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || now.saturating_sub(last) >= every;
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(error = %error, action, suppressed, "rate limit store failed; applying on_store_error");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs per request: builds one key (one allocation), one store call (a shard lock in memory,
/// one round trip to Redis), and formats headers only when they are sent.
struct CompiledRateLimit {
    key: Option<LimitKey>,
    by_credential: bool,
    default: CompiledLimit,
    groups: Vec<(String, CompiledLimit)>,
    store: Arc<dyn CounterStore>,
    on_store_error: OnStoreError,
    headers: HeaderStyle,
    metrics: StoreMetrics,
    warnings: WarnThrottle,
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
        let value = self.key.as_ref().map(|key| key.value(request, exchange));
        let shared: &[u8] = value.as_ref().map_or(&[], |value| value.as_bytes());
        let with_credential;
        let bytes = if self.by_credential {
            let mut bytes = shared.to_vec();
            match &exchange.identity {
                Some(identity) => {
                    bytes.push(b'k');
                    bytes.extend_from_slice(identity.credential_id.as_bytes());
                }
                None => {
                    bytes.push(b'i');
                    bytes.extend_from_slice(exchange.client_addr.ip().to_canonical().to_string().as_bytes());
                }
            }
            with_credential = bytes;
            &with_credential[..]
        } else {
            shared
        };
        // Keys go to Redis and logs as text; a long one (a header's value) is digested so a
        // client cannot make Gantry store kilobytes per key.
        let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut key = String::with_capacity(limit.prefix.len() + 4 + bytes.len().min(48) * 4 / 3);
        key.push_str(&limit.prefix);
        if bytes.len() > 48 {
            engine.encode_string(Sha256::digest(bytes), &mut key);
        } else {
            engine.encode_string(bytes, &mut key);
        }
        key
    }

    fn verdict(&self, limit: &CompiledLimit, result: Result<Decision, StoreError>) -> Verdict {
        let decision = match result {
            Ok(decision) => decision,
            Err(error) => return self.store_failed(&error),
        };
        let headers = self.headers(limit, &decision);
        if decision.allowed {
            return Verdict::Continue(headers, limit.delay(&decision));
        }
        tracing::debug!(limit = limit.limit, policy = %limit.label, "rate limited");
        let retry_after = whole_seconds(decision.retry_after).max(1);
        let detail = format!(
            "at most {} requests per {} are allowed; retry in {retry_after} s",
            limit.limit,
            Duration(limit.window)
        );
        let mut response =
            problem_response(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too Many Requests", Some(&detail));
        let response_headers = response.headers_mut();
        response_headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        for (name, value) in headers {
            response_headers.insert(name, value);
        }
        Verdict::Respond(response)
    }

    fn store_failed(&self, error: &StoreError) -> Verdict {
        let action = match self.on_store_error {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        };
        self.metrics.count_error(RateLimit::NAME, self.store.name(), action);
        self.warnings.warn(error, action);
        match self.on_store_error {
            OnStoreError::Allow => Verdict::Continue(Vec::new(), StdDuration::ZERO),
            OnStoreError::Deny => {
                let mut response = problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate-limit-unavailable",
                    "Service Unavailable",
                    Some("the rate limit cannot be checked right now"),
                );
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
                Verdict::Respond(response)
            }
        }
    }

    fn headers(&self, limit: &CompiledLimit, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        let reset = whole_seconds(decision.reset_after);
        let mut headers = Vec::new();
        if matches!(self.headers, HeaderStyle::Ietf | HeaderStyle::Both) {
            // `"<name>";r=<remaining>;t=<reset>`, written without the formatting machinery:
            // this runs for every admitted request.
            let mut state = Vec::with_capacity(limit.label.len() + 48);
            state.push(b'"');
            state.extend_from_slice(limit.label.as_bytes());
            state.extend_from_slice(b"\";r=");
            push_decimal(&mut state, decision.remaining);
            state.extend_from_slice(b";t=");
            push_decimal(&mut state, reset);
            headers.push((HeaderName::from_static("ratelimit-policy"), limit.policy_header.clone()));
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
                headers.push((HeaderName::from_static("ratelimit"), value));
            }
        }
        if matches!(self.headers, HeaderStyle::Legacy | HeaderStyle::Both) {
            headers.push((HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(limit.limit)));
            headers.push((HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(decision.remaining)));
            headers.push((HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(reset)));
        }
        headers
    }
}

/// Appends `number` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut number: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Seconds, rounded up: a client that waits this long is never early.
fn whole_seconds(duration: StdDuration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
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
            for (name, value) in headers {
                response.headers.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
