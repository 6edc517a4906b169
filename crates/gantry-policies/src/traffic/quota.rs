#![doc = include_str!("quota.md")]

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use gantry_state::{CounterStore, Decision, Hit, StoreError};
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, StatusCode};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};
use schemars::JsonSchema;
use serde::Deserialize;

use super::limit_headers::{add_headers, whole_seconds, HeaderStyle, LegacyNames, LimitHeaders};
use super::limit_key::{KeyPart, LimitKey};
use super::limit_store::{attachment, check_name, store_key, OnStoreError, StoreFailures, StoreKind};

/// Settings of `quota`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests allowed per `period`, more than 0.
    pub limit: u64,
    /// The calendar period `limit` applies to: `day`, `week` (Monday to Sunday) or `month`,
    /// from local midnight to local midnight in `time_zone`.
    pub period: Period,
    /// The IANA time zone whose calendar sets where periods begin and end (`Europe/Berlin`,
    /// `America/New_York`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// What requests are counted by: a list of `route`, `consumer`, `credential`, `ip`,
    /// `{header: <name>}` and (in a consumer group's policies) `consumer_group`, all of which
    /// together make a request's key. `consumer`, `credential` and a header fall back to the
    /// client IP address when absent.
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    /// Where counts are kept: `memory` (this process; lost when it stops) or `redis` (every
    /// process that shares `node.stores.redis`; kept across gateway restarts).
    #[serde(default)]
    pub store: StoreKind,
    /// What to do when the store fails (Redis down or slow): `allow` the request uncounted, or
    /// `deny` it with 503.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Which headers tell clients about the quota: `ietf` (`RateLimit-Policy` and `RateLimit`),
    /// `legacy` (`X-RateLimit-Limit-Day`, `-Remaining-Day`, `-Reset-Day`, or `-Week`, `-Month`),
    /// `both` or `none`.
    #[serde(default)]
    pub headers: HeaderStyle,
    /// The quota's name: the policy in `RateLimit-Policy`, and the counts' name. Quotas of the
    /// same name share counts, wherever they are attached. Default: counts of their own, named
    /// after where the policy is attached; `quota` in headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A calendar period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// From local midnight to the next (23 or 25 hours on days of a daylight saving change).
    Day,
    /// From Monday's local midnight to the next Monday's.
    Week,
    /// From the first day of the month's local midnight to the next month's.
    Month,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// Kong's names for limits per calendar unit.
    fn legacy_names(self) -> LegacyNames {
        let [limit, remaining, reset] = match self {
            Period::Day => ["x-ratelimit-limit-day", "x-ratelimit-remaining-day", "x-ratelimit-reset-day"],
            Period::Week => ["x-ratelimit-limit-week", "x-ratelimit-remaining-week", "x-ratelimit-reset-week"],
            Period::Month => ["x-ratelimit-limit-month", "x-ratelimit-remaining-month", "x-ratelimit-reset-month"],
        };
        LegacyNames {
            limit: HeaderName::from_static(limit),
            remaining: HeaderName::from_static(remaining),
            reset: HeaderName::from_static(reset),
        }
    }

    /// The first day of the period holding `day`.
    fn first_day(self, day: Date) -> Result<Date, jiff::Error> {
        match self {
            Period::Day => Ok(day),
            Period::Week => day.checked_sub(i64::from(day.weekday().to_monday_zero_offset()).days()),
            Period::Month => Ok(day.first_of_month()),
        }
    }

    /// The first day of the period after the one starting on `first`.
    fn next_first_day(self, first: Date) -> Result<Date, jiff::Error> {
        match self {
            Period::Day => first.tomorrow(),
            Period::Week => first.checked_add(1.week()),
            Period::Month => first.checked_add(1.month()),
        }
    }
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::Consumer]
}

/// The largest `limit`: Redis scripts count in 64-bit floating point, exact up to 2^53.
const MAX_LIMIT: u64 = 1_000_000_000_000_000;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.limit == 0 {
            errors.push(path.key("limit"), "must be more than 0 (to refuse every request, use `mock_response`)");
        } else if self.limit > MAX_LIMIT {
            errors.push(path.key("limit"), format!("must be at most {MAX_LIMIT}"));
        }
        check_name(self.name.as_deref(), &path.key("name"), errors);
    }
}

