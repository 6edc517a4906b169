//! `any_auth` through a running gateway: an API key or HTTP Basic credentials, either one
//! enough; none gets 401 with both challenges, a wrong password is reported as such, and a
//! route with an anonymous stand-in lets keyless requests through.

use base64::Engine;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_listener};

fn config(upstream: &EchoUpstream) -> String {
    with_listener(&format!(
        "consumers:
  - id: partner
    credentials:
      key_auth: {{key: partner-key-4a1}}
    policies:
      - request_headers: {{set: {{x-consumer: partner}}}}
  - id: service
    credentials:
      basic_auth: {{username: svc, password: svc-password-9}}
    policies:
      - request_headers: {{set: {{x-consumer: service}}}}
  - id: public
    policies:
      - request_headers: {{set: {{x-consumer: public}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: strict
    paths: [/strict/*]
    upstream: up
    policies:
      - any_auth:
          methods:
            - key_auth: {{header: x-api-key}}
            - basic_auth: {{realm: svc}}
  - id: open
    paths: [/open/*]
    upstream: up
    policies:
      - any_auth:
          anonymous_consumer: public
          methods:
            - key_auth: {{header: x-api-key}}
            - basic_auth: {{realm: svc}}
",
        upstream = upstream.addr()
    ))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

async fn get(client: &TestClient, gateway: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> TestResponse {
    client.request(Method::GET, &gateway.url(path), headers, "").await
}

#[tokio::test]
async fn admits_either_method_and_refuses_with_every_challenge() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let by_key = get(&client, &gateway, "/strict/a", &[("x-api-key", "partner-key-4a1")]).await;
    assert_eq!(by_key.status, StatusCode::OK, "{by_key:?}");
    assert_eq!(by_key.json()["headers"]["x-consumer"], "partner");
    let password = basic("svc", "svc-password-9");
    let by_password = get(&client, &gateway, "/strict/a", &[("authorization", &password)]).await;
    assert_eq!(by_password.status, StatusCode::OK, "{by_password:?}");
    assert_eq!(by_password.json()["headers"]["x-consumer"], "service");

    let none = get(&client, &gateway, "/strict/a", &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> =
        none.headers.get_all("www-authenticate").iter().filter_map(|value| value.to_str().ok()).collect();
    assert_eq!(challenges, ["Key realm=\"gantry\"", "Basic realm=\"svc\", charset=\"UTF-8\""]);
    assert_eq!(none.json()["type"], "https://gantry.dev/problems/missing-credentials");

    let wrong = basic("svc", "not-the-password");
    let refused = get(&client, &gateway, "/strict/a", &[("authorization", &wrong)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/invalid-credentials");
    assert_eq!(upstream.requests(), 2, "a refused request reached the upstream");
}

#[tokio::test]
async fn lets_the_stand_in_through_only_without_credentials() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let keyless = get(&client, &gateway, "/open/a", &[]).await;
    assert_eq!(keyless.status, StatusCode::OK, "{keyless:?}");
    assert_eq!(keyless.json()["headers"]["x-consumer"], "public");
    let wrong = get(&client, &gateway, "/open/a", &[("x-api-key", "guessed")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}
