//! `jwt` on test exchanges: the RFC 7515 examples, every algorithm, the algorithm confusion
//! attack, each claim check, consumers, claim headers, where tokens come from, key sets from a
//! real server, and rejected settings at their paths.

use std::sync::LazyLock;

use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
use gantry_policy_api::RegisteredPolicy;
use gantry_testkit::jwks::{JwksServer, SigningKey};
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use jsonwebtoken::{get_current_timestamp, AlgorithmFamily};
use serde_json::{json, Value};

use super::*;

const CONSUMERS: &str = "consumers:
  - id: alice
    groups: [staff]
    credentials:
      jwt: {subject: alice-sub}
  - id: guest
";

/// A 32-byte HMAC secret, the least HS256 accepts.
const SECRET: &str = "a-32-byte-secret-for-hs256-tests";

/// Keys are slow to generate; the tests share one per algorithm.
static RSA: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate("rsa-1", Algorithm::RS256));
static OTHER_RSA: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate("rsa-2", Algorithm::RS256));
static EC: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate("ec-1", Algorithm::ES256));
static OTHER_EC: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate("ec-2", Algorithm::ES256));

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<Jwt>(), settings, CONSUMERS)
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str) -> Vec<String> {
    errors_with(settings, CONSUMERS)
}

fn errors_with(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<Jwt>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

/// Settings verifying with `key`'s public half, as PEM.
fn pem_settings(key: &SigningKey, alg: &str, more: &str) -> String {
    let pem: String = key.public_key_pem().lines().map(|line| format!("\n        {line}")).collect();
    format!("keys:\n  - kid: {}\n    alg: {alg}\n    public_key: |{pem}\n{more}", key.kid())
}

fn hs_settings(more: &str) -> String {
    format!("algorithms: [HS256]\nkeys:\n  - alg: HS256\n    secret: {SECRET}\n{more}")
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "alice-sub", "exp": get_current_timestamp() + 300});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}

fn hs_token(claims: &Value) -> String {
    SigningKey::sign_with_secret(SECRET.as_bytes(), Algorithm::HS256, None, claims)
}

fn bearer(token: &str) -> http::Request<()> {
    http::Request::get("/").header(AUTHORIZATION, format!("Bearer {token}")).body(()).expect("request")
}

fn run(policy: &dyn Policy, request: http::Request<()>) -> (Flow, RequestParts, Exchange) {
    let mut parts = request.into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = run_request(policy, &mut parts, &mut exchange);
    (flow, parts, exchange)
}

async fn run_async(policy: &dyn Policy, request: http::Request<()>) -> (Flow, RequestParts, Exchange) {
    let mut parts = request.into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = policy.on_request(&mut parts, &mut exchange).resolve().await;
    (flow, parts, exchange)
}

/// The answer to a refused request: status, challenge and problem body.
fn refusal(flow: Flow) -> (StatusCode, Option<String>, Value) {
    let Flow::Respond(response) = flow else { panic!("the request went on, but should have been refused") };
    let challenge = response.headers().get(WWW_AUTHENTICATE).map(|value| value.to_str().expect("ascii").to_owned());
    let body = serde_json::from_slice(response.body()).expect("a problem document");
    (response.status(), challenge, body)
}

/// Asserts an `invalid-token` 401 whose detail says `detail`, in the body and the challenge.
fn assert_invalid(flow: Flow, detail: &str) {
    let (status, challenge, body) = refusal(flow);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["type"], "https://gantry.dev/problems/invalid-token", "{body}");
    assert_eq!(body["detail"], detail, "{body}");
    let challenge = challenge.expect("a challenge");
    assert!(challenge.starts_with("Bearer realm=\"gantry\", error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains(&format!("error_description=\"{detail}\"")), "{challenge}");
}

fn consumer(exchange: &Exchange) -> &str {
    &exchange.identity.as_ref().expect("recognised").consumer.id
}

#[test]
fn verifies_the_rfc_7515_hs256_example_with_expiry_checks_off() {
    // RFC 7515 A.1: the key is binary, given base64url-encoded in its JWK; the token expired in 2011.
    let settings = "algorithms: [HS256]
keys:
  - alg: HS256
    base64_secret: true
    secret: AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow
consumer_claim: iss
";
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let lenient = policy(&format!("{settings}require_exp: false\nverify_exp: false"));
    let (flow, _, exchange) = run(&*lenient, bearer(token));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(consumer(&exchange), "joe");

    let (flow, _, _) = run(&*policy(settings), bearer(token));
    assert_invalid(flow, "the token has expired");
}

