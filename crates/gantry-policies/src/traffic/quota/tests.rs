use std::sync::Mutex;

use gantry_config::{GatewaySpec, NodeSpec};
use gantry_policy_api::testing::{build_policy_with_stores, exchange_from, policy_path, request_parts, run_response};
use gantry_policy_api::{Consumer, ConsumerDirectory, Identity, RegisteredPolicy};
use gantry_state::Stores;

use super::*;

fn at(instant: &str) -> Timestamp {
    instant.parse().expect("an RFC 3339 instant")
}

fn zone(name: &str) -> TimeZone {
    jiff::tz::db().get(name).expect("a known time zone")
}

/// The period's first instant and the next one's, in UTC, and its length in hours.
fn period_of(period: Period, time_zone: &str, now: &str) -> (String, String, i64) {
    let bounds = bounds(period, &zone(time_zone), at(now)).expect("a period");
    let end = bounds.end.timestamp();
    let hours = (end.as_second() - bounds.start.as_second()) / 3600;
    (bounds.start.to_string(), end.to_string(), hours)
}

#[test]
fn a_day_runs_from_local_midnight_to_local_midnight_and_lasts_23_or_25_hours_across_daylight_saving() {
    // Berlin is UTC+1 in winter and UTC+2 in summer.
    assert_eq!(
        period_of(Period::Day, "Europe/Berlin", "2026-12-03T10:00:00Z"),
        ("2026-12-02T23:00:00Z".to_owned(), "2026-12-03T23:00:00Z".to_owned(), 24)
    );
    assert_eq!(
        period_of(Period::Day, "Europe/Berlin", "2026-12-03T23:00:00Z"),
        ("2026-12-03T23:00:00Z".to_owned(), "2026-12-04T23:00:00Z".to_owned(), 24),
        "local midnight belongs to the new day"
    );
    // Clocks go forward on Sunday 29 March 2026 (02:00 -> 03:00) and back on 25 October.
    assert_eq!(
        period_of(Period::Day, "Europe/Berlin", "2026-03-29T12:00:00Z"),
        ("2026-03-28T23:00:00Z".to_owned(), "2026-03-29T22:00:00Z".to_owned(), 23)
    );
    assert_eq!(
        period_of(Period::Day, "Europe/Berlin", "2026-10-25T12:00:00Z"),
        ("2026-10-24T22:00:00Z".to_owned(), "2026-10-25T23:00:00Z".to_owned(), 25)
    );
    assert_eq!(
        period_of(Period::Day, "UTC", "2026-03-29T12:00:00Z"),
        ("2026-03-29T00:00:00Z".to_owned(), "2026-03-30T00:00:00Z".to_owned(), 24)
    );
}

#[test]
fn a_day_whose_midnight_is_skipped_begins_at_the_first_local_time_after_the_change() {
    // São Paulo moved its clocks from 00:00 to 01:00 on 18 October 2015 (UTC-3 to UTC-2).
    assert_eq!(
        period_of(Period::Day, "America/Sao_Paulo", "2015-10-18T15:00:00Z"),
        ("2015-10-18T03:00:00Z".to_owned(), "2015-10-19T02:00:00Z".to_owned(), 23)
    );
}

#[test]
fn a_week_runs_from_monday_to_monday_including_a_daylight_saving_change() {
    // Thursday 3 December 2026: the week of Monday 30 November.
    assert_eq!(
        period_of(Period::Week, "Europe/Berlin", "2026-12-03T10:00:00Z"),
        ("2026-11-29T23:00:00Z".to_owned(), "2026-12-06T23:00:00Z".to_owned(), 168)
    );
    // A Sunday evening belongs to the week that began on the Monday before it.
    let sunday = period_of(Period::Week, "Europe/Berlin", "2026-12-06T22:59:59Z");
    assert_eq!(sunday.0, "2026-11-29T23:00:00Z");
    // The week holding 29 March 2026 is one hour short.
    assert_eq!(
        period_of(Period::Week, "Europe/Berlin", "2026-03-29T12:00:00Z"),
        ("2026-03-22T23:00:00Z".to_owned(), "2026-03-29T22:00:00Z".to_owned(), 167)
    );
}

