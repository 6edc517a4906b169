//! Unit tests of `concurrency_limit`. Each test builds its policies at a path of its own:
//! limiters are shared by configuration path (to survive reloads), and tests run in parallel.

use gantry_config::GatewaySpec;
use gantry_policy_api::testing::{build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{ConsumerDirectory, RegisteredPolicy};
use serde_json::json;
use tokio::task::JoinHandle;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<ConcurrencyLimit>()
}

/// Builds the policy from `settings` at `routes[<place>].policies[0].concurrency_limit`.
fn build_at(place: &str, settings: serde_json::Value) -> Arc<dyn Policy> {
    let spec = GatewaySpec::default();
    let consumers = ConsumerDirectory::default();
    let path = FieldPath::root().key("routes").item(0, place).key("policies").index(0).key("concurrency_limit");
    entry()
        .build(&settings, &path, &BuildContext::new(&spec, &consumers))
        .unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

fn get() -> RequestParts {
    request_parts(http::Request::get("/").body(()).expect("request"))
}

/// Runs the request hook of a request from `client` that must be admitted at once, and gives
/// the exchange that now holds the place.
fn admit(policy: &dyn Policy, client: &str) -> Exchange {
    let mut exchange = exchange_from(client);
    let flow = run_request(policy, &mut get(), &mut exchange);
    assert!(matches!(flow, Flow::Continue), "a request from {client} should have been admitted");
    exchange
}

/// Runs the request hook of a request that must be refused at once, and gives the refusal.
fn refuse(policy: &dyn Policy, client: &str) -> PolicyResponse {
    match run_request(policy, &mut get(), &mut exchange_from(client)) {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("a request from {client} should have been refused"),
    }
}

/// Runs the request hook in a task of its own, as the data plane runs each request.
fn spawn_request(policy: &Arc<dyn Policy>, client: &str) -> JoinHandle<(bool, Option<PolicyResponse>, Exchange)> {
    let policy = policy.clone();
    let mut exchange = exchange_from(client);
    tokio::spawn(async move {
        let flow = policy.on_request(&mut get(), &mut exchange).resolve().await;
        match flow {
            Flow::Continue => (true, None, exchange),
            Flow::Respond(response) => (false, Some(response), exchange),
        }
    })
}

/// Lets spawned tasks run until they wait (the tests run on one thread).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn problem(response: &PolicyResponse) -> serde_json::Value {
    assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
    serde_json::from_slice(response.body()).expect("problem json")
}

#[test]
fn admits_up_to_max_in_flight_and_refuses_the_next_with_503_and_retry_after() {
    let policy = build_at("refuses-past-max", json!({"max_in_flight": 2}));
    let _first = admit(&*policy, "10.0.0.1:1");
    let _second = admit(&*policy, "10.0.0.2:1");

    let refused = refuse(&*policy, "10.0.0.3:1");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[RETRY_AFTER], "1");
    let body = problem(&refused);
    assert_eq!(body["type"], "https://gantry.dev/problems/concurrency-limit-exceeded");
    assert_eq!(body["status"], 503);
    assert!(body["detail"].as_str().is_some_and(|detail| detail.contains("2 requests")), "{body}");
}

#[test]
fn gives_the_place_back_when_the_exchange_holding_it_is_dropped() {
    let policy = build_at("gives-back", json!({"max_in_flight": 1}));
    let first = admit(&*policy, "10.0.0.1:1");
    refuse(&*policy, "10.0.0.2:1");
    drop(first);
    let _next = admit(&*policy, "10.0.0.2:1");
}

#[test]
fn answers_with_the_configured_status_and_retry_after() {
    let policy = build_at("configured-answer", json!({"max_in_flight": 1, "status": 429, "retry_after": "2500ms"}));
    let _first = admit(&*policy, "10.0.0.1:1");
    let refused = refuse(&*policy, "10.0.0.1:2");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[RETRY_AFTER], "3", "Retry-After is rounded up to whole seconds");
    assert_eq!(problem(&refused)["status"], 429);
}

#[test]
fn counts_each_key_on_its_own() {
    let policy = build_at("per-ip", json!({"max_in_flight": 1, "key": ["ip"]}));
    let _first = admit(&*policy, "10.0.0.1:1");
    refuse(&*policy, "10.0.0.1:2");
    let _other_client = admit(&*policy, "10.0.0.2:1");
}

#[test]
fn counts_each_route_on_its_own_under_one_policy() {
    let policy = build_at("shared-by-routes", json!({"max_in_flight": 1}));
    let _first = admit(&*policy, "10.0.0.1:1");
    refuse(&*policy, "10.0.0.1:2");
    let mut elsewhere = exchange_from("10.0.0.1:3");
    elsewhere.route_id = "another-route".into();
    assert!(matches!(run_request(&*policy, &mut get(), &mut elsewhere), Flow::Continue));
}

#[tokio::test]
async fn queues_requests_and_admits_them_in_arrival_order_as_places_free() {
    let policy = build_at("fifo", json!({"max_in_flight": 1, "max_queued": 2, "queue_timeout": "10s"}));
    let first = admit(&*policy, "10.0.0.1:1");
    let second = spawn_request(&policy, "10.0.0.2:1");
    settle().await;
    let third = spawn_request(&policy, "10.0.0.3:1");
    settle().await;
    assert!(!second.is_finished() && !third.is_finished(), "both wait while the place is taken");

    drop(first);
    let (admitted, _, second_exchange) = second.await.expect("second request task");
    assert!(admitted, "the first in the queue gets the freed place");
    settle().await;
    assert!(!third.is_finished(), "the second in the queue waits for the next place");

    drop(second_exchange);
    let (admitted, _, _third_exchange) = third.await.expect("third request task");
    assert!(admitted);
}

