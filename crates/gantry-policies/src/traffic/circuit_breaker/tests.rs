//! Unit tests of `circuit_breaker` through its hooks, as the data plane calls them: the
//! request hook, then (with the forwarding outcome set) the response hook. Each test builds
//! its breakers at a path of its own: circuits are shared by configuration path (to survive
//! reloads), and tests run in parallel. The phases themselves are tested in `circuit.rs`.

use gantry_config::GatewaySpec;
use gantry_policy_api::testing::{build_policy, build_policy_error, request_parts, run_request, run_response};
use gantry_policy_api::{ConsumerDirectory, RegisteredPolicy};
use serde_json::json;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<CircuitBreaker>()
}

/// A configuration with the routes `a`, `b` and `metric` (which only the metric test uses,
/// since the metric reports every breaker's circuits of a route together).
fn spec() -> GatewaySpec {
    let mut yaml = String::from("upstreams:\n  - id: u\n    endpoints: [127.0.0.1:1]\nroutes:\n");
    for route in ["a", "b", "metric"] {
        yaml.push_str(&format!("  - id: {route}\n    paths: [/{route}]\n    upstream: u\n"));
    }
    gantry_config::load_str(&yaml).expect("test configuration")
}

/// Builds the breaker from `settings` at `global_policies[0].circuit_breaker` of a
/// configuration named `place` (a path of its own).
fn build_at(place: &str, settings: serde_json::Value) -> Arc<dyn Policy> {
    let spec = spec();
    let consumers = ConsumerDirectory::default();
    let path = FieldPath::root().key("policy_sets").item(0, place).key("policies").index(0).key("circuit_breaker");
    entry()
        .build(&settings, &path, &BuildContext::new(&spec, &consumers))
        .unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

/// Opens after 2 failures of the last 4 requests, for a minute.
fn small(extra: serde_json::Value) -> serde_json::Value {
    let mut settings = json!({"window": {"calls": 4}, "minimum_calls": 4, "open_for": "1m", "half_open_calls": 1});
    if let (Some(settings), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        settings.extend(extra.clone());
    }
    settings
}

fn exchange_on(route: &str) -> Exchange {
    Exchange::new("test-request".into(), route.into(), "10.0.0.1:1000".parse().expect("address"), false)
}

/// Runs one request of `route` through the breaker: `None` when it was refused, else the
/// outcome is reported to the response hook and the exchange given back.
fn forward(policy: &dyn Policy, route: &str, outcome: Option<ForwardOutcome>) -> Result<Exchange, Box<PolicyResponse>> {
    let mut exchange = exchange_on(route);
    let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
    if let Flow::Respond(response) = run_request(policy, &mut request, &mut exchange) {
        return Err(Box::new(response));
    }
    exchange.forward_outcome = outcome;
    let status = match outcome {
        Some(ForwardOutcome::Answered(status)) => status,
        Some(ForwardOutcome::Failed) => StatusCode::BAD_GATEWAY,
        None => StatusCode::UNAUTHORIZED,
    };
    run_response(policy, http::Response::builder().status(status).body(()).expect("response"), &mut exchange);
    Ok(exchange)
}

fn answered(status: u16) -> Option<ForwardOutcome> {
    Some(ForwardOutcome::Answered(StatusCode::from_u16(status).expect("status")))
}

fn is_open(policy: &dyn Policy, route: &str) -> bool {
    let mut exchange = exchange_on(route);
    let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
    match run_request(policy, &mut request, &mut exchange) {
        Flow::Respond(_) => true,
        Flow::Continue => {
            // Not a real request: give back any trial place it took.
            drop(exchange);
            false
        }
    }
}

#[test]
fn parses_the_defaults() {
    let config: Config = serde_json::from_value(json!({})).expect("defaults");
    assert_eq!(config.window, Window::Calls(100));
    assert_eq!(config.minimum_calls, 20);
    assert_eq!(config.failure_ratio, 0.5);
    assert_eq!(config.failure_statuses, [StatusPattern::Class(5)]);
    assert_eq!(config.open_for, Duration::from_secs(30));
    assert_eq!(config.half_open_calls, 5);
    assert!(config.fallback.is_none());
    build_policy(entry(), "").expect("the defaults are valid");
}

#[test]
fn parses_codes_and_classes_of_statuses_and_time_windows() {
    let config: Config = serde_json::from_value(json!({
        "window": {"duration": "30s"},
        "failure_statuses": [503, "4xx", "5XX", "429"]
    }))
    .expect("valid settings");
    assert_eq!(config.window, Window::Duration(Duration::from_secs(30)));
    assert_eq!(
        config.failure_statuses,
        [StatusPattern::Code(503), StatusPattern::Class(4), StatusPattern::Class(5), StatusPattern::Code(429)]
    );
}

#[test]
fn rejects_each_bad_setting_at_its_path() {
    let cases = [
        ("window: {calls: 0}", "window.calls"),
        ("window: {calls: 20000}", "window.calls"),
        ("window: {duration: 500ms}", "window.duration"),
        ("window: {requests: 5}", "window"),
        ("window: {calls: 10}\nminimum_calls: 11", "minimum_calls"),
        ("minimum_calls: 0", "minimum_calls"),
        ("failure_ratio: 0", "failure_ratio"),
        ("failure_ratio: 1.5", "failure_ratio"),
        ("failure_statuses: []", "failure_statuses"),
        ("failure_statuses: [5xx, 600]", "failure_statuses[1]"),
        ("failure_statuses: [6xx]", "failure_statuses[0]"),
        ("open_for: 0s", "open_for"),
        ("half_open_calls: 0", "half_open_calls"),
        ("fallback: {status: 99}", "fallback.status"),
        ("fallback: {headers: {'bad name': x}}", "fallback.headers.bad name"),
        ("fallback: {delay: 1s}", "fallback.delay"),
        ("threshold: 0.5", "threshold"),
    ];
    for (settings, field) in cases {
        let errors = build_policy_error(entry(), settings);
        let expected = format!("global_policies[0].circuit_breaker.{field}");
        assert!(
            errors.iter().any(|error| error.path.to_string() == expected),
            "`{settings}`: expected an error at {expected}, got {errors}"
        );
    }
}

#[test]
fn opens_once_the_failure_ratio_is_reached_and_answers_503_with_retry_after() {
    let policy = build_at("opens", small(json!({})));
    forward(&*policy, "a", answered(200)).expect("closed");
    forward(&*policy, "a", answered(500)).expect("closed");
    forward(&*policy, "a", answered(200)).expect("closed");
    assert!(!is_open(&*policy, "a"), "3 requests are below minimum_calls");
    forward(&*policy, "a", Some(ForwardOutcome::Failed)).expect("closed");
    let refusal = forward(&*policy, "a", answered(200)).expect_err("2 failures of 4 open the circuit");
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal.headers()[RETRY_AFTER], "60");
    assert_eq!(refusal.headers()[http::header::CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(refusal.body()).expect("a problem document");
    assert_eq!(problem["type"], "https://gantry.dev/problems/circuit-open");
    assert_eq!(problem["status"], 503);
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("`a`")), "{problem}");
}