#[test]
fn a_month_runs_from_the_first_to_the_first_across_month_and_year_ends() {
    assert_eq!(
        period_of(Period::Month, "Europe/Berlin", "2026-02-28T22:59:59Z"),
        ("2026-01-31T23:00:00Z".to_owned(), "2026-02-28T23:00:00Z".to_owned(), 28 * 24)
    );
    assert_eq!(
        period_of(Period::Month, "Europe/Berlin", "2026-02-28T23:00:00Z").0,
        "2026-02-28T23:00:00Z",
        "March has begun in Berlin while it is still February in UTC"
    );
    // March 2026 holds the change to summer time: 31 days less an hour.
    assert_eq!(period_of(Period::Month, "Europe/Berlin", "2026-03-15T00:00:00Z").2, 31 * 24 - 1);
    assert_eq!(
        period_of(Period::Month, "Europe/Berlin", "2026-12-31T23:30:00Z"),
        ("2026-12-31T23:00:00Z".to_owned(), "2027-01-31T23:00:00Z".to_owned(), 31 * 24),
        "January 2027 in Berlin"
    );
    assert_eq!(
        period_of(Period::Month, "UTC", "2026-12-31T23:30:00Z"),
        ("2026-12-01T00:00:00Z".to_owned(), "2027-01-01T00:00:00Z".to_owned(), 31 * 24),
        "still December in UTC"
    );
}

/// A wall clock moved by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<Timestamp>>);

impl TestClock {
    fn at(instant: &str) -> Self {
        Self(Arc::new(Mutex::new(self::at(instant))))
    }

    fn set(&self, instant: &str) {
        *self.0.lock().expect("clock") = self::at(instant);
    }

    fn wall(&self) -> WallClock {
        let now = self.0.clone();
        Arc::new(move || *now.lock().expect("clock"))
    }
}

/// Settings as JSON, parsed by the gateway's own loader from YAML.
fn settings_json(settings: &str) -> serde_json::Value {
    let indented: String = settings.lines().map(|line| format!("      {line}\n")).collect();
    let spec = gantry_config::load_str(&format!("global_policies:\n  - quota:\n{indented}"))
        .unwrap_or_else(|errors| panic!("{errors}"));
    spec.global_policies.into_iter().next().map(|policy| policy.config).expect("one policy")
}

/// The policy of YAML `settings`, reading the time from `clock`, counting in `stores`.
fn quota_at(settings: &str, clock: &TestClock, stores: &Stores) -> CompiledQuota {
    let config: Config = serde_json::from_value(settings_json(settings)).expect("settings");
    let path = policy_path("quota");
    let mut errors = ConfigErrors::default();
    config.validate(&path, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    let (spec, consumers) = (GatewaySpec::default(), ConsumerDirectory::default());
    let context = BuildContext::new(&spec, &consumers).with_stores(stores);
    CompiledQuota::compile(config, &path, &context, clock.wall()).unwrap_or_else(|errors| panic!("{errors}"))
}

fn send(policy: &dyn Policy, consumer: Option<&str>) -> (Flow, Exchange) {
    let mut exchange = exchange_from("10.0.0.1:1");
    if let Some(id) = consumer {
        let credential = format!("{id}:key_auth");
        exchange.authenticate(Identity::credential(Arc::new(Consumer::named(id)), credential.into(), "key_auth"));
    }
    let mut request = request_parts(http::Request::get("/orders").body(()).expect("request"));
    let flow = gantry_policy_api::testing::run_request(policy, &mut request, &mut exchange);
    (flow, exchange)
}

fn admitted(policy: &dyn Policy, consumer: Option<&str>, attempts: usize) -> usize {
    (0..attempts).filter(|_| matches!(send(policy, consumer).0, Flow::Continue)).count()
}

fn refusal(flow: Flow) -> PolicyResponse {
    match flow {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("the request was admitted"),
    }
}

const DAILY_BERLIN: &str = "limit: 3\nperiod: day\ntime_zone: Europe/Berlin";

#[test]
fn admits_the_daily_quota_then_answers_429_until_local_midnight() {
    // 17:00 in Berlin: 7 hours to midnight.
    let clock = TestClock::at("2026-12-03T16:00:00Z");
    let policy = quota_at(DAILY_BERLIN, &clock, &Stores::in_memory());
    assert_eq!(admitted(&policy, Some("alice"), 3), 3);
    clock.set("2026-12-03T16:00:00.5Z");
    let response = refusal(send(&policy, Some("alice")).0);
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "25200", "7 h, the half second rounded up");
    assert_eq!(response.headers()["ratelimit-policy"], "\"quota\";q=3;w=86400");
    assert_eq!(response.headers()["ratelimit"], "\"quota\";r=0;t=25200");
    assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["type"], "https://gantry.dev/problems/quota-exceeded");
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["detail"],
        "the quota of 3 requests per day is used up; it renews at 2026-12-04T00:00:00+01:00 (Europe/Berlin)"
    );

    assert_eq!(admitted(&policy, Some("bob"), 5), 3, "bob has his own quota");
    clock.set("2026-12-03T22:59:59Z");
    assert_eq!(admitted(&policy, Some("alice"), 1), 0, "one second before midnight in Berlin");
    clock.set("2026-12-03T23:00:00Z");
    assert_eq!(admitted(&policy, Some("alice"), 5), 3, "a new day in Berlin, though not in UTC");
}

