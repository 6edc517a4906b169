//! `circuit_breaker` through a running gateway against real upstreams that fail on demand:
//! an echo server answering `/status/<code>` and `/delay/<ms>`, and a port where nothing
//! listens. The tests count what reached the upstream, so a refusal is shown to cost the
//! upstream nothing, and they follow a circuit through open, half-open and closed again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::StatusCode;

use super::harness::assert_policy_answers;
use crate::support::{assert_metric, start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-circuit-breaker-5b0e";

/// Routes `/flaky/*` and `/steady/*` (prefix stripped) to `upstream`, without retries, with
/// `breaker` as a global policy, so each route has its own circuit of the same settings.
fn global_breaker(upstream: SocketAddr, breaker: &str, extra_routes: &str) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "upstreams:
  - id: echo
    endpoints: [{upstream}]
    retries: {{attempts: 0}}
global_policies:
  - circuit_breaker: {breaker}
routes:
  - id: flaky
    paths: [/flaky/*]
    upstream: echo
    rewrite: {{strip_prefix: /flaky}}
  - id: steady
    paths: [/steady/*]
    upstream: echo
    rewrite: {{strip_prefix: /steady}}
{extra_routes}"
        ),
    )
}

async fn get(client: &TestClient, gateway: &GatewayProcess, path: &str) -> TestResponse {
    client.get(&gateway.url(path)).await
}

/// Asserts the 503 problem of an open circuit, with its `Retry-After`.
fn assert_circuit_open(response: &TestResponse, route: &str, retry_after: &str) {
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_eq!(response.header("retry-after"), Some(retry_after), "{response:?}");
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/circuit-open");
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains(&format!("`{route}`"))), "{problem}");
}

#[tokio::test]
async fn opens_on_upstream_errors_refuses_without_the_upstream_then_closes_after_successful_trials() {
    let upstream = EchoUpstream::start("echo").await;
    let breaker = "{window: {calls: 4}, minimum_calls: 4, failure_ratio: 0.5, open_for: 1s, half_open_calls: 2}";
    let gateway = start_gateway(&global_breaker(upstream.addr(), breaker, ""));
    let client = TestClient::default();

    for path in ["/flaky/status/500", "/flaky/hello", "/flaky/status/502"] {
        assert_ne!(get(&client, &gateway, path).await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Two failures in three requests: still below minimum_calls, so this one goes through.
    assert_eq!(get(&client, &gateway, "/flaky/hello").await.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 4);
    // 2 of the last 4 failed: the circuit opened with the fourth outcome.
    let opened_at = Instant::now();
    let refused = get(&client, &gateway, "/flaky/hello").await;
    assert_circuit_open(&refused, "flaky", "1");
    assert_eq!(upstream.requests(), 4, "a refused request never reaches the upstream");

    // The other route has a circuit of its own.
    let steady = get(&client, &gateway, "/steady/hello").await;
    assert_eq!(steady.status, StatusCode::OK, "{steady:?}");
    assert_eq!(upstream.requests(), 5);
    assert_metric(&gateway, "gantry_circuit_state{route=\"flaky\"} 2").await;
    assert_metric(&gateway, "gantry_circuit_state{route=\"steady\"} 0").await;
    assert_policy_answers(&gateway, "circuit_breaker", 503, 1).await;

    // After open_for, the first request is a trial; the second closes the circuit.
    let first_trial = eventually("the circuit to let a trial request through", || async {
        let response = get(&client, &gateway, "/flaky/hello").await;
        (response.status == StatusCode::OK).then_some(response)
    })
    .await;
    assert_eq!(first_trial.json()["upstream"], "echo");
    assert!(opened_at.elapsed() >= Duration::from_secs(1), "a trial came before open_for: {:?}", opened_at.elapsed());
    assert_metric(&gateway, "gantry_circuit_state{route=\"flaky\"} 1").await;
    assert_eq!(get(&client, &gateway, "/flaky/hello").await.status, StatusCode::OK);
    assert_metric(&gateway, "gantry_circuit_state{route=\"flaky\"} 0").await;

    // Closed with an empty window: one failure does not open it again.
    assert_eq!(get(&client, &gateway, "/flaky/status/500").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&client, &gateway, "/flaky/hello").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failed_trial_opens_the_circuit_again() {
    let upstream = EchoUpstream::start("echo").await;
    let breaker = "{window: {calls: 2}, minimum_calls: 2, open_for: 300ms, half_open_calls: 1}";
    let gateway = start_gateway(&global_breaker(upstream.addr(), breaker, ""));
    let client = TestClient::default();
    upstream.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    for _ in 0..2 {
        assert_eq!(get(&client, &gateway, "/flaky/hello").await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_circuit_open(&get(&client, &gateway, "/flaky/hello").await, "flaky", "1");
    let before_trial = upstream.requests();
    eventually("a trial request to reach the upstream", || async {
        get(&client, &gateway, "/flaky/hello").await;
        (upstream.requests() > before_trial).then_some(())
    })
    .await;
    assert_eq!(upstream.requests(), before_trial + 1, "exactly one trial");
    // The trial failed (503 from the upstream): open again, refused without the upstream.
    let refused = get(&client, &gateway, "/flaky/hello").await;
    assert_circuit_open(&refused, "flaky", "1");
    assert_eq!(upstream.requests(), before_trial + 1);
}

#[tokio::test]
async fn unanswered_requests_always_count_and_only_the_configured_statuses_do() {
    let upstream = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&with_admin(
        ADMIN_KEY,
        &format!(
            "upstreams:
  - id: echo
    endpoints: [{upstream}]
    retries: {{attempts: 0}}
    timeouts: {{read: 150ms}}
routes:
  - id: slow
    paths: [/*]
    upstream: echo
    policies:
      - circuit_breaker:
          window: {{calls: 3}}
          minimum_calls: 3
          failure_ratio: 0.6
          failure_statuses: [503]
          open_for: 1m
",
            upstream = upstream.addr()
        ),
    ));
    let client = TestClient::default();
    assert_eq!(get(&client, &gateway, "/status/500").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&client, &gateway, "/status/500").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&client, &gateway, "/delay/2000").await.status, StatusCode::GATEWAY_TIMEOUT);
    // Had the 500s counted, 3 failures of 3 would have opened the circuit.
    assert_eq!(get(&client, &gateway, "/delay/2000").await.status, StatusCode::GATEWAY_TIMEOUT);
    // [500, 504, 504]: two timeouts of three requests reach 0.6.
    assert_circuit_open(&get(&client, &gateway, "/hello").await, "slow", "60");
}

#[tokio::test]
async fn answers_with_the_fallback_while_the_upstream_refuses_connections() {
    let dead = EchoUpstream::start("dead").await.stop().await;
    let gateway = start_gateway(&with_admin(
        ADMIN_KEY,
        &format!(
            "upstreams:
  - id: dead
    endpoints: [{dead}]
routes:
  - id: catalog
    paths: [/catalog]
    upstream: dead
    policies:
      - circuit_breaker:
          window: {{calls: 2}}
          minimum_calls: 2
          open_for: 1m
          fallback:
            status: 200
            headers: {{x-fallback: catalog}}
            json: {{items: [], degraded: true}}
"
        ),
    ));
    let client = TestClient::default();
    for _ in 0..2 {
        let refused = get(&client, &gateway, "/catalog").await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{refused:?}");
        assert_eq!(refused.json()["type"], "https://gantry.dev/problems/upstream-connect-failed");
    }
    let fallback = get(&client, &gateway, "/catalog").await;
    assert_eq!(fallback.status, StatusCode::OK, "{fallback:?}");
    assert_eq!(fallback.header("x-fallback"), Some("catalog"));
    assert_eq!(fallback.header("content-type"), Some("application/json"));
    assert_eq!(fallback.json(), serde_json::json!({"items": [], "degraded": true}));
    assert_policy_answers(&gateway, "circuit_breaker", 200, 1).await;
}

#[tokio::test]
async fn a_reload_keeps_an_open_circuit_open() {
    let upstream = EchoUpstream::start("echo").await;
    let breaker = |open_for: &str| format!("{{window: {{calls: 2}}, minimum_calls: 2, open_for: {open_for}}}");
    let gateway = start_gateway(&global_breaker(upstream.addr(), &breaker("1m"), ""));
    let client = TestClient::default();
    for _ in 0..2 {
        assert_eq!(get(&client, &gateway, "/flaky/status/500").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_circuit_open(&get(&client, &gateway, "/flaky/hello").await, "flaky", "60");

    let probe = "  - id: probe\n    paths: [/probe]\n    policies:\n      - mock_response: {body: reloaded}\n";
    std::fs::write(gateway.config_path(), global_breaker(upstream.addr(), &breaker("2m"), probe))
        .expect("rewrite the configuration");
    eventually("the new configuration to be applied", || async {
        (get(&client, &gateway, "/probe").await.status == StatusCode::OK).then_some(())
    })
    .await;
    let requests = upstream.requests();
    // Still open, and still counting down from when it opened (under the first minute).
    let refused = get(&client, &gateway, "/flaky/hello").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    let retry_after: u64 = refused.header("retry-after").and_then(|value| value.parse().ok()).expect("Retry-After");
    assert!(retry_after <= 60, "the circuit kept the time it opened at: {retry_after}");
    assert_eq!(upstream.requests(), requests);
    assert_eq!(get(&client, &gateway, "/steady/hello").await.status, StatusCode::OK);
}
