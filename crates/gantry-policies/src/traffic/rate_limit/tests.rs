use std::sync::Arc;

use gantry_config::NodeSpec;
use gantry_policy_api::testing::{build_policy_with_stores, exchange_from, request_parts, run_request, run_response};
use gantry_policy_api::{Consumer, Identity, RegisteredPolicy};
use gantry_state::{ManualClock, MemoryStore, Stores};

use super::*;

const CONSUMERS: &str = "consumers:
  - id: alice
  - id: bob
  - id: goldie
    groups: [gold]
";

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<RateLimit>()
}

/// Stores whose memory store reads `clock`, fresh for each test so tests never share counters.
fn stores(clock: &ManualClock) -> Stores {
    Stores::in_memory().with_memory(MemoryStore::with_clock(Arc::new(clock.clone())))
}

fn policy_in(settings: &str, stores: &Stores) -> Arc<dyn Policy> {
    build_policy_with_stores(entry(), settings, CONSUMERS, stores).unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str) -> Vec<String> {
    match build_policy_with_stores(entry(), settings, CONSUMERS, &Stores::in_memory()) {
        Ok(_) => panic!("settings accepted that should be rejected:\n{settings}"),
        Err(errors) => errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect(),
    }
}

fn request() -> RequestParts {
    request_parts(http::Request::get("/orders").body(()).expect("request"))
}

fn as_consumer(exchange: &mut Exchange, id: &str, groups: &[&str]) {
    let consumer = Consumer { id: id.into(), groups: groups.iter().map(|group| (*group).to_owned()).collect() };
    let credential = format!("{id}:key_auth");
    exchange.authenticate(Identity::credential(Arc::new(consumer), credential.into(), "key_auth"));
}

/// Runs one request from `client` as `consumer` and gives the policy's answer, if any.
fn send(policy: &dyn Policy, client: &str, consumer: Option<&str>) -> (Flow, Exchange) {
    let mut exchange = exchange_from(client);
    if let Some(id) = consumer {
        let groups: &[&str] = if id == "goldie" { &["gold"] } else { &[] };
        as_consumer(&mut exchange, id, groups);
    }
    let flow = run_request(policy, &mut request(), &mut exchange);
    (flow, exchange)
}

fn is_admitted(flow: &Flow) -> bool {
    matches!(flow, Flow::Continue)
}

fn refusal(flow: Flow) -> PolicyResponse {
    match flow {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("the request was admitted"),
    }
}

fn admitted_count(policy: &dyn Policy, client: &str, consumer: Option<&str>, attempts: usize) -> usize {
    (0..attempts).filter(|_| is_admitted(&send(policy, client, consumer).0)).count()
}

#[test]
fn a_fixed_window_admits_the_limit_then_answers_429_with_retry_after_and_headers() {
    let clock = ManualClock::default();
    let policy = policy_in("limit: 3\nwindow: 1m", &stores(&clock));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", Some("alice"), 3), 3);
    clock.advance(StdDuration::from_secs(18));
    let response = refusal(send(&*policy, "10.0.0.1:1", Some("alice")).0);
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "42");
    assert_eq!(response.headers()["ratelimit-policy"], "\"default\";q=3;w=60");
    assert_eq!(response.headers()["ratelimit"], "\"default\";r=0;t=42");
    assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["type"], "https://gantry.dev/problems/rate-limited");
    assert_eq!(body["status"], 429);
    assert_eq!(body["detail"], "at most 3 requests per 1m are allowed; retry in 42 s");

    clock.advance(StdDuration::from_secs(42));
    assert!(is_admitted(&send(&*policy, "10.0.0.1:1", Some("alice")).0), "a new window has started");
}

