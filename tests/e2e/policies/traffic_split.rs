//! `traffic_split` through a running gateway against two real upstreams, a stable one and a
//! canary: a thousand requests split exactly 90/10 by the weighted schedule, header and
//! cookie rules sending every matching request to the canary, a blue-green switch by reload,
//! and an unknown upstream id refused at load with its field path.

use std::net::SocketAddr;
use std::process::Command;

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use tokio::task::JoinSet;

use crate::support::{gantry_binary, start_gateway, with_listener};

/// Route `/shop/*` to `stable`, with `rules` as its `traffic_split` rules (indented for a
/// list under `rules:`).
fn config(stable: SocketAddr, canary: SocketAddr, rules: &str, extra_routes: &str) -> String {
    with_listener(&format!(
        "upstreams:
  - id: stable
    endpoints: [{stable}]
  - id: canary
    endpoints: [{canary}]
routes:
  - id: shop
    paths: [/shop/*]
    upstream: stable
    policies:
      - traffic_split:
          rules:
{rules}{extra_routes}"
    ))
}

const CANARY_RULES: &str = "            - match: {headers: [{name: x-canary, exact: 'yes'}]}
              upstreams: [{upstream: canary}]
            - match: {cookies: [{name: beta, present: true}]}
              upstreams: [{upstream: canary}]
            - upstreams:
                - {weight: 90}
                - {upstream: canary, weight: 10}
";

/// Sends `count` GETs of `/shop/item`, eight at a time, with `headers`; gives how many each
/// upstream answered, by the name it puts in `x-upstream`.
async fn send(gateway: &GatewayProcess, count: usize, headers: &[(&'static str, &'static str)]) -> (usize, usize) {
    let client = TestClient::default();
    let url = gateway.url("/shop/item");
    let mut tasks = JoinSet::new();
    for worker in 0..8 {
        let (client, url, headers) = (client.clone(), url.clone(), headers.to_vec());
        let share = count / 8 + usize::from(worker < count % 8);
        tasks.spawn(async move {
            let mut answered_by = Vec::with_capacity(share);
            for _ in 0..share {
                let response = client.request(Method::GET, &url, &headers, "").await;
                assert_eq!(response.status, StatusCode::OK, "{response:?}");
                answered_by.push(response.header("x-upstream").unwrap_or_default().to_owned());
            }
            answered_by
        });
    }
    let mut counts = (0, 0);
    while let Some(answered_by) = tasks.join_next().await {
        for name in answered_by.expect("a request task") {
            match name.as_str() {
                "stable" => counts.0 += 1,
                "canary" => counts.1 += 1,
                other => panic!("answered by `{other}`"),
            }
        }
    }
    counts
}

#[tokio::test]
async fn splits_a_thousand_requests_exactly_by_weight_and_sends_matching_requests_to_the_canary() {
    let stable = EchoUpstream::start("stable").await;
    let canary = EchoUpstream::start("canary").await;
    let gateway = start_gateway(&config(stable.addr(), canary.addr(), CANARY_RULES, ""));

    // Each run of 10 requests of the weighted rule sends exactly 9 and 1, whatever the
    // concurrency, so 1000 requests split exactly.
    assert_eq!(send(&gateway, 1000, &[]).await, (900, 100));
    assert_eq!((stable.requests(), canary.requests()), (900, 100));

    assert_eq!(send(&gateway, 50, &[("x-canary", "yes")]).await, (0, 50), "the header rule takes all");
    assert_eq!(send(&gateway, 30, &[("cookie", "theme=dark; beta=1")]).await, (0, 30), "the cookie rule takes all");
    assert_eq!(send(&gateway, 10, &[("x-canary", "no")]).await, (9, 1), "a header that does not match is weighted");
    assert_eq!((stable.requests(), canary.requests()), (909, 181));
}

#[tokio::test]
async fn a_reload_switches_blue_to_green_without_a_restart() {
    let blue = EchoUpstream::start("stable").await;
    let green = EchoUpstream::start("canary").await;
    let rules = |blue_weight: u32, green_weight: u32| {
        format!("            - upstreams:\n                - {{weight: {blue_weight}}}\n                - {{upstream: canary, weight: {green_weight}}}\n")
    };
    let gateway = start_gateway(&config(blue.addr(), green.addr(), &rules(1, 0), ""));
    assert_eq!(send(&gateway, 20, &[]).await, (20, 0), "a weight of 0 gets nothing");

    let probe = "  - id: probe\n    paths: [/probe]\n    policies:\n      - mock_response: {body: reloaded}\n";
    std::fs::write(gateway.config_path(), config(blue.addr(), green.addr(), &rules(0, 1), probe))
        .expect("rewrite the configuration");
    let client = TestClient::default();
    eventually("the new configuration to be applied", || async {
        (client.get(&gateway.url("/probe")).await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(send(&gateway, 20, &[]).await, (0, 20));
}

#[test]
fn an_unknown_upstream_is_refused_at_load_with_its_path_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gantry.yaml");
    let rules =
        "            - upstreams:\n                - {weight: 90}\n                - {upstream: canery, weight: 10}\n";
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
    std::fs::write(&file, config(addr, addr, rules, "")).expect("write the configuration");
    let output = Command::new(gantry_binary())
        .args(["validate", "--config", file.to_str().expect("UTF-8 temp path")])
        .output()
        .expect("run gantry validate");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(
            "gantry.yaml:18:20: routes[shop].policies[0].traffic_split.rules[0].upstreams[1].upstream: unknown upstream `canery`"
        ),
        "{printed}"
    );
}