#[test]
fn verifies_the_rfc_7515_rs256_example_with_its_jwk() {
    // RFC 7515 A.2.
    let settings = "keys:
  - alg: RS256
    jwk:
      kty: RSA
      e: AQAB
      n: ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ
consumer_claim: iss
require_exp: false
verify_exp: false
";
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    let (flow, _, exchange) = run(&*policy(settings), bearer(token));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(consumer(&exchange), "joe");

    let tampered = token.replacen("eyJpc3MiOiJqb2Ui", "eyJpc3MiOiJqb2Yi", 1);
    assert_invalid(run(&*policy(settings), bearer(&tampered)).0, "the token's signature is not valid");
}

#[test]
fn verifies_the_rfc_7515_es256_example_with_its_jwk() {
    // RFC 7515 A.3.
    let settings = "algorithms: [ES256]
keys:
  - alg: ES256
    jwk:
      kty: EC
      crv: P-256
      x: f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU
      y: x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0
consumer_claim: iss
require_exp: false
verify_exp: false
";
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    let (flow, _, exchange) = run(&*policy(settings), bearer(token));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(consumer(&exchange), "joe");
}

#[test]
fn verifies_every_supported_algorithm_with_pem_keys_and_secrets() {
    let (ec384, other_ec384) =
        (SigningKey::generate("k", Algorithm::ES384), SigningKey::generate("k", Algorithm::ES384));
    let (ed, other_ed) = (SigningKey::generate("k", Algorithm::EdDSA), SigningKey::generate("k", Algorithm::EdDSA));
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"] {
        let algorithm: Algorithm = alg.parse().expect("an algorithm name");
        let (key, other) = match algorithm.family() {
            AlgorithmFamily::Rsa => (RSA.reuse_for("k", algorithm), OTHER_RSA.reuse_for("k", algorithm)),
            AlgorithmFamily::Ec if algorithm == Algorithm::ES256 => {
                (EC.reuse_for("k", algorithm), OTHER_EC.reuse_for("k", algorithm))
            }
            AlgorithmFamily::Ec => (ec384.reuse_for("k", algorithm), other_ec384.reuse_for("k", algorithm)),
            _ => (ed.reuse_for("k", algorithm), other_ed.reuse_for("k", algorithm)),
        };
        let policy = policy(&pem_settings(&key, alg, ""));
        let (flow, _, exchange) = run(&*policy, bearer(&key.sign(&claims(json!({})))));
        assert!(matches!(flow, Flow::Continue), "{alg} was refused");
        assert_eq!(consumer(&exchange), "alice", "{alg}");
        assert_invalid(run(&*policy, bearer(&other.sign(&claims(json!({}))))).0, "the token's signature is not valid");
    }
    for (alg, length) in [(Algorithm::HS384, 48), (Algorithm::HS512, 64)] {
        let secret = "s".repeat(length);
        let policy = policy(&format!("algorithms: [{alg:?}]\nkeys:\n  - alg: {alg:?}\n    secret: {secret}"));
        let token = SigningKey::sign_with_secret(secret.as_bytes(), alg, None, &claims(json!({})));
        assert!(matches!(run(&*policy, bearer(&token)).0, Flow::Continue), "{alg:?} was refused");
    }
}

#[test]
fn never_lets_a_public_key_serve_as_an_hmac_secret() {
    // The classic confusion: the attacker knows the RSA public key and signs an HS256 token
    // with its PEM text as the secret, hoping the verifier feeds the same key to HMAC.
    let forged_claims = claims(json!({}));
    let pem = RSA.public_key_pem().as_bytes();
    let unnamed = SigningKey::sign_with_secret(pem, Algorithm::HS256, None, &forged_claims);
    let named = SigningKey::sign_with_secret(pem, Algorithm::HS256, Some("rsa-1"), &forged_claims);

    let asymmetric_only = policy(&pem_settings(&RSA, "RS256", ""));
    assert_invalid(run(&*asymmetric_only, bearer(&unnamed)).0, "the token's signing algorithm is not accepted");

    // Even where HMAC is accepted for another key, the RSA key never verifies an HS256 token.
    let mixed = policy(&format!(
        "{}  - kid: internal\n    alg: HS256\n    secret: {SECRET}\nalgorithms: [RS256, HS256]\n",
        pem_settings(&RSA, "RS256", "")
    ));
    assert_invalid(run(&*mixed, bearer(&named)).0, NO_KEY);
    assert_invalid(run(&*mixed, bearer(&unnamed)).0, "the token's signature is not valid");
    assert!(matches!(run(&*mixed, bearer(&RSA.sign(&forged_claims))).0, Flow::Continue), "the RSA key itself works");
}