#[test]
fn an_admitted_response_carries_the_remaining_quota_and_the_seconds_to_the_period_end() {
    let clock = TestClock::at("2026-03-29T08:00:00Z");
    let policy = quota_at(DAILY_BERLIN, &clock, &Stores::in_memory());
    assert_eq!(policy.hooks(), Hooks { request: true, response: true, log: false });
    let (flow, mut exchange) = send(&policy, Some("alice"));
    assert!(matches!(flow, Flow::Continue));
    let response = run_response(&policy, http::Response::new(()), &mut exchange);
    // The 23-hour day of the change to summer time; 10:00 local, 14 hours to midnight.
    assert_eq!(response.headers["ratelimit-policy"], "\"quota\";q=3;w=82800");
    assert_eq!(response.headers["ratelimit"], "\"quota\";r=2;t=50400");
    assert!(response.headers.get("x-ratelimit-limit-day").is_none());
}

#[test]
fn adds_its_headers_beside_those_of_a_rate_limit_and_legacy_ones_name_the_period() {
    let clock = TestClock::at("2026-12-03T12:00:00Z");
    let policy = quota_at("limit: 5\nperiod: month\nheaders: both\nname: plan", &clock, &Stores::in_memory());
    let (_, mut exchange) = send(&policy, None);
    let mut upstream = http::Response::new(());
    upstream.headers_mut().insert("ratelimit", HeaderValue::from_static("\"default\";r=59;t=60"));
    let response = run_response(&policy, upstream, &mut exchange);
    let listed: Vec<&str> =
        response.headers.get_all("ratelimit").iter().map(|value| value.to_str().expect("ascii")).collect();
    assert_eq!(listed, ["\"default\";r=59;t=60", "\"plan\";r=4;t=2462400"]);
    assert_eq!(response.headers["ratelimit-policy"], "\"plan\";q=5;w=2678400");
    assert_eq!(response.headers["x-ratelimit-limit-month"], "5");
    assert_eq!(response.headers["x-ratelimit-remaining-month"], "4");
    assert_eq!(response.headers["x-ratelimit-reset-month"], "2462400", "28.5 days to January");

    let quiet = quota_at("limit: 1\nperiod: week\nheaders: none", &clock, &Stores::in_memory());
    assert_eq!(quiet.hooks(), Hooks::REQUEST);
    send(&quiet, None);
    let response = refusal(send(&quiet, None).0);
    // Thursday noon UTC to Monday midnight UTC: 3.5 days.
    assert_eq!(response.headers()[RETRY_AFTER], "302400", "a refusal always says when to retry");
    assert!(response.headers().get("ratelimit").is_none());
}

#[test]
fn names_each_period_in_the_store_key() {
    let clock = TestClock::at("2026-12-03T12:00:00Z");
    let policy = quota_at(DAILY_BERLIN, &clock, &Stores::in_memory());
    let today = policy.period_at(at("2026-12-03T12:00:00Z")).expect("a period");
    assert_eq!(today.key_prefix, "quota:global_policies.quota:day:2026-12-03:");
    assert_eq!(today.renews_at, "2026-12-04T00:00:00+01:00");
    let tomorrow = policy.period_at(at("2026-12-03T23:00:00Z")).expect("a period");
    assert_eq!(tomorrow.key_prefix, "quota:global_policies.quota:day:2026-12-04:");
    let named = quota_at("limit: 1\nperiod: month\nname: plan", &clock, &Stores::in_memory());
    assert_eq!(
        named.period_at(at("2026-12-03T12:00:00Z")).expect("a period").key_prefix,
        "quota:plan:month:2026-12-01:"
    );
}