#[test]
fn an_admitted_response_carries_the_ietf_headers() {
    let clock = ManualClock::default();
    let policy = policy_in("limit: 5\nwindow: 10s\nname: orders-api", &stores(&clock));
    assert_eq!(policy.hooks(), Hooks { request: true, response: true, log: false });
    let (flow, mut exchange) = send(&*policy, "10.0.0.1:1", Some("alice"));
    assert!(is_admitted(&flow));
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(response.headers["ratelimit-policy"], "\"orders-api\";q=5;w=10");
    assert_eq!(response.headers["ratelimit"], "\"orders-api\";r=4;t=10");
    assert!(response.headers.get("x-ratelimit-limit").is_none());
}

#[test]
fn legacy_headers_replace_or_join_the_ietf_ones_and_none_adds_no_response_hook() {
    let clock = ManualClock::default();
    let stores = stores(&clock);
    let legacy = policy_in("limit: 5\nwindow: 10s\nheaders: legacy", &stores);
    let (_, mut exchange) = send(&*legacy, "10.0.0.1:1", None);
    let response = run_response(&*legacy, http::Response::new(()), &mut exchange);
    assert_eq!(response.headers["x-ratelimit-limit"], "5");
    assert_eq!(response.headers["x-ratelimit-remaining"], "4");
    assert_eq!(response.headers["x-ratelimit-reset"], "10");
    assert!(response.headers.get("ratelimit").is_none());

    let both = policy_in("limit: 5\nwindow: 10s\nheaders: both", &stores);
    let (_, mut exchange) = send(&*both, "10.0.0.2:1", None);
    let response = run_response(&*both, http::Response::new(()), &mut exchange);
    assert!(response.headers.contains_key("ratelimit") && response.headers.contains_key("x-ratelimit-remaining"));

    let none = policy_in("limit: 1\nwindow: 10s\nheaders: none", &stores);
    assert_eq!(none.hooks(), Hooks::REQUEST);
    send(&*none, "10.0.0.3:1", None);
    let response = refusal(send(&*none, "10.0.0.3:1", None).0);
    assert_eq!(response.headers()[RETRY_AFTER], "10", "a refusal always says when to retry");
    assert!(response.headers().get("ratelimit").is_none());
}

#[test]
fn counts_each_consumer_apart_and_clients_without_one_by_address() {
    let clock = ManualClock::default();
    let policy = policy_in("limit: 2\nwindow: 1m", &stores(&clock));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", Some("alice"), 5), 2);
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", Some("bob"), 5), 2, "bob from the same address has his own");
    assert_eq!(admitted_count(&*policy, "10.0.0.7:1", None, 5), 2);
    assert_eq!(admitted_count(&*policy, "10.0.0.8:1", None, 5), 2, "another address has its own");
    assert_eq!(admitted_count(&*policy, "10.0.0.7:2", None, 5), 0, "the port does not matter");
}

#[test]
fn counts_by_credential_and_by_header_when_asked() {
    let clock = ManualClock::default();
    let stores = stores(&clock);
    let by_credential = policy_in("limit: 1\nwindow: 1m\nkey: [credential]", &stores);
    let mut first = exchange_from("10.0.0.1:1");
    as_consumer(&mut first, "alice", &[]);
    assert!(is_admitted(&run_request(&*by_credential, &mut request(), &mut first)));
    let mut second = exchange_from("10.0.0.1:1");
    let consumer = Arc::new(Consumer::named("alice"));
    second.authenticate(Identity::credential(consumer, "alice:key_auth:1".into(), "key_auth"));
    assert!(is_admitted(&run_request(&*by_credential, &mut request(), &mut second)), "her second key counts apart");

    let by_tenant = policy_in("limit: 1\nwindow: 1m\nkey: [{header: x-tenant}, route]", &stores);
    let tenant = |value: &str| {
        let mut parts = request_parts(http::Request::get("/").header("x-tenant", value).body(()).expect("request"));
        let mut exchange = exchange_from("10.0.0.1:1");
        is_admitted(&run_request(&*by_tenant, &mut parts, &mut exchange))
    };
    assert!(tenant("acme"));
    assert!(!tenant("acme"));
    assert!(tenant("globex"), "another tenant from the same address has its own");
}