#[test]
fn refuses_unsigned_tokens_and_tokens_with_a_lying_header() {
    let policy = policy(&pem_settings(&RSA, "RS256", "algorithms: [RS256, RS384]"));
    let unsigned = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims(json!({})).to_string().as_bytes())
    );
    assert_invalid(run(&*policy, bearer(&unsigned)).0, MALFORMED);

    // Signed with RS256 but claiming RS384: the key is declared for RS256 only.
    let mut header = Header::new(Algorithm::RS384);
    header.kid = Some("rsa-1".to_owned());
    let lying = RSA.sign_as(&claims(json!({})), &header);
    assert_invalid(run(&*policy, bearer(&lying)).0, NO_KEY);

    let mut header = Header::new(Algorithm::RS256);
    header.crit = Some(vec!["exp".to_owned()]);
    let critical = RSA.sign_as(&claims(json!({})), &header);
    assert_invalid(
        run(&*policy, bearer(&critical)).0,
        "the token has critical header parameters that are not supported",
    );

    assert_invalid(run(&*policy, bearer("not.a.jwt")).0, MALFORMED);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn checks_expiry_with_the_leeway() {
    let now = get_current_timestamp();
    let policy = policy(&hs_settings(""));
    let recent = hs_token(&claims(json!({"exp": now - 10})));
    assert!(matches!(run(&*policy, bearer(&recent)).0, Flow::Continue), "within the default 30 s leeway");
    assert_invalid(run(&*policy, bearer(&hs_token(&claims(json!({"exp": now - 120}))))).0, "the token has expired");

    let strict = self::policy(&hs_settings("leeway: 0s"));
    assert_invalid(run(&*strict, bearer(&recent)).0, "the token has expired");

    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_invalid(run(&*policy, bearer(&hs_token(&no_exp))).0, "the token has no expiry time (exp)");
    let optional = self::policy(&hs_settings("require_exp: false"));
    assert!(matches!(run(&*optional, bearer(&hs_token(&no_exp))).0, Flow::Continue));
    let expired = hs_token(&claims(json!({"exp": now - 120})));
    assert_invalid(run(&*optional, bearer(&expired)).0, "the token has expired");
}

#[test]
fn refuses_tokens_not_valid_yet() {
    let policy = policy(&hs_settings(""));
    let early = hs_token(&claims(json!({"nbf": get_current_timestamp() + 600})));
    assert_invalid(run(&*policy, bearer(&early)).0, "the token is not valid yet (nbf)");
}

#[test]
fn checks_issuer_and_audience_when_configured() {
    let policy = policy(&hs_settings("issuers: [https://idp.example.com/]\naudiences: [orders, billing]"));
    let good = claims(json!({"iss": "https://idp.example.com/", "aud": ["other", "billing"]}));
    assert!(matches!(run(&*policy, bearer(&hs_token(&good))).0, Flow::Continue));

    let wrong_issuer = claims(json!({"iss": "https://evil.example.com/", "aud": "orders"}));
    assert_invalid(run(&*policy, bearer(&hs_token(&wrong_issuer))).0, "the token's issuer is not accepted");
    let wrong_audience = claims(json!({"iss": "https://idp.example.com/", "aud": "payments"}));
    assert_invalid(run(&*policy, bearer(&hs_token(&wrong_audience))).0, "the token's audience is not accepted");
    let no_audience = claims(json!({"iss": "https://idp.example.com/"}));
    assert_invalid(run(&*policy, bearer(&hs_token(&no_audience))).0, "the token names no audience (aud)");
    let no_issuer = claims(json!({"aud": "orders"}));
    assert_invalid(run(&*policy, bearer(&hs_token(&no_issuer))).0, "the token names no issuer (iss)");

    // Without `audiences`, `aud` is not checked.
    let open = self::policy(&hs_settings(""));
    assert!(matches!(run(&*open, bearer(&hs_token(&wrong_audience))).0, Flow::Continue));
}

