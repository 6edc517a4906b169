//! `ip_restriction` through a running gateway. The tests connect from 127.0.0.1, and from
//! 127.0.0.2 to be a second client on the same machine; a denied request never reaches the
//! upstream. With `ban`, an address is banned after repeated failures answered by `key_auth`
//! or by the upstream, and then refused before its key is even checked.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Request, StatusCode};
use http_body_util::Full;

use super::harness::{get_from, send_from, LOOPBACK, OTHER_LOOPBACK};
use crate::support::{start_gateway, with_listener};

/// One route per rule, all in front of `upstream`.
fn config(upstream: &EchoUpstream, routes: &[(&str, &str)]) -> String {
    let mut yaml = format!("upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n", upstream.addr());
    for (index, (path, settings)) in routes.iter().enumerate() {
        yaml.push_str(&format!(
            "  - id: r{index}\n    paths: [{path}]\n    upstream: up\n    policies:\n      - ip_restriction: {settings}\n"
        ));
    }
    with_listener(&yaml)
}

fn assert_denied_problem(response: &gantry_testkit::client::TestResponse, status: StatusCode, detail: &str) {
    assert_eq!(response.status, status, "{:?}", response.body);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/ip-denied");
    assert_eq!(problem["status"], status.as_u16());
    assert_eq!(problem["detail"], detail);
}

#[tokio::test]
async fn denies_a_client_in_the_deny_list_with_a_403_problem() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(
        &upstream,
        &[("/loopback-denied", "{deny: [127.0.0.0/8]}"), ("/others-denied", "{deny: [10.0.0.0/8, 192.0.2.7]}")],
    ));
    let addr = gateway.addr(0);

    let denied = get_from(LOOPBACK, addr, "/loopback-denied").await;
    assert_denied_problem(&denied, StatusCode::FORBIDDEN, "Your IP address is not allowed");
    assert_eq!(upstream.requests(), 0, "a denied request reached the upstream");

    let passed = get_from(LOOPBACK, addr, "/others-denied").await;
    assert_eq!(passed.status, StatusCode::OK);
    assert_eq!(passed.json()["upstream"], "up");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn denies_a_client_missing_from_the_allow_list_and_passes_one_in_it() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(
        &upstream,
        &[
            ("/private-nets", "{allow: [10.0.0.0/8, 192.168.0.0/16, 2001:db8::/32]}"),
            ("/loopback", "{allow: [127.0.0.0/8]}"),
            ("/one-address", "{allow: [127.0.0.1]}"),
        ],
    ));
    let addr = gateway.addr(0);

    let denied = get_from(LOOPBACK, addr, "/private-nets").await;
    assert_denied_problem(&denied, StatusCode::FORBIDDEN, "Your IP address is not allowed");
    assert_eq!(upstream.requests(), 0);

    let allowed = get_from(LOOPBACK, addr, "/loopback").await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(allowed.json()["path"], "/loopback");

    // The same rule seen from two clients: only the listed address passes.
    assert_eq!(get_from(LOOPBACK, addr, "/one-address").await.status, StatusCode::OK);
    let other = get_from(OTHER_LOOPBACK, addr, "/one-address").await;
    assert_denied_problem(&other, StatusCode::FORBIDDEN, "Your IP address is not allowed");
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn lets_deny_win_over_allow() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &[("/mixed", "{allow: [127.0.0.0/8], deny: [127.0.0.2]}")]));
    let addr = gateway.addr(0);

    assert_eq!(get_from(LOOPBACK, addr, "/mixed").await.status, StatusCode::OK);
    let denied = get_from(OTHER_LOOPBACK, addr, "/mixed").await;
    assert_denied_problem(&denied, StatusCode::FORBIDDEN, "Your IP address is not allowed");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn answers_a_denial_with_the_configured_status_and_message() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(
        &upstream,
        &[
            ("/hidden", "{allow: [10.0.0.0/8], status: 404, message: Not found}"),
            ("/legal", "{deny: [127.0.0.1], status: 451, message: 'Unavailable in your region'}"),
        ],
    ));
    let addr = gateway.addr(0);

    let hidden = get_from(LOOPBACK, addr, "/hidden").await;
    assert_denied_problem(&hidden, StatusCode::NOT_FOUND, "Not found");
    let legal = get_from(LOOPBACK, addr, "/legal").await;
    assert_denied_problem(&legal, StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, "Unavailable in your region");
    assert_eq!(upstream.requests(), 0);

    // The rule is per address: another client of the same route passes.
    assert_eq!(get_from(OTHER_LOOPBACK, addr, "/legal").await.status, StatusCode::OK);
}

