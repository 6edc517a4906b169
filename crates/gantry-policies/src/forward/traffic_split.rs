#![doc = include_str!("traffic_split.md")]

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath, ValueMatchSpec};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::HeaderName;
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::identity::request_credentials::cookie;

/// Settings of `traffic_split`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rules tried in order: the first whose `match` holds splits the request among its
    /// `upstreams` by weight. A request no rule matches goes to the route's upstream.
    pub rules: Vec<Rule>,
}

/// Which requests a rule takes, and where they go.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Conditions on the request's headers, cookies and query, all of which must hold;
    /// without any, the rule takes every request.
    #[serde(default, rename = "match")]
    pub conditions: Conditions,
    /// The upstreams the rule's requests are split among, `{upstream: <id>, weight: <n>}`;
    /// an entry without `upstream` stands for the route's own upstream.
    pub upstreams: Vec<WeightedUpstream>,
}

/// Conditions of a rule, each written as a route's `headers` conditions are: a `name` and one
/// of `exact`, `regex` or `present`, and `invert` to negate it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Conditions on request headers (the first value of each).
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    /// Conditions on cookies of the `Cookie` header.
    #[serde(default)]
    pub cookies: Vec<ValueMatchSpec>,
    /// Conditions on query parameters (percent-decoded).
    #[serde(default)]
    pub query: Vec<ValueMatchSpec>,
}

/// One destination of a rule and its share.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstream {
    /// Id of an upstream; without it, the route's own upstream.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The entry's share of the rule's requests, relative to the other entries' weights
    /// (`0` sends it none).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Largest sum of a rule's weights: the length of its schedule, which repeats every that many
/// requests.
const MAX_TOTAL_WEIGHT: u64 = 10_000;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.rules.is_empty() {
            errors.push(path.key("rules"), "give at least one rule");
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let at = path.key("rules").index(index);
            if rule.upstreams.is_empty() {
                errors.push(at.key("upstreams"), "give at least one upstream");
                continue;
            }
            let total: u64 = rule.upstreams.iter().map(|entry| u64::from(entry.weight)).sum();
            if total == 0 {
                errors.push(at.key("upstreams"), "every weight is 0: give at least one upstream a weight above 0");
            } else if total > MAX_TOTAL_WEIGHT {
                errors.push(
                    at.key("upstreams"),
                    format!(
                        "the weights add up to {total}; keep them at most {MAX_TOTAL_WEIGHT} (they are proportions: 90 and 10 split as 9 and 1 do)"
                    ),
                );
            }
        }
    }
}

/// Factory of the `traffic_split` policy.
#[derive(Debug)]
pub struct TrafficSplit;

impl PolicyFactory for TrafficSplit {
    const NAME: &'static str = "traffic_split";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("traffic_split.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let rules = ConfigErrors::collect(|errors| {
            config
                .rules
                .iter()
                .enumerate()
                .map(|(index, rule)| compile_rule(rule, &path.key("rules").index(index), context, errors))
                .collect()
        })?;
        Ok(Arc::new(CompiledTrafficSplit { rules }))
    }
}

fn compile_rule(rule: &Rule, path: &FieldPath, context: &BuildContext<'_>, errors: &mut ConfigErrors) -> CompiledRule {
    let at = path.key("match");
    let mut conditions = Vec::new();
    for (index, spec) in rule.conditions.headers.iter().enumerate() {
        let at = at.key("headers").index(index);
        match HeaderName::from_bytes(spec.name.as_bytes()) {
            Ok(name) => conditions.extend(compile_condition(spec, Source::Header(name), &at, errors)),
            Err(_) => errors.push(at.key("name"), format!("`{}` is not a valid header name", spec.name)),
        }
    }
    for (index, spec) in rule.conditions.cookies.iter().enumerate() {
        let source = Source::Cookie(spec.name.clone());
        conditions.extend(compile_condition(spec, source, &at.key("cookies").index(index), errors));
    }
    for (index, spec) in rule.conditions.query.iter().enumerate() {
        let source = Source::Query(spec.name.clone());
        conditions.extend(compile_condition(spec, source, &at.key("query").index(index), errors));
    }
    let mut targets = Vec::with_capacity(rule.upstreams.len());
    for (index, entry) in rule.upstreams.iter().enumerate() {
        let Some(id) = &entry.upstream else {
            targets.push(None);
            continue;
        };
        if !context.spec.upstreams.iter().any(|upstream| upstream.id == *id) {
            let known: Vec<&str> = context.spec.upstreams.iter().map(|upstream| upstream.id.as_str()).collect();
            errors.push(
                path.key("upstreams").index(index).key("upstream"),
                format!("unknown upstream `{id}`; configured upstreams: {}", known.join(", ")),
            );
        }
        targets.push(Some(Arc::from(id.as_str())));
    }
    let weights: Vec<u32> = rule.upstreams.iter().map(|entry| entry.weight).collect();
    CompiledRule { conditions, targets, schedule: smooth_weighted_schedule(&weights), next: AtomicUsize::new(0) }
}