#[test]
fn requires_the_listed_claims() {
    let policy = policy(&hs_settings("required_claims: [tenant, \"http://example.com/is_root\"]"));
    let complete = claims(json!({"tenant": "acme", "http://example.com/is_root": false}));
    assert!(matches!(run(&*policy, bearer(&hs_token(&complete))).0, Flow::Continue));
    let null_tenant = claims(json!({"tenant": null, "http://example.com/is_root": true}));
    assert_invalid(run(&*policy, bearer(&hs_token(&null_tenant))).0, "the token lacks the required claim `tenant`");
}

#[test]
fn answers_a_missing_token_with_a_bare_challenge_and_never_echoes_a_token() {
    let policy = policy(&hs_settings("realm: orders"));
    let (status, challenge, body) = refusal(run(&*policy, http::Request::get("/").body(()).expect("request")).0);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"orders\""), "no error without a token (RFC 6750 §3.1)");
    assert_eq!(body["type"], "https://gantry.dev/problems/missing-token");

    let basic = http::Request::get("/").header(AUTHORIZATION, "Basic YWxpY2U6cw==").body(()).expect("request");
    assert_eq!(refusal(run(&*policy, basic).0).2["type"], "https://gantry.dev/problems/missing-token");

    let token = hs_token(&claims(json!({"exp": get_current_timestamp() - 600})));
    let Flow::Respond(response) = run(&*policy, bearer(&token)).0 else { panic!("an expired token went on") };
    let everything = format!("{:?}{}", response.headers(), String::from_utf8_lossy(response.body()));
    assert!(!everything.contains(&token) && !everything.contains(&token[..20]), "{everything}");
}

#[test]
fn maps_a_subject_to_its_consumer_with_groups_and_scopes() {
    let policy = policy(&hs_settings(""));
    let token = hs_token(&claims(json!({"scope": "orders:read orders:write", "scp": ["admin"]})));
    let (flow, parts, exchange) = run(&*policy, bearer(&token));
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "alice");
    assert!(identity.consumer.is_in("staff"));
    assert_eq!(&*identity.credential_id, "alice:jwt");
    assert_eq!(identity.method, "jwt");
    assert_eq!(&*identity.scopes, ["orders:read", "orders:write", "admin"]);
    assert!(!identity.is_anonymous);
    assert!(parts.headers.get(AUTHORIZATION).is_none(), "the token reached the upstream");
}

#[test]
fn describes_an_unknown_subject_as_an_ad_hoc_consumer_unless_consumers_are_required() {
    let open = policy(&hs_settings("groups_claim: roles"));
    let token = hs_token(&claims(json!({"sub": "bob@idp", "roles": ["ops", "oncall"]})));
    let (flow, _, exchange) = run(&*open, bearer(&token));
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "bob@idp");
    assert_eq!(&*identity.credential_id, "bob@idp");
    assert!(identity.consumer.is_in("ops") && identity.consumer.is_in("oncall"));

    let closed = policy(&hs_settings("require_consumer: true"));
    let (status, challenge, body) = refusal(run(&*closed, bearer(&token)).0);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge.is_none());
    assert_eq!(body["type"], "https://gantry.dev/problems/unknown-consumer");
    assert!(matches!(run(&*closed, bearer(&hs_token(&claims(json!({}))))).0, Flow::Continue), "alice is configured");
}

#[test]
fn names_the_consumer_with_the_configured_claim_and_refuses_tokens_without_it() {
    let policy = policy(&hs_settings("consumer_claim: client_id"));
    let (flow, _, exchange) = run(&*policy, bearer(&hs_token(&claims(json!({"client_id": 4711})))));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(consumer(&exchange), "4711", "a numeric claim names its consumer by its digits");
    assert_invalid(
        run(&*policy, bearer(&hs_token(&claims(json!({}))))).0,
        "the token lacks the `client_id` claim naming its consumer",
    );
}

