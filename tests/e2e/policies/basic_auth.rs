//! `basic_auth` through a running gateway: Argon2id, bcrypt and clear-text passwords admitted
//! with the consumer recognised (each consumer's own `request_headers` names it to the
//! upstream) and the credentials hidden; missing, wrong and malformed credentials refused
//! with a challenge before the upstream and counted in `/metrics`; concurrent checks served
//! off the data-plane thread; passwords and hashes hidden by the admin API.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use base64::Engine;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use super::harness::{assert_policy_answers, assert_unauthorized};
use crate::support::{admin_get, start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-basic-auth-7d2e";
const CHALLENGE: &str = "Basic realm=\"e2e\", charset=\"UTF-8\"";

/// The hashes, made here with the real crates (cheap parameters keep the test fast).
struct Hashes {
    alice_argon2id: String,
    bob_bcrypt: String,
}

fn hashes() -> Hashes {
    let params = Params::new(4096, 1, 1, None).expect("valid Argon2 parameters");
    let alice_argon2id = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(b"alice-password-1")
        .expect("hashing works")
        .to_string();
    let bob_bcrypt = bcrypt::hash("bob:password:2", 4).expect("hashing works");
    Hashes { alice_argon2id, bob_bcrypt }
}

/// Consumers alice (Argon2id), bob (bcrypt) and carol (clear text), each naming itself to the
/// upstream through its own `request_headers`; route `/basic/*` with `basic_auth`.
fn config(upstream: &EchoUpstream, hashes: &Hashes) -> String {
    with_admin(
        ADMIN_KEY,
        &format!(
            "consumers:
  - id: alice
    credentials:
      basic_auth: {{username: alice, password_hash: \"{alice}\"}}
    policies:
      - request_headers: {{set: {{x-consumer: alice}}}}
  - id: bob
    credentials:
      basic_auth: {{username: bob, password_hash: \"{bob}\"}}
    policies:
      - request_headers: {{set: {{x-consumer: bob}}}}
  - id: carol
    credentials:
      basic_auth: {{username: carol, password: carol-clear-text-3}}
    policies:
      - request_headers: {{set: {{x-consumer: carol}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: basic
    paths: [/basic/*]
    upstream: up
    policies:
      - basic_auth: {{realm: e2e}}
",
            alice = hashes.alice_argon2id,
            bob = hashes.bob_bcrypt,
            upstream = upstream.addr()
        ),
    )
}

fn basic(credentials: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

async fn get(client: &TestClient, gateway: &GatewayProcess, authorization: Option<&str>) -> TestResponse {
    let headers: Vec<(&str, &str)> = authorization.map(|value| ("authorization", value)).into_iter().collect();
    client.request(Method::GET, &gateway.url("/basic/reports"), &headers, "").await
}

#[tokio::test]
async fn admits_argon2id_bcrypt_and_clear_text_passwords_with_the_consumer_recognised_and_credentials_hidden() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &hashes()));
    let client = TestClient::default();

    for (credentials, consumer) in
        [("alice:alice-password-1", "alice"), ("bob:bob:password:2", "bob"), ("carol:carol-clear-text-3", "carol")]
    {
        let response = get(&client, &gateway, Some(&basic(credentials))).await;
        assert_eq!(response.status, StatusCode::OK, "{consumer}: {response:?}");
        let seen = response.json();
        assert_eq!(seen["headers"]["x-consumer"], consumer, "{seen}");
        assert!(seen["headers"]["authorization"].is_null(), "the credentials reached the upstream: {seen}");
    }
    // Again, now answered from the cache of checked passwords.
    let again = get(&client, &gateway, Some(&basic("alice:alice-password-1"))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["headers"]["x-consumer"], "alice");
    assert_eq!(upstream.requests(), 4);
}

#[tokio::test]
async fn refuses_missing_wrong_and_malformed_credentials_before_the_upstream_and_counts_them() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &hashes()));
    let client = TestClient::default();

    assert_unauthorized(&get(&client, &gateway, None).await, CHALLENGE, "missing-credentials");
    assert_unauthorized(&get(&client, &gateway, Some("Bearer some.jwt.token")).await, CHALLENGE, "missing-credentials");
    for authorization in [
        basic("alice:wrong-password-9"),
        basic("mallory:alice-password-1"),
        "Basic %%not-base64%%".to_owned(),
        basic("alice-without-colon"),
    ] {
        let response = get(&client, &gateway, Some(&authorization)).await;
        assert_unauthorized(&response, CHALLENGE, "invalid-credentials");
        let body = String::from_utf8_lossy(&response.body).into_owned();
        assert!(!body.contains("wrong-password-9") && !body.contains("mallory"), "{body}");
    }
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");

    let logs = gateway.logs().join("\n");
    for secret in ["wrong-password-9", "alice-password-1", "carol-clear-text-3"] {
        assert!(!logs.contains(secret), "the log shows a password: {logs}");
    }
    assert_policy_answers(&gateway, "basic_auth", 401, 6).await;
}

#[tokio::test]
async fn checks_many_concurrent_requests_off_the_data_plane_thread() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &hashes()));
    let client = TestClient::default();

    // Distinct passwords, so no check is answered from the cache: every one is a real hash.
    let requests = (0..24).map(|index| {
        let client = client.clone();
        let url = gateway.url("/basic/reports");
        async move {
            let (credentials, expected) = if index % 2 == 0 {
                ("carol:carol-clear-text-3".to_owned(), StatusCode::OK)
            } else {
                (format!("carol:guess-{index}"), StatusCode::UNAUTHORIZED)
            };
            let authorization = basic(&credentials);
            let response = client.request(Method::GET, &url, &[("authorization", authorization.as_str())], "").await;
            (response.status, expected)
        }
    });
    for (status, expected) in futures_util::future::join_all(requests).await {
        assert_eq!(status, expected);
    }
    assert_eq!(upstream.requests(), 12);
}

#[tokio::test]
async fn the_admin_api_shows_passwords_and_hashes_as_stars() {
    let upstream = EchoUpstream::start("up").await;
    let hashes = hashes();
    let gateway = start_gateway(&config(&upstream, &hashes));

    for (consumer, field) in [("alice", "password_hash"), ("bob", "password_hash"), ("carol", "password")] {
        let response = admin_get(&gateway, ADMIN_KEY, &format!("/consumers/{consumer}")).await;
        assert_eq!(response.status, StatusCode::OK, "{consumer}: {response:?}");
        assert_eq!(response.json()["credentials"]["basic_auth"][field], "***", "{consumer}");
    }
    let config = admin_get(&gateway, ADMIN_KEY, "/config").await;
    let body = String::from_utf8_lossy(&config.body).into_owned();
    for secret in [hashes.alice_argon2id.as_str(), hashes.bob_bcrypt.as_str(), "carol-clear-text-3"] {
        assert!(!body.contains(secret), "/config shows a password or hash: {body}");
    }
}