fn compile_condition(
    spec: &ValueMatchSpec,
    source: Source,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Option<Condition> {
    let given = [spec.exact.is_some(), spec.regex.is_some(), spec.present.is_some()];
    if given.iter().filter(|set| **set).count() != 1 {
        errors.push(path.clone(), "give exactly one of `exact`, `regex` or `present`");
        return None;
    }
    let test = if let Some(exact) = &spec.exact {
        ValueTest::Exact(exact.clone())
    } else if let Some(pattern) = &spec.regex {
        match Regex::new(pattern) {
            Ok(regex) => ValueTest::Regex(regex),
            Err(err) => {
                errors.push(path.key("regex"), format!("invalid regular expression: {err}"));
                return None;
            }
        }
    } else {
        ValueTest::Present(spec.present.unwrap_or(true))
    };
    Some(Condition { source, test, invert: spec.invert })
}

/// Runs per request: tests the rules' conditions in order (borrowing from the request), then
/// one atomic increment picks the upstream from the matching rule's schedule.
struct CompiledTrafficSplit {
    rules: Vec<CompiledRule>,
}

struct CompiledRule {
    conditions: Vec<Condition>,
    /// `None` stands for the route's own upstream.
    targets: Vec<Option<Arc<str>>>,
    /// Positions in `targets`: one cycle of smooth weighted round robin.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

struct Condition {
    source: Source,
    test: ValueTest,
    invert: bool,
}

enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

enum ValueTest {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl Condition {
    fn holds(&self, request: &RequestParts) -> bool {
        let value: Option<Cow<'_, str>> = match &self.source {
            Source::Header(name) => request.headers.get(name).map(|value| String::from_utf8_lossy(value.as_bytes())),
            Source::Cookie(name) => cookie(request, name).map(Cow::Borrowed),
            Source::Query(name) => request.uri.query().and_then(|query| {
                form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value)
            }),
        };
        let holds = match (&self.test, value) {
            (ValueTest::Present(expected), value) => value.is_some() == *expected,
            (ValueTest::Exact(expected), Some(value)) => *value == **expected,
            (ValueTest::Regex(regex), Some(value)) => regex.is_match(&value),
            (_, None) => false,
        };
        holds != self.invert
    }
}

impl CompiledRule {
    fn choose(&self) -> Option<Arc<str>> {
        // `validate` refused a rule without a weight above 0, so the schedule is never empty
        // once built; an empty one keeps the route's upstream.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let position = *self.schedule.get(turn % self.schedule.len().max(1))?;
        self.targets[position].clone()
    }
}

impl Policy for CompiledTrafficSplit {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if let Some(rule) =
            self.rules.iter().find(|rule| rule.conditions.iter().all(|condition| condition.holds(request)))
        {
            exchange.upstream = rule.choose();
        }
        Hook::Done(Flow::Continue)
    }
}

/// One cycle of nginx's smooth weighted round robin over `weights` (divided by their common
/// divisor first): each position appears `weight` times, spread out rather than in bursts, so
/// any stretch of requests is split close to the weights, and each full cycle exactly.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().copied().filter(|weight| *weight > 0).fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|weight| i64::from(weight / divisor)).collect();
    let total: i64 = reduced.iter().sum();
    if total <= 0 || total as u64 > MAX_TOTAL_WEIGHT {
        return Vec::new();
    }
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (value, weight) in current.iter_mut().zip(&reduced) {
            *value += weight;
        }
        // Ties go to the earlier entry, so the schedule is the same on every build.
        let Some((best, _)) = current.iter().enumerate().max_by_key(|(position, value)| (**value, -(*position as i64)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests;