#[test]
fn counts_survive_a_rebuild_with_the_same_stores_even_with_a_new_limit() {
    let clock = TestClock::at("2026-12-03T12:00:00Z");
    let stores = Stores::in_memory();
    let before = quota_at("limit: 3\nperiod: day", &clock, &stores);
    assert_eq!(admitted(&before, Some("alice"), 2), 2);
    let after = quota_at("limit: 4\nperiod: day", &clock, &stores);
    assert_eq!(admitted(&after, Some("alice"), 5), 2, "2 counted before, 2 more fit under 4");
}

fn stores_with_dead_redis() -> Stores {
    let node: NodeSpec = gantry_config::load_str(
        "node:\n  stores:\n    redis: {urls: ['redis://127.0.0.1:1'], timeout: 200ms, connect_timeout: 200ms}\n",
    )
    .expect("valid node settings")
    .node
    .expect("node settings");
    Stores::from_node(Some(&node)).expect("valid store settings")
}

#[tokio::test]
async fn lets_requests_through_uncounted_or_answers_503_when_the_store_fails() {
    let clock = TestClock::at("2026-12-03T12:00:00Z");
    let stores = stores_with_dead_redis();
    let open = quota_at("limit: 1\nperiod: day\nstore: redis", &clock, &stores);
    for _ in 0..2 {
        let mut exchange = exchange_from("10.0.0.1:1");
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        assert!(matches!(open.on_request(&mut request, &mut exchange).resolve().await, Flow::Continue));
        let response = run_response(&open, http::Response::new(()), &mut exchange);
        assert!(response.headers.get("ratelimit").is_none(), "no headers without a decision");
    }
    assert_eq!(stores.metrics().errors("quota", "redis", "allow"), 2);

    let closed = quota_at("limit: 1\nperiod: day\nstore: redis\non_store_error: deny", &clock, &stores);
    let mut exchange = exchange_from("10.0.0.1:1");
    let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
    let response = refusal(closed.on_request(&mut request, &mut exchange).resolve().await);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "1");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["type"], "https://gantry.dev/problems/quota-unavailable");
    assert_eq!(stores.metrics().errors("quota", "redis", "deny"), 1);
}

fn errors(settings: &str) -> Vec<String> {
    match build_policy_with_stores(RegisteredPolicy::of::<Quota>(), settings, "", &Stores::in_memory()) {
        Ok(_) => panic!("settings accepted that should be rejected:\n{settings}"),
        Err(errors) => errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect(),
    }
}

#[test]
fn rejects_bad_settings_at_their_field_paths() {
    let at = "global_policies[0].quota";
    let has = |settings: &str, field: &str, words: &str| {
        let found = errors(settings);
        let prefix = if field.is_empty() { at.to_owned() } else { format!("{at}.{field}") };
        assert!(found.iter().any(|e| e.starts_with(&prefix) && e.contains(words)), "{settings}: {found:?}");
    };
    has("limit: 0\nperiod: day", "limit: ", "more than 0");
    has("limit: 2000000000000000\nperiod: day", "limit: ", "at most");
    has("limit: 1\nperiod: fortnight", "period", "");
    has("limit: 1", "", "period");
    has("limit: 1\nperiod: day\ntime_zone: Europe/Atlantis", "time_zone: ", "`Europe/Atlantis` is not a time zone");
    has("limit: 1\nperiod: day\nkey: []", "key: ", "at least one part");
    has("limit: 1\nperiod: day\nkey: [{header: 'bad header'}]", "key[0].header: ", "not a valid header name");
    has("limit: 1\nperiod: day\nname: 'two words'", "name: ", "printable ASCII");
    has("limit: 1\nperiod: day\nstore: redis", "store: ", "`node.stores.redis`");
    has("limit: 1\nperiod: day\nwindow: 1d", "", "window");
}

#[test]
fn defaults_to_utc_per_consumer_in_memory_with_ietf_headers() {
    let config: Config = serde_json::from_value(settings_json("limit: 10\nperiod: month")).expect("settings");
    assert_eq!(config.time_zone, "UTC");
    assert_eq!(config.key, [KeyPart::Consumer]);
    assert_eq!(config.store, StoreKind::Memory);
    assert_eq!(config.on_store_error, OnStoreError::Allow);
    assert_eq!(config.headers, HeaderStyle::Ietf);
    assert_eq!(config.name, None);
}
