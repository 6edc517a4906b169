//! `cors` through a running gateway: preflights answered by the gateway before `key_auth`
//! and never forwarded, refused preflights answered 403 without CORS headers, and the CORS
//! headers on every actual response: the upstream's, `key_auth`'s 401 and the gateway's own
//! 502, so a page can read each of them.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-cors-7d21";
const APP: &str = "https://app.example.com";

/// A global `cors` for the app's origins, and route `/api/*` behind `key_auth`.
fn config(upstream: std::net::SocketAddr) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "consumers:
  - id: web-app
    credentials:
      key_auth: {{key: web-app-key-0123456789}}
upstreams:
  - id: up
    endpoints: [{upstream}]
global_policies:
  - cors:
      allow_origins: [{APP}, \"https://*.preview.example.com\"]
      allow_methods: [GET, POST, PUT, DELETE]
      allow_headers: [apikey, content-type]
      expose_headers: [x-request-id]
      allow_credentials: true
      max_age: 10m
routes:
  - id: api
    paths: [/api/*]
    upstream: up
    policies:
      - key_auth: {{}}
"
        ),
    )
}

async fn preflight(client: &TestClient, url: &str, origin: &str, method: &str, headers: &str) -> TestResponse {
    client
        .request(
            Method::OPTIONS,
            url,
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", headers),
            ],
            "",
        )
        .await
}

fn assert_names_origin(response: &TestResponse, origin: &str) {
    assert_eq!(response.header("access-control-allow-origin"), Some(origin), "{response:?}");
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(response.header("access-control-expose-headers"), Some("x-request-id"));
    assert_eq!(response.header("vary"), Some("Origin"));
}

#[tokio::test]
async fn answers_an_allowed_preflight_before_authentication_and_never_forwards_it() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(upstream.addr()));
    let client = TestClient::default();

    // No key: a browser sends none with a preflight, and key_auth must not see it.
    let answer = preflight(&client, &gateway.url("/api/orders"), APP, "PUT", "apikey,content-type").await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert_eq!(answer.header("access-control-allow-methods"), Some("GET, POST, PUT, DELETE"));
    assert_eq!(answer.header("access-control-allow-headers"), Some("apikey, content-type"));
    assert_eq!(answer.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(answer.header("access-control-max-age"), Some("600"));
    assert_eq!(answer.header("vary"), Some("Origin"));
    assert!(answer.body.is_empty());

    let pattern = preflight(&client, &gateway.url("/api/orders"), "https://pr-7.preview.example.com", "GET", "").await;
    assert_eq!(pattern.status, StatusCode::NO_CONTENT, "{pattern:?}");
    assert_eq!(pattern.header("access-control-allow-origin"), Some("https://pr-7.preview.example.com"));

    assert_eq!(upstream.requests(), 0, "a preflight reached the upstream");
    assert_policy_answers(&gateway, "cors", 204, 2).await;
}

#[tokio::test]
async fn refuses_a_preflight_asking_for_too_much_with_403_and_no_cors_headers() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(upstream.addr()));
    let client = TestClient::default();
    let url = gateway.url("/api/orders");

    for (origin, method, headers, detail) in [
        ("https://evil.example", "GET", "", "the origin is not allowed"),
        (APP, "PATCH", "", "the method PATCH is not allowed"),
        (APP, "PUT", "apikey,x-debug", "the request header x-debug is not allowed"),
    ] {
        let refused = preflight(&client, &url, origin, method, headers).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
        assert_eq!(refused.header("content-type"), Some("application/problem+json"));
        let problem = refused.json();
        assert_eq!(problem["type"], "https://gantry.dev/problems/cors-preflight-refused");
        assert_eq!(problem["detail"], detail);
        assert!(
            refused.headers.keys().all(|name| !name.as_str().starts_with("access-control-")),
            "{:?}",
            refused.headers
        );
    }
    assert_eq!(upstream.requests(), 0);
    assert_policy_answers(&gateway, "cors", 403, 3).await;
}

#[tokio::test]
async fn puts_cors_headers_on_the_upstreams_answer_and_on_key_auths_401() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(upstream.addr()));
    let client = TestClient::default();
    let url = gateway.url("/api/orders");

    let served = client.request(Method::GET, &url, &[("origin", APP), ("apikey", "web-app-key-0123456789")], "").await;
    assert_eq!(served.status, StatusCode::OK, "{served:?}");
    assert_names_origin(&served, APP);
    assert_eq!(served.json()["headers"]["origin"], APP, "the actual request reaches the upstream unchanged");

    let unauthorized = client.request(Method::GET, &url, &[("origin", APP)], "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED, "{unauthorized:?}");
    assert!(unauthorized.header("www-authenticate").is_some());
    assert_names_origin(&unauthorized, APP);

    // Not allowed, or no origin at all: the answer names no origin, yet still varies by it.
    for headers in [&[("origin", "https://evil.example"), ("apikey", "web-app-key-0123456789")][..], &[][..]] {
        let other = client.request(Method::GET, &url, headers, "").await;
        assert_eq!(other.header("vary"), Some("Origin"), "{other:?}");
        assert!(other.headers.keys().all(|name| !name.as_str().starts_with("access-control-")), "{other:?}");
    }
    assert_eq!(upstream.requests(), 2, "requests of other origins are not refused, only left unreadable");
}

#[tokio::test]
async fn puts_cors_headers_on_the_gateways_own_error_when_the_upstream_is_down() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(upstream.addr()));
    upstream.stop().await;

    let response = TestClient::default()
        .request(Method::GET, &gateway.url("/api/orders"), &[("origin", APP), ("apikey", "web-app-key-0123456789")], "")
        .await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_names_origin(&response, APP);
}