const ADMIN_KEY: &str = "e2e-admin-key-ip-restriction-5b1e";
const RIGHT_KEY: &str = "billing-key-e2e-93f1";

/// `GET path` from `from`, with `apikey: key` when given.
async fn get_with_key(from: IpAddr, gateway: SocketAddr, path: &str, key: Option<&str>) -> TestResponse {
    let mut request = Request::get(path).header("host", gateway.to_string());
    if let Some(key) = key {
        request = request.header("apikey", key);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    send_from(from, gateway, request).await.unwrap_or_else(|err| panic!("GET {path} from {from} failed: {err}"))
}

fn assert_banned(response: &TestResponse, longest_wait: u64) {
    assert_eq!(response.status, StatusCode::FORBIDDEN, "{:?}", response.body);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/ip-banned");
    assert_eq!(problem["status"], 403);
    let retry_after: u64 = response
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {:?}", response.headers));
    assert!((1..=longest_wait).contains(&retry_after), "Retry-After: {retry_after}");
}

async fn metrics(gateway: &GatewayProcess) -> String {
    let response = TestClient::default().get(&format!("http://{}/metrics", gateway.admin_addr())).await;
    assert_eq!(response.status, StatusCode::OK);
    String::from_utf8_lossy(&response.body).into_owned()
}

#[tokio::test]
async fn bans_an_address_after_repeated_key_auth_failures_and_refuses_it_before_checking_its_key() {
    let upstream = EchoUpstream::start("billing").await;
    let gateway = start_gateway(&format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin:
    address: 127.0.0.1:0
    api_key: {ADMIN_KEY}
consumers:
  - id: billing
    credentials:
      key_auth: {{key: {RIGHT_KEY}}}
upstreams:
  - id: billing
    endpoints: [{upstream}]
routes:
  - id: billing
    paths: [/billing/*]
    upstream: billing
    policies:
      - key_auth: {{}}
      - ip_restriction: {{ban: {{after_failures: 3, within: 60s, for: 10m, statuses: [401, 403]}}}}
",
        upstream = upstream.addr()
    ));
    let addr = gateway.addr(0);

    for guess in ["guess-1", "guess-2", "guess-3"] {
        let refused = get_with_key(LOOPBACK, addr, "/billing/invoices", Some(guess)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "key_auth refuses a wrong key");
    }
    // Banned now: even the right key gets the ban's 403, so the client cannot tell a right
    // guess from a wrong one, and the upstream sees nothing.
    let right_key = get_with_key(LOOPBACK, addr, "/billing/invoices", Some(RIGHT_KEY)).await;
    assert_banned(&right_key, 600);
    assert_banned(&get_with_key(LOOPBACK, addr, "/billing/invoices", Some("guess-4")).await, 600);
    assert_eq!(upstream.requests(), 0);

    let other_client = get_with_key(OTHER_LOOPBACK, addr, "/billing/invoices", Some(RIGHT_KEY)).await;
    assert_eq!(other_client.status, StatusCode::OK, "the ban is for one address");
    assert_eq!(upstream.requests(), 1);

    let text = metrics(&gateway).await;
    assert!(
        text.lines().any(|line| line == "gantry_policy_answers_total{policy=\"key_auth\",status=\"401\"} 3"),
        "{text}"
    );
    assert!(
        text.lines().any(|line| line == "gantry_policy_answers_total{policy=\"ip_restriction\",status=\"403\"} 2"),
        "{text}"
    );
    let logs = gateway.logs().join("\n");
    assert!(logs.contains("banned by ip_restriction after repeated failures"), "{logs}");
    assert!(!logs.contains(RIGHT_KEY), "the log shows the key: {logs}");
}

#[tokio::test]
async fn counts_failures_answered_by_the_upstream_and_lifts_the_ban_when_it_ends() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(
        &upstream,
        &[("/status/*", "{ban: {after_failures: 2, within: 60s, for: 1s, statuses: [403]}}")],
    ));
    let addr = gateway.addr(0);

    assert_eq!(get_from(LOOPBACK, addr, "/status/404").await.status, StatusCode::NOT_FOUND, "not a counted status");
    assert_eq!(get_from(LOOPBACK, addr, "/status/403").await.status, StatusCode::FORBIDDEN);
    assert_eq!(get_from(LOOPBACK, addr, "/status/403").await.status, StatusCode::FORBIDDEN);
    assert_eq!(upstream.requests(), 3);

    assert_banned(&get_from(LOOPBACK, addr, "/status/200").await, 1);
    assert_eq!(upstream.requests(), 3, "a banned request never reaches the upstream");

    eventually("the one-second ban ends", || async {
        (get_from(LOOPBACK, addr, "/status/200").await.status == StatusCode::OK).then_some(())
    })
    .await;
}