#[test]
fn a_consumer_group_gets_its_own_limit_and_policy_name() {
    let clock = ManualClock::default();
    let policy = policy_in("limit: 1\nwindow: 1m\ngroups:\n  - {group: gold, limit: 3, window: 2m}", &stores(&clock));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", Some("goldie"), 5), 3);
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", Some("alice"), 5), 1);
    let response = refusal(send(&*policy, "10.0.0.1:1", Some("goldie")).0);
    assert_eq!(response.headers()["ratelimit-policy"], "\"gold\";q=3;w=120");
}

#[test]
fn a_sliding_window_counts_the_overlap_of_the_previous_window() {
    let clock = ManualClock::default();
    let policy = policy_in("algorithm: sliding_window\nlimit: 4\nwindow: 10s", &stores(&clock));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", None, 6), 4);
    // Halfway through the next window, half of the previous window's 4 still count.
    clock.advance(StdDuration::from_secs(15));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", None, 6), 2);
}

#[test]
fn a_token_bucket_allows_its_burst_then_the_rate() {
    let clock = ManualClock::default();
    let policy = policy_in("algorithm: token_bucket\nlimit: 1\nwindow: 1s\nburst: 5", &stores(&clock));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", None, 8), 5);
    let response = refusal(send(&*policy, "10.0.0.1:1", None).0);
    assert_eq!(response.headers()[RETRY_AFTER], "1");
    assert_eq!(response.headers()["ratelimit"], "\"default\";r=0;t=5");
    clock.advance(StdDuration::from_secs(2));
    assert_eq!(admitted_count(&*policy, "10.0.0.1:1", None, 8), 2, "two tokens came back in two seconds");
}

#[tokio::test(start_paused = true)]
async fn a_leaky_bucket_delays_requests_to_the_rate_and_refuses_past_its_queue() {
    let clock = ManualClock::default();
    let policy = policy_in("algorithm: leaky_bucket\nlimit: 2\nwindow: 1s\nburst: 2", &stores(&clock));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let mut exchange = exchange_from("10.0.0.1:1");
        let started = tokio::time::Instant::now();
        let flow = policy.on_request(&mut request(), &mut exchange).resolve().await;
        assert!(is_admitted(&flow));
        delays.push(started.elapsed());
    }
    assert_eq!(delays, [StdDuration::ZERO, StdDuration::from_millis(500), StdDuration::from_millis(1000)]);
    let mut exchange = exchange_from("10.0.0.1:1");
    let flow = policy.on_request(&mut request(), &mut exchange).resolve().await;
    assert_eq!(refusal(flow).status(), StatusCode::TOO_MANY_REQUESTS, "the queue of 2 is full");
}

#[tokio::test(start_paused = true)]
async fn a_leaky_bucket_with_nodelay_serves_the_burst_at_once() {
    let clock = ManualClock::default();
    let policy = policy_in("algorithm: leaky_bucket\nlimit: 2\nwindow: 1s\nburst: 2\nnodelay: true", &stores(&clock));
    let started = tokio::time::Instant::now();
    let mut admitted = 0;
    for _ in 0..5 {
        let mut exchange = exchange_from("10.0.0.1:1");
        if is_admitted(&policy.on_request(&mut request(), &mut exchange).resolve().await) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "one at the rate and a burst of 2");
    assert_eq!(started.elapsed(), StdDuration::ZERO);
}

