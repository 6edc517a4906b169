//! `ip_restriction` through a running gateway. The tests connect from 127.0.0.1, and from
//! 127.0.0.2 to be a second client on the same machine; a denied request never reaches the
//! upstream.

use gantry_testkit::EchoUpstream;
use http::StatusCode;

use super::harness::{get_from, LOOPBACK, OTHER_LOOPBACK};
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