/// Factory of the `quota` policy.
#[derive(Debug)]
pub struct Quota;

impl PolicyFactory for Quota {
    const NAME: &'static str = "quota";
    const STAGE: Stage = Stage::Traffic;
    const DOCS: &'static str = include_str!("quota.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(CompiledQuota::compile(config, path, context, Arc::new(Timestamp::now))?))
    }
}

/// Where the policy reads the time: the system clock, or one moved by hand in tests.
type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// One calendar period of one quota, as instants.
#[derive(Clone, Debug, PartialEq)]
struct Bounds {
    /// Its first day, in the time zone.
    first_day: Date,
    /// Its first instant.
    start: Timestamp,
    /// The next period's first instant.
    end: ZonedDateTime,
}

/// The period of kind `period` holding `now` in `time_zone`. A day starts at the first instant
/// of its date, which is midnight unless a daylight saving change skips midnight.
fn bounds(period: Period, time_zone: &TimeZone, now: Timestamp) -> Result<Bounds, jiff::Error> {
    let today = now.to_zoned_datetime(time_zone.clone()).date();
    let first_day = period.first_day(today)?;
    // A date at a time zone's midnight is its first instant: a skipped midnight resolves to
    // the end of the gap, a repeated one to its first occurrence.
    let start = first_day.to_zoned_datetime(time_zone.clone())?.timestamp();
    let end = period.next_first_day(first_day)?.to_zoned_datetime(time_zone.clone())?;
    Ok(Bounds { first_day, start, end })
}

/// What the policy keeps of the period it is counting, replaced when the period is over.
struct CurrentPeriod {
    start: Timestamp,
    end: Timestamp,
    /// Prefix of the period's store keys: the quota's, then the first day.
    key_prefix: String,
    headers: LimitHeaders,
    /// When the next period begins, in local time, for the refusal's text.
    renews_at: String,
}

/// Runs per request: reads the clock, compares it with the cached period's bounds (computed
/// again only when a period ends), builds one key and makes one store call.
struct CompiledQuota {
    limit: u64,
    period: Period,
    time_zone: TimeZone,
    time_zone_name: String,
    key: LimitKey,
    /// `quota:<name or attachment>:<period>:`.
    prefix: String,
    label: String,
    store: Arc<dyn CounterStore>,
    headers: HeaderStyle,
    failures: StoreFailures,
    clock: WallClock,
    /// The period counted now, once a request came.
    current: ArcSwapOption<CurrentPeriod>,
}

impl CompiledQuota {
    fn compile(
        config: Config,
        path: &FieldPath,
        context: &BuildContext<'_>,
        clock: WallClock,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let key = LimitKey::compile(&config.key, &path.key("key"), &mut errors);
        let time_zone_name = config.time_zone.trim().to_owned();
        let time_zone = match jiff::tz::db().get(&time_zone_name) {
            Ok(time_zone) => Some(time_zone),
            Err(_) => {
                errors.push(
                    path.key("time_zone"),
                    format!(
                        "`{}` is not a time zone of the IANA database: write a name such as `Europe/Berlin` or `UTC`",
                        config.time_zone
                    ),
                );
                None
            }
        };
        let store = config.store.select(context, &path.key("store"), &mut errors);
        errors.into_result(())?;
        let (Some(time_zone), Some(store)) = (time_zone, store) else {
            return Err(ConfigErrors::one(path.clone(), "no time zone or store"));
        };
        let namespace = config.name.clone().unwrap_or_else(|| attachment(path));
        Ok(Self {
            limit: config.limit,
            period: config.period,
            time_zone,
            time_zone_name,
            key,
            prefix: format!("quota:{namespace}:{}:", config.period.name()),
            label: config.name.unwrap_or_else(|| "quota".to_owned()),
            store,
            headers: config.headers,
            failures: StoreFailures::new(
                Quota::NAME,
                config.on_store_error,
                context.stores.metrics().clone(),
                "quota-unavailable",
                "the quota cannot be checked right now",
            ),
            clock,
            current: ArcSwapOption::empty(),
        })
    }