#[test]
fn counters_survive_a_rebuild_with_the_same_stores() {
    let clock = ManualClock::default();
    let stores = stores(&clock);
    let before = policy_in("limit: 3\nwindow: 1m", &stores);
    assert_eq!(admitted_count(&*before, "10.0.0.1:1", None, 2), 2);
    // A reload builds the policy again, here with a higher limit: the count goes on.
    let after = policy_in("limit: 4\nwindow: 1m", &stores);
    assert_eq!(admitted_count(&*after, "10.0.0.1:1", None, 5), 2);
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
async fn lets_requests_through_uncounted_when_the_store_fails_by_default() {
    let stores = stores_with_dead_redis();
    let policy = policy_in("limit: 1\nwindow: 1m\nstore: redis", &stores);
    for _ in 0..3 {
        let mut exchange = exchange_from("10.0.0.1:1");
        let flow = policy.on_request(&mut request(), &mut exchange).resolve().await;
        assert!(is_admitted(&flow), "fail open");
        let response = run_response(&*policy, http::Response::new(()), &mut exchange);
        assert!(response.headers.get("ratelimit").is_none(), "no headers without a decision");
    }
    assert_eq!(stores.metrics().errors("rate_limit", "redis", "allow"), 3);
}

#[tokio::test]
async fn answers_503_when_the_store_fails_and_errors_deny() {
    let stores = stores_with_dead_redis();
    let policy = policy_in("limit: 1\nwindow: 1m\nstore: redis\non_store_error: deny", &stores);
    let mut exchange = exchange_from("10.0.0.1:1");
    let response = refusal(policy.on_request(&mut request(), &mut exchange).resolve().await);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "1");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["type"], "https://gantry.dev/problems/rate-limit-unavailable");
    assert_eq!(stores.metrics().errors("rate_limit", "redis", "deny"), 1);
}

#[test]
fn rejects_a_redis_store_without_node_settings_at_its_path() {
    assert_eq!(
        errors("limit: 1\nwindow: 1s\nstore: redis"),
        ["global_policies[0].rate_limit.store: `redis` needs `node.stores.redis` in the node settings"]
    );
}

#[test]
fn rejects_impossible_limits_at_their_paths() {
    let at = "global_policies[0].rate_limit";
    assert!(errors("limit: 0\nwindow: 1s").iter().any(|e| e.starts_with(&format!("{at}.limit: "))));
    assert!(errors("limit: 1\nwindow: 0s").iter().any(|e| e.starts_with(&format!("{at}.window: "))));
    assert!(errors("limit: 1\nwindow: 1s\nburst: 3").iter().any(|e| e.starts_with(&format!("{at}.burst: "))));
    assert!(errors("algorithm: token_bucket\nlimit: 1\nwindow: 1s\nburst: 0")
        .iter()
        .any(|e| e.starts_with(&format!("{at}.burst: "))));
    assert!(errors("limit: 1\nwindow: 1s\nnodelay: true").iter().any(|e| e.starts_with(&format!("{at}.nodelay: "))));
    assert!(errors("limit: 1\nwindow: 1s\nname: 'two words'").iter().any(|e| e.starts_with(&format!("{at}.name: "))));
    assert!(errors("limit: 2000000\nwindow: 1s").iter().any(|e| e.starts_with(&format!("{at}.limit: "))));
    assert!(errors("limit: 1\nwindow: 1s\nwindoww: 1s").iter().any(|e| e.contains("windoww")));
    assert!(errors("limit: 1\nwindow: 1s\nalgorithm: leaky").iter().any(|e| e.starts_with(&format!("{at}.algorithm"))));
}

#[test]
fn rejects_bad_keys_and_groups_at_their_paths() {
    let at = "global_policies[0].rate_limit";
    assert!(errors("limit: 1\nwindow: 1s\nkey: []").iter().any(|e| e.starts_with(&format!("{at}.key: "))));
    assert!(errors("limit: 1\nwindow: 1s\nkey: [{header: 'bad header'}]")
        .iter()
        .any(|e| e.starts_with(&format!("{at}.key[0].header: "))));
    assert!(errors("limit: 1\nwindow: 1s\nkey: [planet]").iter().any(|e| e.starts_with(&format!("{at}.key"))));
    let groups = "limit: 1\nwindow: 1s\ngroups:\n  - {group: gold, limit: 2}\n  - {group: gold, limit: 0}";
    let found = errors(groups);
    assert!(found.iter().any(|e| e.starts_with(&format!("{at}.groups[1].group: "))), "{found:?}");
    assert!(found.iter().any(|e| e.starts_with(&format!("{at}.groups[1].limit: "))), "{found:?}");
}