#[test]
fn keeps_one_circuit_per_route() {
    let policy = build_at("per-route", small(json!({})));
    for _ in 0..4 {
        forward(&*policy, "a", answered(503)).expect("closed");
    }
    assert!(is_open(&*policy, "a"));
    assert!(!is_open(&*policy, "b"), "route b's requests did not fail");
    forward(&*policy, "b", answered(200)).expect("route b is served");
}

#[test]
fn counts_only_the_configured_statuses_and_always_unanswered_requests() {
    let policy = build_at("statuses", small(json!({"failure_statuses": [429, 503]})));
    for status in [500, 500, 404, 502] {
        forward(&*policy, "a", answered(status)).expect("closed");
    }
    assert!(!is_open(&*policy, "a"), "500, 404 and 502 are not failures here");
    forward(&*policy, "a", answered(429)).expect("closed");
    assert!(!is_open(&*policy, "a"), "1 failure in the last 4");
    forward(&*policy, "a", Some(ForwardOutcome::Failed)).expect("closed");
    assert!(is_open(&*policy, "a"), "a 429 and a refused connection in the last 4");
}

#[test]
fn requests_that_were_not_forwarded_do_not_count() {
    let policy = build_at("not-forwarded", small(json!({})));
    for _ in 0..10 {
        forward(&*policy, "a", None).expect("closed");
    }
    for _ in 0..3 {
        forward(&*policy, "a", answered(500)).expect("closed");
    }
    assert!(!is_open(&*policy, "a"), "only 3 forwarded requests so far");
}