#[test]
fn sends_claims_upstream_as_headers_and_drops_the_clients_own() {
    let policy = policy(&hs_settings(
        "claims_to_headers:\n  sub: x-user\n  tier: x-tier\n  roles: x-roles\n  profile: x-profile\n  missing: x-missing",
    ));
    let token = hs_token(&claims(json!({"tier": 3, "roles": ["a", "b"], "profile": {"x": 1}})));
    let request = http::Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header("x-user", "spoofed")
        .header("x-profile", "spoofed")
        .header("x-missing", "spoofed")
        .body(())
        .expect("request");
    let (flow, parts, _) = run(&*policy, request);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.headers["x-user"], "alice-sub");
    assert_eq!(parts.headers["x-tier"], "3");
    assert_eq!(parts.headers["x-roles"], "a,b");
    assert!(parts.headers.get("x-profile").is_none(), "objects are not sent, and the client's value is gone");
    assert!(parts.headers.get("x-missing").is_none());
}

#[test]
fn reads_tokens_from_a_header_query_or_cookie_and_removes_them() {
    let token = hs_token(&claims(json!({})));
    let header = policy(&hs_settings("header: x-token"));
    let request = http::Request::get("/").header("x-token", token.as_str()).body(()).expect("request");
    let (flow, parts, _) = run(&*header, request);
    assert!(matches!(flow, Flow::Continue));
    assert!(parts.headers.get("x-token").is_none());

    let query = policy(&hs_settings("query: access_token"));
    let request = http::Request::get(format!("/items?page=2&access_token={token}")).body(()).expect("request");
    let (flow, parts, _) = run(&*query, request);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.uri.to_string(), "/items?page=2");

    let cookie = policy(&hs_settings("cookie: session"));
    let request =
        http::Request::get("/").header("cookie", format!("theme=dark; session={token}")).body(()).expect("request");
    let (flow, parts, _) = run(&*cookie, request);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.headers["cookie"], "theme=dark");

    let kept = policy(&hs_settings("hide_credentials: false"));
    let (flow, parts, _) = run(&*kept, bearer(&token));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.headers[AUTHORIZATION], format!("Bearer {token}"));
}

#[test]
fn lets_the_anonymous_consumer_stand_in_for_a_missing_token_but_not_a_bad_one() {
    let policy = policy(&hs_settings("anonymous_consumer: guest\nclaims_to_headers: {sub: x-user}"));
    let request = http::Request::get("/").header("x-user", "admin").body(()).expect("request");
    let (flow, parts, exchange) = run(&*policy, request);
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);
    assert!(parts.headers.get("x-user").is_none(), "a client posed as a claim");

    assert_invalid(run(&*policy, bearer("not.a.jwt")).0, MALFORMED);
}

#[tokio::test]
async fn verifies_with_a_key_set_fetched_at_first_use_and_finds_rotated_keys() {
    let old = SigningKey::rsa("old");
    let server = JwksServer::start(&[&old]).await;
    let policy = policy(&format!("jwks_url: {}\njwks_min_refresh: 0s", server.url()));
    let (flow, _, exchange) = run_async(&*policy, bearer(&old.sign(&claims(json!({}))))).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(consumer(&exchange), "alice");

    let new = SigningKey::rsa("new");
    server.publish(&[&old, &new]);
    let (flow, _, _) = run_async(&*policy, bearer(&new.sign(&claims(json!({}))))).await;
    assert!(matches!(flow, Flow::Continue), "a token of a rotated key is accepted");

    let stranger = SigningKey::rsa("stranger");
    assert_invalid(run_async(&*policy, bearer(&stranger.sign(&claims(json!({}))))).await.0, NO_KEY);
}

#[tokio::test]
async fn answers_503_while_no_key_set_could_be_fetched() {
    let mut server = JwksServer::start(&[]).await;
    let url = server.url();
    server.stop();
    let policy = policy(&format!("jwks_url: {url}\njwks_min_refresh: 2s\njwks_refresh: 1m"));
    let Flow::Respond(response) = run_async(&*policy, bearer(&RSA.sign(&claims(json!({}))))).await.0 else {
        panic!("a token was accepted without keys")
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "2");
    let body: Value = serde_json::from_slice(response.body()).expect("a problem document");
    assert_eq!(body["type"], "https://gantry.dev/problems/keys-unavailable");
}

