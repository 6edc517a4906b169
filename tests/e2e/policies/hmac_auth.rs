//! `hmac_auth` through a running gateway: a request signed in the test with the `hmac` crate
//! over a signing string written out literally reaches the upstream with its consumer
//! recognised (the consumer's own `request_headers` names it) and without its `Authorization`
//! header; missing, wrong, stale and replayed signatures are refused with a challenge before
//! the upstream and counted in `/metrics`; the admin API hides the secret.

use std::time::{Duration, SystemTime};

use base64::Engine;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use sha2::Sha256;

use super::harness::{assert_policy_answers, assert_unauthorized};
use crate::support::{admin_get, start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-hmac-auth-4a8b";
const SECRET: &str = "alice-hmac-secret-5e0f9c";
const CHALLENGE: &str = "Signature realm=\"e2e\",headers=\"@request-target date x-tenant\"";

/// Consumer alice (key `alice-key`) naming itself to the upstream; route `/signed/*` with
/// `hmac_auth` requiring the request target, the date and `x-tenant` to be signed.
fn config(upstream: &EchoUpstream) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "consumers:
  - id: alice
    credentials:
      hmac_auth: {{key_id: alice-key, secret: {SECRET}}}
    policies:
      - request_headers: {{set: {{x-consumer: alice}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: signed
    paths: [/signed/*]
    upstream: up
    policies:
      - hmac_auth:
          realm: e2e
          clock_skew: 60s
          signed_headers: [\"@request-target\", date, x-tenant]
",
            upstream = upstream.addr()
        ),
    )
}

/// An HTTP date `seconds_ago` seconds in the past.
fn date(seconds_ago: u64) -> String {
    httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(seconds_ago))
}

/// The base64 HMAC-SHA256 of `signing_string` under `secret`.
fn sign(secret: &str, signing_string: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `GET /signed/orders?page=2` from tenant `acme`, dated `date`, signed with `secret`.
async fn signed_get(client: &TestClient, gateway: &GatewayProcess, date: &str, secret: &str) -> TestResponse {
    let signing_string = format!("alice-key\nGET /signed/orders?page=2\ndate: {date}\nx-tenant: acme\n");
    let authorization = format!(
        "Signature keyId=\"alice-key\",algorithm=\"hmac-sha256\",headers=\"@request-target date x-tenant\",signature=\"{}\"",
        sign(secret, &signing_string)
    );
    let headers = [("date", date), ("x-tenant", "acme"), ("authorization", authorization.as_str())];
    client.request(Method::GET, &gateway.url("/signed/orders?page=2"), &headers, "").await
}

#[tokio::test]
async fn admits_a_signed_request_with_the_consumer_recognised_and_the_signature_hidden() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let response = signed_get(&client, &gateway, &date(0), SECRET).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let seen = response.json();
    assert_eq!(seen["headers"]["x-consumer"], "alice", "{seen}");
    assert!(seen["headers"]["authorization"].is_null(), "the signature reached the upstream: {seen}");
    assert_eq!(seen["headers"]["x-tenant"], "acme");
    assert_eq!(seen["query"], "page=2");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn refuses_missing_wrong_stale_and_replayed_signatures_before_the_upstream_and_counts_them() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();

    let missing = client.get(&gateway.url("/signed/orders")).await;
    assert_unauthorized(&missing, CHALLENGE, "missing-credentials");
    assert_unauthorized(
        &signed_get(&client, &gateway, &date(0), "not-the-secret").await,
        CHALLENGE,
        "invalid-credentials",
    );
    assert_unauthorized(&signed_get(&client, &gateway, &date(600), SECRET).await, CHALLENGE, "invalid-date");
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");

    // The same signed request twice: the first passes, the second is a replay.
    let now = date(0);
    assert_eq!(signed_get(&client, &gateway, &now, SECRET).await.status, StatusCode::OK);
    assert_unauthorized(&signed_get(&client, &gateway, &now, SECRET).await, CHALLENGE, "replayed-signature");
    assert_eq!(upstream.requests(), 1);

    assert!(!gateway.logs().join("\n").contains(SECRET), "the log shows the secret");
    assert_policy_answers(&gateway, "hmac_auth", 401, 4).await;
}

#[tokio::test]
async fn the_admin_api_shows_the_secret_as_stars() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));

    let alice = admin_get(&gateway, ADMIN_KEY, "/consumers/alice").await;
    assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
    assert_eq!(alice.json()["credentials"]["hmac_auth"]["secret"], "***");
    for path in ["/consumers/alice", "/config"] {
        let response = admin_get(&gateway, ADMIN_KEY, path).await;
        assert!(!String::from_utf8_lossy(&response.body).contains(SECRET), "{path} shows the secret");
    }
}