#[test]
fn answers_with_the_fallback_while_open() {
    let fallback = json!({"fallback": {"status": 200, "headers": {"x-degraded": "yes"}, "json": {"items": []}}});
    let policy = build_at("fallback", small(fallback));
    for _ in 0..4 {
        forward(&*policy, "a", answered(500)).expect("closed");
    }
    let answer = forward(&*policy, "a", answered(200)).expect_err("open");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-degraded"], "yes");
    assert_eq!(answer.headers()[http::header::CONTENT_TYPE], "application/json");
    assert_eq!(answer.body(), r#"{"items":[]}"#);
    assert!(answer.headers().get(RETRY_AFTER).is_none(), "the fallback is sent as written");
}

#[test]
fn a_half_open_trial_that_succeeds_closes_the_circuit() {
    let policy = build_at("half-open", small(json!({"open_for": "20ms", "half_open_calls": 2})));
    for _ in 0..4 {
        forward(&*policy, "a", answered(500)).expect("closed");
    }
    assert!(is_open(&*policy, "a"));
    std::thread::sleep(std::time::Duration::from_millis(30));
    let first = forward(&*policy, "a", None).expect("a trial");
    drop(first);
    // A trial that was not forwarded gave its place back: two more fit.
    let mut trials = Vec::new();
    for _ in 0..2 {
        let mut exchange = exchange_on("a");
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue), "a trial");
        trials.push(exchange);
    }
    assert!(is_open(&*policy, "a"), "both trials are out: a third request is refused");
    for mut exchange in trials {
        exchange.forward_outcome = answered(200);
        run_response(&*policy, http::Response::new(()), &mut exchange);
    }
    assert!(!is_open(&*policy, "a"), "two successful trials close the circuit");
    forward(&*policy, "a", answered(500)).expect("closed, with an empty window");
    assert!(!is_open(&*policy, "a"));
}

#[test]
fn a_reload_keeps_the_circuit_while_the_breaker_and_its_window_stay() {
    let before = build_at("reloaded", small(json!({})));
    for _ in 0..4 {
        forward(&*before, "a", answered(500)).expect("closed");
    }
    let reloaded = build_at("reloaded", small(json!({"failure_ratio": 0.9, "open_for": "2m"})));
    drop(before);
    assert!(is_open(&*reloaded, "a"), "other settings changed, the circuit stayed open");
    let resized = build_at("reloaded", small(json!({"window": {"calls": 8}})));
    drop(reloaded);
    assert!(!is_open(&*resized, "a"), "a new window starts closed");
}

#[test]
fn reports_the_phase_of_used_circuits_in_the_metric() {
    let mut registry = prometheus_client::registry::Registry::default();
    register_metrics(&mut registry);
    let scrape = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics encode");
        text
    };
    let policy = build_at("metric", small(json!({})));
    assert!(!scrape().contains("route=\"metric\""), "no request of the route has reached it yet");
    forward(&*policy, "metric", answered(500)).expect("closed");
    let text = scrape();
    assert!(text.contains("# TYPE gantry_circuit_state gauge"), "{text}");
    assert!(text.lines().any(|line| line == "gantry_circuit_state{route=\"metric\"} 0"), "{text}");
    for _ in 0..3 {
        forward(&*policy, "metric", answered(500)).expect("closed");
    }
    let text = scrape();
    assert!(text.lines().any(|line| line == "gantry_circuit_state{route=\"metric\"} 2"), "{text}");
    drop(policy);
    assert!(!scrape().contains("route=\"metric\""), "a breaker no longer built is no longer reported");
}

#[test]
fn implements_the_request_and_response_hooks_in_the_traffic_stage() {
    assert_eq!(entry().stage, Stage::Traffic);
    let policy = build_policy(entry(), "").expect("valid");
    assert_eq!(policy.hooks(), Hooks { request: true, response: true, log: false });
}