    fn period_containing(&self, now: Timestamp) -> Result<CurrentPeriod, jiff::Error> {
        let bounds = bounds(self.period, &self.time_zone, now)?;
        let end = bounds.end.timestamp();
        let length =
            Duration::from_micros(u64::try_from(end.as_microsecond() - bounds.start.as_microsecond()).unwrap_or(0));
        Ok(CurrentPeriod {
            start: bounds.start,
            end,
            key_prefix: format!("{}{}:", self.prefix, bounds.first_day),
            headers: LimitHeaders::new(&self.label, self.limit, whole_seconds(length), self.period.legacy_names()),
            renews_at: bounds.end.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        })
    }

    /// The period holding `now`: the cached one, or the next one computed and cached.
    fn period_at(&self, now: Timestamp) -> Result<Arc<CurrentPeriod>, jiff::Error> {
        if let Some(current) = self.current.load_full() {
            if current.start <= now && now < current.end {
                return Ok(current);
            }
        }
        let next = Arc::new(self.period_containing(now)?);
        self.current.store(Some(next.clone()));
        Ok(next)
    }

    fn flow(&self, period: &CurrentPeriod, result: Result<Decision, StoreError>, exchange: &mut Exchange) -> Flow {
        let decision = match result {
            Ok(decision) => decision,
            Err(error) => return self.store_failed(&error),
        };
        let headers = period.headers.for_decision(self.headers, &decision);
        if decision.allowed {
            if !headers.is_empty() {
                exchange.extensions.insert(PendingHeaders(headers));
            }
            return Flow::Continue;
        }
        tracing::debug!(limit = self.limit, period = self.period.name(), policy = %self.label, "quota exceeded");
        let retry_after = whole_seconds(decision.retry_after).max(1);
        let detail = format!(
            "the quota of {} requests per {} is used up; it renews at {} ({})",
            self.limit,
            self.period.name(),
            period.renews_at,
            self.time_zone_name
        );
        let mut response: PolicyResponse =
            problem_response(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded", "Quota exceeded", Some(&detail));
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
        add_headers(response.headers_mut(), headers);
        Flow::Respond(response)
    }

    fn store_failed(&self, error: &StoreError) -> Flow {
        match self.failures.handle(self.store.name(), error) {
            None => Flow::Continue,
            Some(response) => Flow::Respond(response),
        }
    }
}

/// Headers for an admitted request's response, kept in the exchange until it comes.
#[derive(Clone, Debug)]
struct PendingHeaders(Vec<(HeaderName, HeaderValue)>);

impl Policy for CompiledQuota {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: self.headers != HeaderStyle::None, log: false }
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let now = (self.clock)();
        let period = match self.period_at(now) {
            Ok(period) => period,
            Err(err) => {
                // Only near the ends of the calendar jiff supports (years ±9999).
                tracing::error!(error = %err, "quota period cannot be computed");
                let error = StoreError::Failed { store: self.store.name(), reason: err.to_string() };
                return Hook::Done(self.store_failed(&error));
            }
        };
        let ends_in =
            Duration::from_micros(u64::try_from(period.end.as_microsecond() - now.as_microsecond()).unwrap_or(0));
        let key = store_key(&period.key_prefix, self.key.value(request, exchange).as_bytes());
        // The memory store decides at once: no future is allocated.
        let ready = match self.store.period_hit(&key, ends_in, self.limit, 1) {
            Hit::Ready(result) => Some(result),
            Hit::Pending(_) => None,
        };
        if let Some(result) = ready {
            return Hook::Done(self.flow(&period, result, exchange));
        }
        Hook::Wait(Box::pin(async move {
            let result = self.store.period_hit(&key, ends_in, self.limit, 1).resolve().await;
            self.flow(&period, result, exchange)
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