#[test]
fn rejects_settings_without_keys_or_with_both_kinds() {
    assert_eq!(errors(""), ["global_policies[0].jwt: give the verification `keys` or a `jwks_url`"]);
    let both = format!("{}jwks_url: https://idp.example.com/jwks", hs_settings(""));
    assert_eq!(errors(&both), ["global_policies[0].jwt.jwks_url: give either `keys` or `jwks_url`, not both"]);
    let found = errors("jwks_url: ftp://idp.example.com/jwks");
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].jwt.jwks_url: ")), "{found:?}");
}

#[test]
fn rejects_a_key_whose_type_does_not_fit_its_algorithm() {
    let found = errors(&format!("algorithms: [RS256]\nkeys:\n  - alg: RS256\n    secret: {SECRET}"));
    assert_eq!(found, ["global_policies[0].jwt.keys[0].secret: `RS256` verifies with a `public_key` or `jwk`"]);

    let found = errors(&pem_settings(&RSA, "HS256", "algorithms: [HS256]"));
    assert_eq!(found, ["global_policies[0].jwt.keys[0].public_key: `HS256` verifies with a shared `secret`"]);

    let found = errors(&pem_settings(&EC, "RS256", ""));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("global_policies[0].jwt.keys[0].public_key: RS256 needs an RSA public key"),
        "{found:?}"
    );
}

#[test]
fn rejects_unaccepted_or_unknown_algorithms_at_their_path() {
    let found = errors(&format!("keys:\n  - alg: HS256\n    secret: {SECRET}"));
    assert_eq!(found, ["global_policies[0].jwt.keys[0].alg: `HS256` is not one of the `algorithms`"]);
    let found = errors(&hs_settings("").replace("algorithms: [HS256]", "algorithms: [none]"));
    assert!(
        found.iter().any(|e| e.starts_with("global_policies[0].jwt.algorithms[0]: unknown variant `none`")),
        "{found:?}"
    );
    let found = errors(&hs_settings("").replace("algorithms: [HS256]", "algorithms: []"));
    assert!(found.contains(&"global_policies[0].jwt.algorithms: list at least one algorithm".to_owned()), "{found:?}");
}

#[test]
fn rejects_short_or_undecodable_secrets_without_repeating_them() {
    let found = errors("algorithms: [HS256]\nkeys:\n  - alg: HS256\n    secret: too-short-secret");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("global_policies[0].jwt.keys[0].secret: an HS256 secret needs at least 32 bytes"));
    assert!(!found[0].contains("too-short-secret"));
    let found = errors(
        &format!("{}    base64_secret: true", hs_settings("").trim_end().to_owned() + "\n")
            .replace(SECRET, "stars*are*not*base64"),
    );
    assert_eq!(found, ["global_policies[0].jwt.keys[0].secret: is not valid base64 (`base64_secret` is set)"]);
}

#[test]
fn rejects_private_jwks_and_repeated_kids() {
    let found = errors(
        "keys:\n  - alg: ES256\n    jwk: {kty: EC, crv: P-256, x: f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU, y: x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0, d: jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI}",
    );
    assert_eq!(found, ["global_policies[0].jwt.keys[0].jwk: holds a private key: give only the public members"]);
    let twice = format!("algorithms: [HS256]\nkeys:\n  - {{kid: a, alg: HS256, secret: {SECRET}}}\n  - {{kid: a, alg: HS256, secret: {SECRET}}}");
    assert_eq!(errors(&twice), ["global_policies[0].jwt.keys[1].kid: another key has the kid `a`"]);
}

#[test]
fn rejects_inconsistent_timing_settings() {
    let found = errors("jwks_url: https://idp.example.com/jwks\njwks_refresh: 5s\njwks_min_refresh: 10s\nleeway: 2h");
    assert!(
        found.contains(&"global_policies[0].jwt.jwks_min_refresh: must not be longer than `jwks_refresh`".to_owned()),
        "{found:?}"
    );
    assert!(found.contains(&"global_policies[0].jwt.leeway: must be at most 1h".to_owned()), "{found:?}");
    let found = errors(&hs_settings("verify_exp: false"));
    assert_eq!(
        found,
        ["global_policies[0].jwt.verify_exp: an `exp` that is required is also checked: set `require_exp: false`"]
    );
}

