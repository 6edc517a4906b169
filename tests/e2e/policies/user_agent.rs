//! `user_agent` through a running gateway: refused user agents (by wildcard, by regular
//! expression, or missing) never reach the upstream, the exceptions of `allow` do, and the
//! refusals are counted in `/metrics`.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-user-agent-52ab";

/// `/site/*` refuses scripted clients and bots but Google's, and requests without a user
/// agent; `/mobile/*` lets only the company's app in, answering others 404.
fn config(upstream: &EchoUpstream) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: site
    paths: [/site/*]
    upstream: up
    policies:
      - user_agent:
          deny: [\"curl/*\", \"python-requests/*\", \"*bot*\"]
          allow: [\"*Googlebot*\"]
          missing: deny
  - id: mobile
    paths: [/mobile/*]
    upstream: up
    policies:
      - user_agent:
          syntax: regex
          allow: ['^ShopApp/\\d+\\.\\d+ \\((?:iOS|Android)']
          case_sensitive: true
          status: 404
          message: Not found
",
            upstream = upstream.addr()
        ),
    )
}

async fn get_as(client: &TestClient, url: &str, user_agent: Option<&str>) -> TestResponse {
    let headers: Vec<(&str, &str)> = user_agent.map(|value| ("user-agent", value)).into_iter().collect();
    client.request(Method::GET, url, &headers, "").await
}

fn assert_refused(response: &TestResponse, status: StatusCode, detail: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/user-agent-denied");
    assert_eq!(problem["detail"], detail);
}

#[tokio::test]
async fn refuses_denied_and_missing_user_agents_before_the_upstream_and_lets_exceptions_through() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();
    let url = gateway.url("/site/page");

    for denied in ["curl/8.5.0", "python-requests/2.31.0", "Mozilla/5.0 (compatible; AhrefsBot/7.0)"] {
        assert_refused(&get_as(&client, &url, Some(denied)).await, StatusCode::FORBIDDEN, "Your client is not allowed");
    }
    assert_refused(&get_as(&client, &url, None).await, StatusCode::FORBIDDEN, "the request has no User-Agent header");
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");

    for allowed in ["Mozilla/5.0 (compatible; Googlebot/2.1)", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"] {
        let response = get_as(&client, &url, Some(allowed)).await;
        assert_eq!(response.status, StatusCode::OK, "{allowed}: {response:?}");
        assert_eq!(response.json()["headers"]["user-agent"], allowed, "passed on unchanged");
    }
    assert_eq!(upstream.requests(), 2);
    assert_policy_answers(&gateway, "user_agent", 403, 4).await;
}

#[tokio::test]
async fn lets_only_the_allowed_app_in_and_answers_others_with_the_configured_status() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();
    let url = gateway.url("/mobile/cart");

    let app = get_as(&client, &url, Some("ShopApp/4.12 (iOS 18.1; iPhone)")).await;
    assert_eq!(app.status, StatusCode::OK, "{app:?}");
    for other in [Some("shopapp/4.12 (iOS 18.1)"), Some("Mozilla/5.0 ShopApp/4.12 (iOS"), None] {
        assert_refused(&get_as(&client, &url, other).await, StatusCode::NOT_FOUND, "Not found");
    }
    assert_eq!(upstream.requests(), 1);
    assert_policy_answers(&gateway, "user_agent", 404, 3).await;
}
