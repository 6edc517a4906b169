//! `oauth2_introspection` through a running gateway against a real OpenID provider
//! (`oidc-provider`, run by node): opaque access tokens from the client credentials grant are
//! checked at the provider's introspection endpoint. Active tokens reach the upstream as their
//! consumer, revoked and made-up ones are refused, and once the provider is
//! gone, results cached before keep working while new tokens get 503.

use gantry_testkit::client::TestClient;
use gantry_testkit::oidc::OidcProvider;
use gantry_testkit::EchoUpstream;
use http::StatusCode;

use super::harness::{assert_policy_answers, get_with_bearer};
use crate::support::{start_gateway, with_admin};

/// Consumer `reporting` (its own `request_headers`) is the provider's test client; route
/// `/api/*` needs one of its tokens.
fn config(provider: &OidcProvider, upstream: &EchoUpstream) -> String {
    with_admin(
        "e2e-admin-key-introspection-7f2a",
        &format!(
            "consumers:
  - id: reporting
    groups: [internal]
    credentials:
      oauth2_introspection: {{subject: {client_id}}}
    policies:
      - request_headers: {{set: {{x-consumer: reporting}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: api
    paths: [/api/*]
    upstream: up
    policies:
      - oauth2_introspection:
          introspection_endpoint: {endpoint}
          client_id: {client_id}
          client_secret: {client_secret}
          token_type_hint: access_token
          consumer_claim: client_id
          require_consumer: true
          timeout: 2s
",
            upstream = upstream.addr(),
            endpoint = provider.introspection_endpoint(),
            client_id = OidcProvider::CLIENT_ID,
            client_secret = OidcProvider::CLIENT_SECRET,
        ),
    )
}

#[tokio::test]
async fn admits_an_active_token_as_its_consumer_and_hides_it() {
    let provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let client = TestClient::default();
    let token = provider.client_credentials_token("orders:read", None).await;
    assert!(token.split('.').count() < 3, "expected an opaque token, got a JWT");

    let passed = get_with_bearer(&client, &gateway, "/api/orders", &token).await;
    assert_eq!(passed.status, StatusCode::OK, "{passed:?}");
    let seen = passed.json();
    assert_eq!(seen["headers"]["x-consumer"], "reporting", "the consumer's own policies ran: {seen}");
    assert!(seen["headers"]["authorization"].is_null(), "the token reached the upstream: {seen}");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn refuses_revoked_and_made_up_tokens_with_401_invalid_token() {
    let provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let client = TestClient::default();
    let revoked = provider.client_credentials_token("orders:read", None).await;
    provider.revoke(&revoked).await;

    for token in [revoked.as_str(), "made-up-token-0123456789"] {
        let refused = get_with_bearer(&client, &gateway, "/api/orders", token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer realm=\"gantry\", error=\"invalid_token\""));
        assert_eq!(refused.json()["type"], "https://gantry.dev/problems/invalid-token");
        assert!(!String::from_utf8_lossy(&refused.body).contains(token), "the token was echoed");
    }
    let missing = client.get(&gateway.url("/api/orders")).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"gantry\""));
    assert_eq!(missing.json()["type"], "https://gantry.dev/problems/missing-token");
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn keeps_cached_results_when_the_provider_is_down_and_answers_503_for_new_tokens() {
    let mut provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let client = TestClient::default();
    let known = provider.client_credentials_token("orders:read", None).await;
    let unseen = provider.client_credentials_token("orders:read", None).await;
    let first = get_with_bearer(&client, &gateway, "/api/orders", &known).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");

    provider.stop();

    let cached = get_with_bearer(&client, &gateway, "/api/orders", &known).await;
    assert_eq!(cached.status, StatusCode::OK, "a cached result must survive the provider: {cached:?}");
    let unavailable = get_with_bearer(&client, &gateway, "/api/orders", &unseen).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE, "{unavailable:?}");
    assert_eq!(unavailable.json()["type"], "https://gantry.dev/problems/introspection-unavailable");
    assert!(unavailable.header("www-authenticate").is_none(), "a 503 says nothing about the token");
    assert_eq!(upstream.requests(), 2);

    assert_policy_answers(&gateway, "oauth2_introspection", 503, 1).await;
    // The line reaches the test through the gateway's stderr, possibly after the answer.
    gantry_testkit::eventually("the failure is logged", || async {
        gateway.logs().iter().any(|line| line.contains("token introspection failed")).then_some(())
    })
    .await;
    assert!(!gateway.logs().iter().any(|line| line.contains(&unseen)), "a token was logged");
}
