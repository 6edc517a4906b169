//! `scopes` through a running gateway, after `jwt`: each method needs its scopes from the
//! token; a token lacking them gets 403 with an `insufficient_scope` challenge naming them,
//! and no token at all is left to `jwt`'s 401.

use std::time::{SystemTime, UNIX_EPOCH};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::jwks::SigningKey;
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::{start_gateway, with_listener};

const SECRET: &[u8] = b"e2e-scopes-shared-secret-32bytes";

fn config(upstream: &EchoUpstream) -> String {
    with_listener(&format!(
        "upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: orders
    paths: [/orders/*]
    upstream: up
    policies:
      - jwt:
          algorithms: [HS256]
          keys: [{{kid: k1, alg: HS256, secret: {secret}}}]
      - scopes:
          rules:
            - {{methods: [GET], require: [orders:read]}}
            - {{methods: [POST, DELETE], require: [orders:write]}}
",
        upstream = upstream.addr(),
        secret = String::from_utf8_lossy(SECRET)
    ))
}

/// A token granting `scope` (space-separated, RFC 8693 §4.2).
fn token(scope: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() + 300;
    SigningKey::sign_with_secret(
        SECRET,
        Algorithm::HS256,
        Some("k1"),
        &json!({"sub": "app", "scope": scope, "exp": exp}),
    )
}

async fn call(client: &TestClient, gateway: &GatewayProcess, method: Method, token: Option<&str>) -> TestResponse {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|value| ("authorization", value.as_str())).collect();
    client.request(method, &gateway.url("/orders/42"), &headers, "").await
}

#[tokio::test]
async fn grants_each_method_by_the_scopes_in_the_token() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();
    let reader = token("profile orders:read");

    assert_eq!(call(&client, &gateway, Method::GET, Some(&reader)).await.status, StatusCode::OK);
    let refused = call(&client, &gateway, Method::POST, Some(&reader)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"gantry\", error=\"insufficient_scope\", scope=\"orders:write\"")
    );
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/insufficient-scope");

    let writer = token("orders:write");
    assert_eq!(call(&client, &gateway, Method::POST, Some(&writer)).await.status, StatusCode::OK);
    assert_eq!(call(&client, &gateway, Method::GET, Some(&writer)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&client, &gateway, Method::PUT, Some(&writer)).await.status,
        StatusCode::FORBIDDEN,
        "no rule lists PUT"
    );
    assert_eq!(call(&client, &gateway, Method::GET, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.requests(), 2, "refused requests reached the upstream");
}
