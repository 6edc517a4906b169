//! Unit tests of `traffic_split`: its settings and their errors, the rules' conditions, and
//! the weighted schedule's exact shares.

use std::collections::HashMap;

use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<TrafficSplit>()
}

/// A configuration with the upstreams `stable` and `canary`.
const CONFIG: &str = "upstreams:
  - id: stable
    endpoints: [127.0.0.1:1]
  - id: canary
    endpoints: [127.0.0.1:2]
";

fn build(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(entry(), settings, CONFIG).unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

/// The upstream `policy` chooses for `request`: `None` for the route's own.
fn choose(policy: &dyn Policy, request: http::Request<()>) -> Option<String> {
    let mut request = request.into_parts().0;
    let mut exchange = exchange_from("10.0.0.1:1000");
    assert!(matches!(run_request(policy, &mut request, &mut exchange), Flow::Continue), "traffic_split never answers");
    exchange.upstream.map(|id| id.to_string())
}

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).expect("request")
}

fn shares(policy: &dyn Policy, requests: usize) -> HashMap<Option<String>, usize> {
    let mut counts = HashMap::new();
    for _ in 0..requests {
        *counts.entry(choose(policy, get("/"))).or_default() += 1;
    }
    counts
}

#[test]
fn splits_exactly_by_weight_in_every_full_cycle() {
    let policy = build("rules:\n  - upstreams:\n      - {upstream: canary, weight: 10}\n      - {weight: 90}");
    let counts = shares(&*policy, 1000);
    assert_eq!(counts.get(&Some("canary".to_owned())), Some(&100));
    assert_eq!(counts.get(&None), Some(&900), "an entry without `upstream` keeps the route's own");
}

#[test]
fn spreads_the_smaller_share_out_instead_of_sending_it_in_a_burst() {
    let schedule = smooth_weighted_schedule(&[3, 1]);
    assert_eq!(schedule, [0, 0, 1, 0]);
    let schedule = smooth_weighted_schedule(&[90, 10]);
    assert_eq!(schedule.len(), 10, "weights are divided by their common divisor");
    assert_eq!(schedule.iter().filter(|&&position| position == 1).count(), 1);
    let schedule = smooth_weighted_schedule(&[1, 1, 0]);
    assert_eq!(schedule, [0, 1], "a weight of 0 is never chosen");
}

#[test]
fn the_first_matching_rule_decides() {
    let policy = build(
        "rules:
  - match: {headers: [{name: x-canary, exact: 'yes'}]}
    upstreams: [{upstream: canary}]
  - match: {cookies: [{name: release, exact: beta}]}
    upstreams: [{upstream: canary}]
  - match: {query: [{name: version, regex: '^2'}]}
    upstreams: [{upstream: canary}]
  - upstreams: [{upstream: stable}]",
    );
    let canary = Some("canary".to_owned());
    assert_eq!(choose(&*policy, http::Request::get("/").header("x-canary", "yes").body(()).expect("request")), canary);
    assert_eq!(
        choose(&*policy, http::Request::get("/").header("x-canary", "no").body(()).expect("request")),
        Some("stable".to_owned())
    );
    let with_cookie = http::Request::get("/").header("cookie", "theme=dark; release=beta").body(()).expect("request");
    assert_eq!(choose(&*policy, with_cookie), canary);
    assert_eq!(choose(&*policy, get("/?version=2.1")), canary);
    assert_eq!(choose(&*policy, get("/?version=%32")), canary, "query values are percent-decoded");
    assert_eq!(choose(&*policy, get("/?version=1")), Some("stable".to_owned()));
}

#[test]
fn a_request_no_rule_matches_keeps_the_routes_upstream() {
    let policy = build(
        "rules:
  - match: {headers: [{name: x-beta, present: true}, {name: x-region, exact: eu, invert: true}]}
    upstreams: [{upstream: canary}]",
    );
    assert_eq!(choose(&*policy, get("/")), None);
    let beta = |region: &str| {
        http::Request::get("/").header("x-beta", "1").header("x-region", region).body(()).expect("request")
    };
    assert_eq!(choose(&*policy, beta("us")), Some("canary".to_owned()), "every condition holds");
    assert_eq!(choose(&*policy, beta("eu")), None, "the inverted condition fails");
}

#[test]
fn rejects_unknown_upstreams_at_their_path() {
    let errors =
        build_identity_policy_error(entry(), "rules:\n  - upstreams: [{upstream: stable}, {upstream: canery}]", CONFIG);
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path.to_string(), "global_policies[0].traffic_split.rules[0].upstreams[1].upstream");
    assert!(errors.0[0].message.contains("unknown upstream `canery`"), "{errors}");
}

#[test]
fn rejects_each_bad_setting_at_its_path() {
    let cases = [
        ("rules: []", "rules"),
        ("rules: [{upstreams: []}]", "rules[0].upstreams"),
        ("rules: [{upstreams: [{upstream: canary, weight: 0}]}]", "rules[0].upstreams"),
        ("rules: [{upstreams: [{weight: 9000}, {upstream: canary, weight: 2000}]}]", "rules[0].upstreams"),
        ("rules: [{match: {headers: [{name: 'a b', exact: x}]}, upstreams: [{}]}]", "rules[0].match.headers[0].name"),
        (
            "rules: [{match: {cookies: [{name: c, exact: x, present: true}]}, upstreams: [{}]}]",
            "rules[0].match.cookies[0]",
        ),
        ("rules: [{match: {query: [{name: q}]}, upstreams: [{}]}]", "rules[0].match.query[0]"),
        ("rules: [{match: {query: [{name: q, regex: '('}]}, upstreams: [{}]}]", "rules[0].match.query[0].regex"),
        ("rules: [{match: {body: []}, upstreams: [{}]}]", "rules[0].match.body"),
        ("rules: [{upstreams: [{upstream: canary, share: 1}]}]", "rules[0].upstreams[0].share"),
    ];
    for (settings, field) in cases {
        let errors = build_identity_policy_error(entry(), settings, CONFIG);
        let expected = format!("global_policies[0].traffic_split.{field}");
        assert!(
            errors.iter().any(|error| error.path.to_string() == expected),
            "`{settings}`: expected an error at {expected}, got {errors}"
        );
    }
}

#[test]
fn implements_only_the_request_hook_in_the_forward_stage() {
    assert_eq!(entry().stage, Stage::Forward);
    let policy = build("rules: [{upstreams: [{upstream: canary}]}]");
    assert_eq!(policy.hooks(), Hooks::REQUEST);
    assert!(!policy.answers_every_request(), "the route still needs its own upstream");
}
