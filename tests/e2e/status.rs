//! `GET /status` and `gantry status` through a running gateway: the summary counts what the
//! gateway served, shows a dead endpoint as unavailable, and reports a rejected reload.

use std::net::SocketAddr;
use std::process::Command;

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::StatusCode;
use serde_json::Value;

use crate::support::{admin_get, closed_address, gantry_binary, with_admin};

const KEY: &str = "status-admin-key-0123456789";

fn config(upstream: SocketAddr, dead: SocketAddr) -> String {
    with_admin(
        KEY,
        &format!(
            "upstreams:\n  - id: shop\n    endpoints: [{upstream}]\n  - id: gone\n    endpoints: [{dead}]\n    retries: {{attempts: 0}}\n    health_check:\n      passive: {{max_failures: 1, ejection: 60s}}\nroutes:\n  - id: orders\n    paths: [/orders/*]\n    upstream: shop\n  - id: quiet\n    paths: [/quiet]\n    upstream: shop\n  - id: broken\n    paths: [/broken]\n    upstream: gone\n"
        ),
    )
}

async fn status(gateway: &GatewayProcess, query: &str) -> Value {
    let response = admin_get(gateway, KEY, &format!("/status{query}")).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    response.json()
}

fn route<'s>(status: &'s Value, id: &str) -> &'s Value {
    status["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|route| route["id"] == id))
        .unwrap_or_else(|| panic!("no route {id} in {status:#}"))
}

#[tokio::test]
async fn sums_up_requests_per_route_endpoint_health_and_reloads() {
    let upstream = EchoUpstream::start("status").await;
    let dead = closed_address();
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &config(upstream.addr(), dead), &[]);
    let client = TestClient::default();
    for id in 0..4 {
        assert_eq!(client.get(&gateway.url(&format!("/orders/{id}"))).await.status, StatusCode::OK);
    }
    assert_eq!(client.get(&gateway.url("/broken")).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(client.get(&gateway.url("/nowhere")).await.status, StatusCode::NOT_FOUND);

    // Route counters are added when the response head is sent, a moment before the client
    // has read the whole answer.
    let summary = eventually("/status to count the five routed requests", || async {
        let summary = status(&gateway, "").await;
        let counted = |id: &str| route(&summary, id)["traffic"]["summary"]["requests"].as_u64();
        (counted("orders") == Some(4) && counted("broken") == Some(1)).then_some(summary)
    })
    .await;
    assert_eq!(summary["config"]["generation"], 1);
    assert_eq!(summary["config"]["routes"], 3);
    assert_eq!(summary["config"]["reload_failures"], 0);
    assert_eq!(summary["unmatched"]["4xx"], 1);
    let orders = &route(&summary, "orders")["traffic"];
    assert_eq!(orders["summary"]["status_classes"]["2xx"], 4);
    let p99 = orders["summary"]["duration"]["p99_ms"].as_f64().expect("a p99 once requests were served");
    let p50 = orders["summary"]["duration"]["p50_ms"].as_f64().expect("a p50");
    assert!(p50 > 0.0 && p50 <= p99, "{orders:#}");
    assert_eq!(route(&summary, "broken")["traffic"]["summary"]["status_classes"]["5xx"], 1);
    assert_eq!(route(&summary, "quiet")["traffic"]["summary"]["requests"], 0);
    assert!(route(&summary, "quiet")["traffic"]["summary"]["duration"].is_null());

    let upstreams = summary["upstreams"].as_array().expect("upstreams");
    let shop = &upstreams[0];
    assert_eq!((shop["id"].as_str(), shop["endpoints_available"].as_u64()), (Some("shop"), Some(1)));
    assert_eq!(shop["endpoints"][0]["tries"]["status_classes"]["2xx"], 4);
    let gone = &upstreams[1];
    assert_eq!(gone["endpoints_available"], 0, "one failure ejects the dead endpoint: {gone:#}");
    assert_eq!(gone["endpoints"][0]["available"], false);
    assert_eq!(gone["endpoints"][0]["failures"]["connect"], 1);

    let top = status(&gateway, "?top=1").await;
    let ids: Vec<&str> = top["routes"].as_array().expect("routes").iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["orders"], "the busiest route alone");

    // A rejected change shows as such while the running configuration keeps serving.
    let bad = admin_put(&gateway, "/routes/orders", "{\"paths\": [\"no-slash\"], \"upstream\": \"shop\"}").await;
    assert!(bad.status.is_client_error(), "{bad:?}");
    let after = status(&gateway, "").await;
    assert_eq!(after["config"]["reload_failures"], 1);
    assert_eq!(after["config"]["last_reload_failed"], true);
    assert_eq!(after["config"]["generation"], 1);

    let output = Command::new(gantry_binary())
        .args(["status", "--admin", &gateway.admin_addr().to_string(), "--top", "2"])
        .env("GANTRY_ADMIN_KEY", KEY)
        .output()
        .expect("gantry status runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(text.starts_with("gantry "), "{text}");
    assert!(text.contains("generation 1") && text.contains("rejected reloads 1 (the latest was rejected)"), "{text}");
    let orders_row: Vec<&str> = text
        .lines()
        .find(|line| line.starts_with("orders "))
        .unwrap_or_else(|| panic!("no orders row in:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(&orders_row[..6], ["orders", "4", "4", "0", "0", "0"], "{text}");
    let dead_row = format!("gone      {dead}");
    assert!(
        text.lines().any(|line| line.starts_with(&dead_row) && line.split_whitespace().nth(2) == Some("no")),
        "{text}"
    );
}

#[tokio::test]
async fn refuses_a_bad_query_and_a_missing_key_with_problems() {
    let gateway = GatewayProcess::start(gantry_binary(), &with_admin(KEY, ""));
    let bad = admin_get(&gateway, KEY, "/status?top=many").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.header("content-type"), Some("application/problem+json"));
    let anonymous = TestClient::default().get(&format!("http://{}/status", gateway.admin_addr())).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let output = Command::new(gantry_binary())
        .args(["status", "--admin", &gateway.admin_addr().to_string(), "--key", "wrong-key-0123456789"])
        .output()
        .expect("gantry status runs");
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("401"), "{error}");
}

async fn admin_put(gateway: &GatewayProcess, path: &str, body: &str) -> gantry_testkit::client::TestResponse {
    let url = format!("http://{}{path}", gateway.admin_addr());
    TestClient::default()
        .request(http::Method::PUT, &url, &[("x-api-key", KEY), ("content-type", "application/json")], body.to_owned())
        .await
}
