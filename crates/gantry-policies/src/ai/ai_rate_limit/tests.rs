use std::sync::Arc;

use bytes::Bytes;
use gantry_config::NodeSpec;
use gantry_policy_api::testing::{build_policy_with_stores, exchange_from, request_parts, run_request, run_response};
use gantry_policy_api::{Consumer, Identity, RegisteredPolicy};
use gantry_state::{ManualClock, MemoryStore, Stores};
use serde_json::{json, Value};

use super::*;

const CONSUMERS: &str = "consumers:
  - id: alice
  - id: bob
";

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<AiRateLimit>()
}

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
    request_parts(http::Request::post("/v1/chat/completions").body(()).expect("request"))
}

/// An exchange of `consumer` asking for `model`, with the body the data plane would have read.
fn exchange_of(consumer: &str, model: &str) -> Exchange {
    let mut exchange = exchange_from("10.0.0.1:1");
    let identity = Consumer { id: consumer.into(), groups: Vec::new().into() };
    exchange.authenticate(Identity::credential(Arc::new(identity), format!("{consumer}:key_auth").into(), "key_auth"));
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    exchange.extensions.insert(RequestBody(Bytes::from(body.to_string())));
    exchange
}

fn send(policy: &dyn Policy, consumer: &str, model: &str) -> (Flow, Exchange) {
    let mut exchange = exchange_of(consumer, model);
    let flow = run_request(policy, &mut request(), &mut exchange);
    (flow, exchange)
}

fn usage(input: u64, output: u64, cost: Option<f64>) -> AiUsage {
    AiUsage { operation: "chat", input_tokens: input, output_tokens: output, cost, ..AiUsage::default() }
}

/// Sends a request and, when it is admitted, reports `usage` as `ai_proxy` would.
fn exchange_using(policy: &dyn Policy, consumer: &str, model: &str, spent: AiUsage) -> bool {
    let (flow, mut exchange) = send(policy, consumer, model);
    let admitted = matches!(flow, Flow::Continue);
    if admitted {
        AiExchange::of(&mut exchange.extensions).finish(spent);
    }
    admitted
}

fn refusal(flow: Flow) -> PolicyResponse {
    match flow {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("the request was admitted"),
    }
}

fn body(response: &PolicyResponse) -> Value {
    serde_json::from_slice(response.body()).expect("a JSON body")
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_else(|| panic!("no {name}: {headers:?}"))
}

#[test]
fn counts_requests_on_arrival_and_answers_429_in_openais_shape() {
    let clock = ManualClock::default();
    let policy = policy_in("limits: [{window: 1m, requests: 2}]", &stores(&clock));
    let (first, mut exchange) = send(&*policy, "alice", "gpt");
    assert!(matches!(first, Flow::Continue));
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(header(&response.headers, "x-ai-ratelimit-limit-requests"), "2");
    assert_eq!(header(&response.headers, "x-ai-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&response.headers, "x-ai-ratelimit-reset-requests"), "60");
    assert!(matches!(send(&*policy, "alice", "gpt").0, Flow::Continue));

    clock.advance(StdDuration::from_secs(20));
    let refused = refusal(send(&*policy, "alice", "gpt").0);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(refused.headers(), "retry-after"), "40");
    assert_eq!(header(refused.headers(), "x-ai-ratelimit-remaining-requests"), "0");
    let error = body(&refused);
    assert_eq!(error["error"]["type"], "requests");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(error["error"]["message"].as_str().expect("message").contains("requests per 1m: limit 2"), "{error}");

    assert!(matches!(send(&*policy, "bob", "gpt").0, Flow::Continue), "bob counts on his own");
    clock.advance(StdDuration::from_secs(41));
    assert!(matches!(send(&*policy, "alice", "gpt").0, Flow::Continue), "a new window");
}

#[test]
fn charges_tokens_when_the_usage_is_reported_and_refuses_once_the_window_is_spent() {
    let clock = ManualClock::default();
    let policy = policy_in("limits: [{window: 1h, tokens: 100}]", &stores(&clock));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(30, 30, None)));

    let (flow, mut exchange) = send(&*policy, "alice", "gpt");
    assert!(matches!(flow, Flow::Continue), "40 tokens are left");
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(header(&response.headers, "x-ai-ratelimit-remaining-tokens"), "40");
    assert_eq!(header(&response.headers, "x-ai-ratelimit-limit-tokens"), "100");
    // The answer that crosses the limit is counted whole.
    AiExchange::of(&mut exchange.extensions).finish(usage(20, 200, None));

    let refused = refusal(send(&*policy, "alice", "gpt").0);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body(&refused)["error"]["type"], "tokens");
    assert_eq!(header(refused.headers(), "retry-after"), "3600");
    assert_eq!(header(refused.headers(), "x-ai-ratelimit-remaining-tokens"), "0");
    assert!(exchange_using(&*policy, "bob", "gpt", usage(1, 1, None)), "bob has his own tokens");

    clock.advance(StdDuration::from_secs(3600));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(1, 1, None)), "a new window");
}