#[tokio::test]
async fn refuses_at_once_when_the_queue_is_full() {
    let policy = build_at("queue-full", json!({"max_in_flight": 1, "max_queued": 1, "queue_timeout": "10s"}));
    let first = admit(&*policy, "10.0.0.1:1");
    let queued = spawn_request(&policy, "10.0.0.2:1");
    settle().await;
    let refused = refuse(&*policy, "10.0.0.3:1");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(problem(&refused)["detail"].as_str().is_some_and(|detail| detail.contains("queue is full")));

    drop(first);
    let (admitted, _, _exchange) = queued.await.expect("queued request task");
    assert!(admitted, "the queued request still gets its turn");
}

#[tokio::test]
async fn refuses_a_queued_request_once_the_queue_timeout_has_passed() {
    let policy = build_at("queue-timeout", json!({"max_in_flight": 1, "max_queued": 1, "queue_timeout": "50ms"}));
    let _first = admit(&*policy, "10.0.0.1:1");
    let started = std::time::Instant::now();
    let (admitted, refusal, _exchange) = spawn_request(&policy, "10.0.0.2:1").await.expect("queued request task");
    assert!(!admitted);
    assert!(started.elapsed() >= std::time::Duration::from_millis(50), "refused only after the timeout");
    let refusal = refusal.expect("a refusal");
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal.headers()[RETRY_AFTER], "1");
    assert!(problem(&refusal)["detail"].as_str().is_some_and(|detail| detail.contains("50ms")));

    // The timed-out request left the queue: the next one may wait in its place.
    let next = spawn_request(&policy, "10.0.0.3:1");
    settle().await;
    assert!(!next.is_finished(), "queued, not refused at once");
    next.abort();
}

#[tokio::test]
async fn a_client_gone_while_queued_leaves_the_queue() {
    let policy = build_at("gone-while-queued", json!({"max_in_flight": 1, "max_queued": 1, "queue_timeout": "10s"}));
    let first = admit(&*policy, "10.0.0.1:1");
    let gone = spawn_request(&policy, "10.0.0.2:1");
    settle().await;
    gone.abort();
    settle().await;

    let queued = spawn_request(&policy, "10.0.0.3:1");
    settle().await;
    assert!(!queued.is_finished(), "the queue has room again");
    drop(first);
    let (admitted, _, _exchange) = queued.await.expect("queued request task");
    assert!(admitted);
}

#[test]
fn keeps_counting_across_a_rebuild_with_the_same_place_size_and_key() {
    let before_reload = build_at("reloaded", json!({"max_in_flight": 1}));
    let _in_flight = admit(&*before_reload, "10.0.0.1:1");

    let after_reload = build_at("reloaded", json!({"max_in_flight": 1, "status": 429}));
    assert_eq!(refuse(&*after_reload, "10.0.0.2:1").status(), StatusCode::TOO_MANY_REQUESTS);

    let resized = build_at("reloaded", json!({"max_in_flight": 2}));
    let _counted_afresh = admit(&*resized, "10.0.0.2:1");
    let _and_again = admit(&*resized, "10.0.0.3:1");
}

#[test]
fn forgets_keys_once_their_requests_are_done() {
    let limiter = Arc::new(Limiter::new(1));
    let key = LimitKey::compile(&[KeyPart::Ip], &FieldPath::root(), &mut ConfigErrors::default());
    let held: Vec<Entered> = (0..2000u32)
        .map(|n| {
            let client = format!("10.{}.{}.1:1", n / 256, n % 256);
            limiter.enter(key.value(&get(), &exchange_from(&client)), 0)
        })
        .collect();
    assert!(held.iter().all(|entered| matches!(entered, Entered::Admitted(_))));
    assert_eq!(limiter.tracked_keys(), 2000);
    drop(held);
    assert_eq!(limiter.tracked_keys(), 0, "idle keys are removed");
}

#[test]
fn rejects_a_zero_limit_a_bad_status_and_a_zero_queue_timeout_at_their_paths() {
    let errors = build_policy_error(
        entry(),
        "max_in_flight: 0\nmax_queued: 3\nqueue_timeout: 0s\nstatus: 500\nkey: [{header: 'no good'}]",
    );
    let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
    assert_eq!(
        paths,
        [
            "global_policies[0].concurrency_limit.max_in_flight",
            "global_policies[0].concurrency_limit.queue_timeout",
            "global_policies[0].concurrency_limit.status",
            "global_policies[0].concurrency_limit.key[0].header",
        ]
    );
}

#[test]
fn rejects_settings_without_max_in_flight_or_with_an_unknown_key_part() {
    let missing = build_policy_error(entry(), "max_queued: 1");
    assert_eq!(missing.0[0].path.to_string(), "global_policies[0].concurrency_limit");
    assert!(missing.0[0].message.contains("max_in_flight"), "{missing}");

    let unknown = build_policy_error(entry(), "max_in_flight: 1\nkey: [tenant]");
    assert_eq!(unknown.0[0].path.to_string(), "global_policies[0].concurrency_limit.key[0]");
    assert!(unknown.0[0].message.contains("unknown variant"), "{unknown}");
}

#[test]
fn implements_only_the_request_hook() {
    let policy = build_at("hooks", json!({"max_in_flight": 1}));
    assert_eq!(policy.hooks(), Hooks::REQUEST);
}
