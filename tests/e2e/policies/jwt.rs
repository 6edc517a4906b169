//! `jwt` through a running gateway with a real key set server: RS256 tokens signed by the test
//! reach the upstream with their claims as headers; expired, foreign and forged tokens are
//! refused and counted; a rotated key is found by refreshing the set; cached keys keep working
//! when the server goes down; a set that was never fetched gives 503; a remembered token is
//! refused once its key is withdrawn or once it expires.

use std::time::{SystemTime, UNIX_EPOCH};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::jwks::{JwksServer, SigningKey};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::harness::assert_policy_answers;
use crate::support::{start_gateway, with_admin};

/// Route `/api/*` checks tokens of `https://idp.test/` for the `orders` audience with the keys
/// published at `jwks_url`; `sub` and `tenant` go upstream as headers; `alice-sub` is `alice`.
fn config(upstream: &EchoUpstream, jwks_url: &str) -> String {
    config_with(upstream, jwks_url, "")
}

/// [`config`] with more settings of the `jwt` policy, each line indented by 10 spaces.
fn config_with(upstream: &EchoUpstream, jwks_url: &str, more: &str) -> String {
    with_admin(
        "e2e-admin-key-jwt-5f2e",
        &format!(
            "consumers:
  - id: alice
    groups: [staff]
    credentials:
      jwt: {{subject: alice-sub}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: api
    paths: [/api/*]
    upstream: up
    policies:
      - jwt:
          jwks_url: {jwks_url}
          jwks_min_refresh: 100ms
          jwks_timeout: 2s
          issuers: [https://idp.test/]
          audiences: [orders]
          claims_to_headers: {{sub: x-user-id, tenant: x-tenant}}
{more}",
            upstream = upstream.addr()
        ),
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs()
}

/// Claims of a valid token for the route, with `extra` on top.
fn claims(extra: Value) -> Value {
    let mut claims =
        json!({"iss": "https://idp.test/", "aud": "orders", "sub": "alice-sub", "tenant": "acme", "exp": now() + 300});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}

async fn call(client: &TestClient, gateway: &GatewayProcess, token: &str, extra: &[(&str, &str)]) -> TestResponse {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("authorization", authorization.as_str())];
    headers.extend_from_slice(extra);
    client.request(Method::GET, &gateway.url("/api/orders"), &headers, "").await
}

fn assert_invalid_token(response: &TestResponse, description: &str) {
    assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{response:?}");
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert_eq!(
        challenge,
        format!("Bearer realm=\"gantry\", error=\"invalid_token\", error_description=\"{description}\""),
    );
    assert_eq!(response.json()["type"], "https://gantry.dev/problems/invalid-token");
}

#[tokio::test]
async fn admits_a_valid_rs256_token_and_sends_its_claims_upstream_instead_of_the_clients() {
    let key = SigningKey::rsa("2026-01");
    let keys = JwksServer::start(&[&key]).await;
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &keys.url()));
    let client = TestClient::default();

    let response = call(&client, &gateway, &key.sign(&claims(json!({}))), &[("x-tenant", "spoofed")]).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let seen = &response.json()["headers"];
    assert_eq!(seen["x-user-id"], "alice-sub");
    assert_eq!(seen["x-tenant"], "acme", "the client's own x-tenant must not reach the upstream: {seen}");
    assert!(seen.get("authorization").is_none(), "the token reached the upstream: {seen}");
    assert_eq!(upstream.requests(), 1);
    assert_eq!(keys.fetches(), 1, "the set is fetched once and then served from the cache");
}

#[tokio::test]
async fn refuses_missing_expired_foreign_and_forged_tokens_with_401_and_counts_them() {
    let key = SigningKey::rsa("2026-01");
    let keys = JwksServer::start(&[&key]).await;
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &keys.url()));
    let client = TestClient::default();

    let missing = client.get(&gateway.url("/api/orders")).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"gantry\""));
    assert_eq!(missing.json()["type"], "https://gantry.dev/problems/missing-token");

    let expired = key.sign(&claims(json!({"exp": now() - 600})));
    assert_invalid_token(&call(&client, &gateway, &expired, &[]).await, "the token has expired");
    let foreign = key.sign(&claims(json!({"aud": "payments"})));
    assert_invalid_token(&call(&client, &gateway, &foreign, &[]).await, "the token's audience is not accepted");
    // Signed by a key of the same kid that the signer never published.
    let forged = SigningKey::rsa("2026-01").sign(&claims(json!({})));
    let refused = call(&client, &gateway, &forged, &[]).await;
    assert_invalid_token(&refused, "the token's signature is not valid");
    assert!(!String::from_utf8_lossy(&refused.body).contains(&forged), "the token was echoed");
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");
    assert_policy_answers(&gateway, "jwt", 401, 4).await;
}

#[tokio::test]
async fn accepts_a_rotated_key_by_refreshing_the_key_set_on_its_unknown_kid() {
    let old = SigningKey::rsa("2026-01");
    let keys = JwksServer::start(&[&old]).await;
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &keys.url()));
    let client = TestClient::default();
    assert_eq!(call(&client, &gateway, &old.sign(&claims(json!({}))), &[]).await.status, StatusCode::OK);

    let new = SigningKey::rsa("2026-02");
    keys.publish(&[&old, &new]);
    let token = new.sign(&claims(json!({})));
    // A refresh is allowed once `jwks_min_refresh` has passed since the last fetch.
    let (client, gateway, token) = (&client, &gateway, &token);
    eventually("the rotated key is accepted", || async move {
        let response = call(client, gateway, token, &[]).await;
        (response.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(keys.fetches(), 2, "one refresh found the new key");
}

#[tokio::test]
async fn keeps_verifying_with_cached_keys_while_the_key_set_server_is_down() {
    let key = SigningKey::rsa("2026-01");
    let mut keys = JwksServer::start(&[&key]).await;
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &keys.url()));
    let client = TestClient::default();
    assert_eq!(call(&client, &gateway, &key.sign(&claims(json!({}))), &[]).await.status, StatusCode::OK);

    keys.stop();
    // An unknown kid makes the gateway try the stopped server (once `jwks_min_refresh` has
    // passed), which fails ...
    let stranger = SigningKey::rsa("2026-99").sign(&claims(json!({})));
    let (client_ref, gateway_ref, stranger) = (&client, &gateway, &stranger);
    eventually("a warning about the failed fetch", || async move {
        let refused = call(client_ref, gateway_ref, stranger, &[]).await;
        assert_invalid_token(&refused, "no verification key matches the token's kid and alg");
        gateway_ref.logs().iter().any(|line| line.contains("key set fetch failed")).then_some(())
    })
    .await;

    // ... and the last good key set stays in use.
    let response = call(&client, &gateway, &key.sign(&claims(json!({"sub": "bob"}))), &[]).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.json()["headers"]["x-user-id"], "bob");
}

#[tokio::test]
async fn answers_503_while_the_key_set_was_never_fetched() {
    let mut keys = JwksServer::start(&[]).await;
    let url = keys.url();
    keys.stop();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &url));
    let client = TestClient::default();

    let response = call(&client, &gateway, &SigningKey::rsa("k").sign(&claims(json!({}))), &[]).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{response:?}");
    assert_eq!(response.json()["type"], "https://gantry.dev/problems/keys-unavailable");
    assert!(response.header("retry-after").is_some());
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn refuses_a_remembered_token_once_a_refreshed_key_set_has_withdrawn_its_key() {
    let old = SigningKey::rsa("2026-01");
    let keys = JwksServer::start(&[&old]).await;
    let upstream = EchoUpstream::start("up").await;
    // Refreshed a second after a fetch, when the set is used.
    let gateway = start_gateway(&config_with(&upstream, &keys.url(), "          jwks_refresh: 1s\n"));
    let client = TestClient::default();
    let token = old.sign(&claims(json!({})));
    for _ in 0..3 {
        assert_eq!(call(&client, &gateway, &token, &[]).await.status, StatusCode::OK);
    }

    // The signer withdraws the key. Requests with the remembered token are answered from the
    // cache, and still count as uses of the key set: its refresh finds the key gone, and the
    // token is refused from then on.
    keys.publish(&[&SigningKey::rsa("2026-02")]);
    let (client, gateway, token) = (&client, &gateway, &token);
    let refused = eventually("the withdrawn key's token is refused", || async move {
        let response = call(client, gateway, token, &[]).await;
        (response.status != StatusCode::OK).then_some(response)
    })
    .await;
    assert_invalid_token(&refused, "no verification key matches the token's kid and alg");
    assert!(keys.fetches() >= 2, "the set was refreshed");
    assert_eq!(call(client, gateway, token, &[]).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refuses_a_remembered_token_once_it_has_expired() {
    let key = SigningKey::rsa("2026-01");
    let keys = JwksServer::start(&[&key]).await;
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config_with(&upstream, &keys.url(), "          leeway: 0s\n"));
    let client = TestClient::default();
    let issued = now();
    let token = key.sign(&claims(json!({"exp": issued + 2})));
    for _ in 0..2 {
        assert_eq!(call(&client, &gateway, &token, &[]).await.status, StatusCode::OK);
    }

    while now() <= issued + 2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_invalid_token(&call(&client, &gateway, &token, &[]).await, "the token has expired");
    assert_eq!(upstream.requests(), 2);
}