#[test]
fn refuses_at_exactly_the_limit() {
    let clock = ManualClock::default();
    let policy = policy_in("limits: [{window: 1m, tokens: 10}]", &stores(&clock));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(4, 5, None)));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(1, 0, None)), "9 of 10 were spent");
    assert!(!exchange_using(&*policy, "alice", "gpt", usage(0, 0, None)), "10 of 10 are spent");
}

#[test]
fn a_sliding_window_lets_spent_tokens_age_out_gradually() {
    let clock = ManualClock::default();
    let policy = policy_in("algorithm: sliding_window\nlimits: [{window: 1m, tokens: 100}]", &stores(&clock));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(50, 50, None)));
    assert!(!exchange_using(&*policy, "alice", "gpt", usage(0, 0, None)));
    clock.advance(StdDuration::from_secs(60));
    let refused = refusal(send(&*policy, "alice", "gpt").0);
    let retry_after: u64 = header(refused.headers(), "retry-after").parse().expect("seconds");
    assert!(retry_after > 0 && retry_after < 60, "sooner than a whole window: {retry_after}");
    clock.advance(StdDuration::from_secs(30));
    let (flow, mut exchange) = send(&*policy, "alice", "gpt");
    assert!(matches!(flow, Flow::Continue), "half of the last window's tokens still weigh");
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(header(&response.headers, "x-ai-ratelimit-remaining-tokens"), "50");
}

#[test]
fn charges_input_and_output_tokens_apart() {
    let clock = ManualClock::default();
    let policy = policy_in("limits: [{window: 1m, input_tokens: 100, output_tokens: 10}]", &stores(&clock));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(50, 10, None)));
    let (flow, mut exchange) = send(&*policy, "alice", "gpt");
    let refused = refusal(flow);
    assert!(body(&refused)["error"]["message"].as_str().expect("message").contains("output tokens"));
    assert_eq!(header(refused.headers(), "x-ai-ratelimit-remaining-input-tokens"), "50");
    assert_eq!(header(refused.headers(), "x-ai-ratelimit-remaining-output-tokens"), "0");
    assert!(AiExchange::of(&mut exchange.extensions).request_model().is_some());
}

#[test]
fn charges_cost_in_millionths_and_skips_cache_hits() {
    let clock = ManualClock::default();
    let policy = policy_in("limits: [{window: 1d, cost: 0.01}]", &stores(&clock));
    assert!(exchange_using(&*policy, "alice", "gpt", usage(10, 10, Some(0.004))));
    let cached = AiUsage { cache_hit: true, ..usage(10, 10, Some(0.5)) };
    assert!(exchange_using(&*policy, "alice", "gpt", cached), "not charged");
    assert!(exchange_using(&*policy, "alice", "gpt", usage(10, 10, None)), "no price, no cost");
    let (flow, mut exchange) = send(&*policy, "alice", "gpt");
    assert!(matches!(flow, Flow::Continue));
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(header(&response.headers, "x-ai-ratelimit-limit-cost"), "0.01");
    assert_eq!(header(&response.headers, "x-ai-ratelimit-remaining-cost"), "0.006");
    AiExchange::of(&mut exchange.extensions).finish(usage(10, 10, Some(0.0061)));
    let refused = refusal(send(&*policy, "alice", "gpt").0);
    assert_eq!(body(&refused)["error"]["type"], "cost");
    assert_eq!(header(refused.headers(), "x-ai-ratelimit-remaining-cost"), "0");
}