#[test]
fn rejects_claim_headers_that_are_invalid_reserved_or_repeated() {
    let found = errors(&hs_settings("claims_to_headers:\n  a: \"bad header\"\n  b: host\n  c: x-user\n  d: x-user"));
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].jwt.claims_to_headers.a: ")), "{found:?}");
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].jwt.claims_to_headers.b: `host`")), "{found:?}");
    assert!(
        found.contains(
            &"global_policies[0].jwt.claims_to_headers.d: the claim `c` is already sent as `x-user`".to_owned()
        ),
        "{found:?}"
    );
}

#[test]
fn reports_a_subject_shared_by_two_consumers_once() {
    let config = "consumers:
  - id: alice
    credentials: {jwt: {subject: same}}
  - id: bob
    credentials: {jwt: {subject: same}}
";
    assert_eq!(
        errors_with(&hs_settings(""), config),
        ["consumers[bob].credentials.jwt.subject: the same subject is already the credential `alice:jwt`"]
    );
}

#[test]
fn remembers_each_token_with_its_own_consumer_and_claims() {
    let policy = policy(&hs_settings("claims_to_headers: {tier: x-tier}"));
    let alice = hs_token(&claims(json!({"tier": "gold"})));
    let bob = hs_token(&claims(json!({"sub": "bob", "tier": "free"})));
    // Verified once each, then answered from the cache, alternately.
    for _ in 0..3 {
        for (token, consumer_id, tier) in [(&alice, "alice", "gold"), (&bob, "bob", "free")] {
            let request = http::Request::get("/")
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .header("x-tier", "spoofed")
                .body(())
                .expect("request");
            let (flow, parts, exchange) = run(&*policy, request);
            assert!(matches!(flow, Flow::Continue));
            assert_eq!(consumer(&exchange), consumer_id);
            assert_eq!(parts.headers["x-tier"], tier, "the client's header came through, or another token's claim");
            assert!(parts.headers.get(AUTHORIZATION).is_none(), "the token reached the upstream");
        }
    }
}

#[test]
fn refuses_a_remembered_token_once_it_expires_and_remembers_no_refusal() {
    let policy = policy(&hs_settings("leeway: 0s"));
    let now = get_current_timestamp();
    let expiring = hs_token(&claims(json!({"exp": now + 1})));
    let early = hs_token(&claims(json!({"nbf": now + 2})));
    assert!(matches!(run(&*policy, bearer(&expiring)).0, Flow::Continue));
    assert_invalid(run(&*policy, bearer(&early)).0, "the token is not valid yet (nbf)");

    while get_current_timestamp() <= now + 2 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_invalid(run(&*policy, bearer(&expiring)).0, "the token has expired");
    assert!(matches!(run(&*policy, bearer(&early)).0, Flow::Continue), "a refusal was remembered past its nbf");
}

#[tokio::test]
async fn forgets_remembered_tokens_when_the_key_set_changes() {
    let old = SigningKey::rsa("old");
    let server = JwksServer::start(&[&old]).await;
    let policy = policy(&format!("jwks_url: {}\njwks_min_refresh: 0s", server.url()));
    let token = old.sign(&claims(json!({})));
    for _ in 0..2 {
        assert!(matches!(run_async(&*policy, bearer(&token)).await.0, Flow::Continue));
    }

    // The signer withdraws the old key; a token of the new one makes the gateway refetch.
    let new = SigningKey::rsa("new");
    server.publish(&[&new]);
    assert!(matches!(run_async(&*policy, bearer(&new.sign(&claims(json!({}))))).await.0, Flow::Continue));
    assert_eq!(server.fetches(), 2);
    assert_invalid(run_async(&*policy, bearer(&token)).await.0, NO_KEY);
}

#[test]
fn verifies_every_request_with_the_cache_turned_off() {
    let policy = policy(&hs_settings("cache: {max_tokens: 0}"));
    let token = hs_token(&claims(json!({})));
    for _ in 0..2 {
        let (flow, _, exchange) = run(&*policy, bearer(&token));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(consumer(&exchange), "alice");
    }
}

#[test]
fn rejects_cache_settings_at_their_path() {
    assert_eq!(
        errors(&hs_settings("cache: {ttl: 0s}")),
        ["global_policies[0].jwt.cache.ttl: must be longer than zero; `max_tokens: 0` turns the cache off"]
    );
    assert_eq!(
        errors(&hs_settings("cache: {size: 10}")),
        ["global_policies[0].jwt.cache.size: unknown field `size`, expected `max_tokens` or `ttl`"]
    );
}