#[test]
fn limits_each_listed_model_on_its_own_and_every_model_together() {
    let clock = ManualClock::default();
    let settings = "limits: [{window: 1m, requests: 3}]
models:
  - model: smart
    limits: [{window: 1m, requests: 1}]";
    let policy = policy_in(settings, &stores(&clock));
    let (flow, mut exchange) = send(&*policy, "alice", "smart");
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(AiExchange::of(&mut exchange.extensions).request_model().as_deref(), Some("smart"));
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    assert_eq!(header(&response.headers, "x-ai-ratelimit-remaining-requests"), "0", "the tightest limit shows");

    let refused = refusal(send(&*policy, "alice", "smart").0);
    assert!(body(&refused)["error"]["message"].as_str().expect("message").contains("for smart"));
    assert!(matches!(send(&*policy, "alice", "fast").0, Flow::Continue));
    // The refused request for `smart` counted against the shared limit too: it was checked first.
    assert!(!matches!(send(&*policy, "alice", "fast").0, Flow::Continue), "3 requests over every model");
}

#[test]
fn lists_every_limit_in_the_ietf_fields() {
    let clock = ManualClock::default();
    let settings = "headers: ietf\nlimits: [{window: 1m, requests: 5, tokens: 1000}, {window: 1d, cost: 2}]";
    let policy = policy_in(settings, &stores(&clock));
    let (_, mut exchange) = send(&*policy, "alice", "gpt");
    let response = run_response(&*policy, http::Response::new(()), &mut exchange);
    let all = |name: &str| {
        response.headers.get_all(name).iter().map(|v| v.to_str().expect("ascii").to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(all("ratelimit-policy"), ["\"tokens-1m\";q=1000;w=60", "\"requests-1m\";q=5;w=60"]);
    assert_eq!(all("ratelimit"), ["\"tokens-1m\";r=1000;t=60", "\"requests-1m\";r=4;t=60"]);
    assert!(response.headers.get("x-ai-ratelimit-limit-requests").is_none());
}

#[test]
fn a_request_without_a_model_meets_the_shared_limits_only() {
    let clock = ManualClock::default();
    let policy = policy_in("models: [{model: smart, limits: [{window: 1m, requests: 1}]}]", &stores(&clock));
    let mut exchange = exchange_from("10.0.0.1:1");
    exchange.extensions.insert(RequestBody(Bytes::from_static(b"not json")));
    assert!(matches!(run_request(&*policy, &mut request(), &mut exchange), Flow::Continue));
    assert!(AiExchange::of(&mut exchange.extensions).request_model().is_none());
}

#[test]
fn lets_the_model_list_through_uncounted() {
    let clock = ManualClock::default();
    let policy = policy_in("limits: [{window: 1m, requests: 1}]", &stores(&clock));
    for _ in 0..3 {
        let mut list = request_parts(http::Request::get("/v1/models").body(()).expect("request"));
        let mut exchange = exchange_of("alice", "gpt");
        assert!(matches!(run_request(&*policy, &mut list, &mut exchange), Flow::Continue));
        let response = run_response(&*policy, http::Response::new(()), &mut exchange);
        assert!(response.headers.get("x-ai-ratelimit-limit-requests").is_none());
    }
    assert!(matches!(send(&*policy, "alice", "gpt").0, Flow::Continue), "the first counted request");
    assert!(!matches!(send(&*policy, "alice", "gpt").0, Flow::Continue));
}

#[test]
fn rejects_bad_limits_at_their_paths() {
    assert_eq!(
        errors("{}"),
        ["global_policies[0].ai_rate_limit.limits: give at least one limit, in `limits` or `models`"]
    );
    let found = errors(
        "limits:
  - {window: 0s, requests: 1}
  - {window: 1m}
  - {window: 1m, tokens: 0, cost: -1}
  - {window: 1h, requests: 1}
  - {window: 1h, requests: 2}
models:
  - {model: smart, limits: [{window: 1m, requests: 1}]}
  - {model: smart, limits: []}
name: 'bad name'",
    );
    let at = "global_policies[0].ai_rate_limit";
    assert_eq!(
        found,
        [
            format!("{at}.limits[0].window: must be more than 0"),
            format!(
                "{at}.limits[1]: limit at least one of `requests`, `tokens`, `input_tokens`, `output_tokens`, `cost`"
            ),
            format!("{at}.limits[2].tokens: must be more than 0 (to refuse every request, use `mock_response`)"),
            format!("{at}.limits[2].cost: must be more than 0"),
            format!("{at}.limits[4].requests: requests per 1h is already limited"),
            format!("{at}.models[1].model: `smart` is already listed"),
            format!("{at}.models[1].limits: give at least one limit"),
            format!("{at}.name: use 1 to 64 printable ASCII characters without spaces, `\"` or `\\`"),
        ]
    );
    assert!(errors("limits: [{window: 1m, requests: 1}]\nunknown: 1")[0].contains("unknown"));
    assert!(errors("limits: [{window: 1m, requests: 1}]\nstore: redis")[0].contains("node.stores.redis"));
}

#[test]
fn formats_costs_without_trailing_zeros() {
    assert_eq!(format_cost(20_000_000), "20");
    assert_eq!(format_cost(3_250_000), "3.25");
    assert_eq!(format_cost(1), "0.000001");
    assert_eq!(cost_units(0.0000001), 1, "a priced answer is never free");
    assert_eq!(cost_units(f64::NAN), 0);
}

fn stores_with_redis(url: &str) -> Stores {
    let yaml = format!("node:\n  stores:\n    redis: {{urls: ['{url}'], timeout: 500ms, connect_timeout: 500ms}}\n");
    let node: NodeSpec = gantry_config::load_str(&yaml).expect("valid node settings").node.expect("node settings");
    Stores::from_node(Some(&node)).expect("valid store settings")
}

#[tokio::test]
async fn charges_a_redis_store_from_a_task_of_its_own() {
    let redis = gantry_testkit::redis::RedisServer::start();
    let stores = stores_with_redis(&redis.url());
    stores.connect().await;
    let policy = policy_in("store: redis\nlimits: [{window: 1m, tokens: 100}]", &stores);
    let mut exchange = exchange_of("alice", "gpt");
    let flow = policy.on_request(&mut request(), &mut exchange).resolve().await;
    assert!(matches!(flow, Flow::Continue));
    AiExchange::of(&mut exchange.extensions).finish(usage(60, 50, None));

    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(5);
    loop {
        let mut next = exchange_from("10.0.0.1:1");
        next.authenticate(Identity::credential(
            Arc::new(Consumer { id: "alice".into(), groups: Vec::new().into() }),
            "alice:key_auth".into(),
            "key_auth",
        ));
        let flow = policy.on_request(&mut request(), &mut next).resolve().await;
        if let Flow::Respond(refused) = flow {
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the 110 tokens were never charged in Redis");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fails_open_by_default_and_closed_with_deny_when_the_store_is_down() {
    let stores = stores_with_redis("redis://127.0.0.1:1");
    let open = policy_in("store: redis\nlimits: [{window: 1m, tokens: 1}]", &stores);
    let mut exchange = exchange_of("alice", "gpt");
    assert!(matches!(open.on_request(&mut request(), &mut exchange).resolve().await, Flow::Continue));
    assert_eq!(stores.metrics().errors("ai_rate_limit", "redis", "allow"), 1);

    let closed = policy_in("store: redis\non_store_error: deny\nlimits: [{window: 1m, requests: 1}]", &stores);
    let mut exchange = exchange_of("alice", "gpt");
    let refused = refusal(closed.on_request(&mut request(), &mut exchange).resolve().await);
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(refused.headers(), "retry-after"), "1");
    assert_eq!(body(&refused)["error"]["type"], "server_error");
}
