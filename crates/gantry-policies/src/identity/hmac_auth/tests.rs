use std::time::{Duration as StdDuration, SystemTime};

use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
use gantry_policy_api::RegisteredPolicy;
use hmac::{Hmac, Mac};
use http::header::WWW_AUTHENTICATE;
use http::StatusCode;
use sha2::{Sha256, Sha512};

use super::*;

const CONSUMERS: &str = "consumers:
  - id: alice
    groups: [finance]
    credentials:
      hmac_auth: {key_id: alice-key, secret: alice-secret}
  - id: bob
    credentials:
      hmac_auth:
        - {key_id: bob-old, secret: bob-old-secret}
        - {key_id: bob-new, secret: bob-new-secret}
  - id: guest
";

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<HmacAuth>(), settings, CONSUMERS)
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<HmacAuth>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

/// An HTTP date `offset_secs` from now (negative: in the past).
fn date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let offset = StdDuration::from_secs(offset_secs.unsigned_abs());
    let then = if offset_secs < 0 { now - offset } else { now + offset };
    httpdate::fmt_http_date(then)
}

/// The HMAC of `signing_string`, computed here with the `hmac` crate directly, base64.
fn sign_sha256(secret: &str, signing_string: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn sign_sha512(secret: &str, signing_string: &str) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn sign_sha1(secret: &str, signing_string: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn authorization(key_id: &str, algorithm: &str, headers: &str, signature: &str) -> String {
    format!("Signature keyId=\"{key_id}\",algorithm=\"{algorithm}\",headers=\"{headers}\",signature=\"{signature}\"")
}

/// `GET uri` with the given headers.
fn request(uri: &str, headers: &[(&str, &str)]) -> RequestParts {
    let mut builder = http::Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn run(policy: &dyn Policy, mut parts: RequestParts) -> (Flow, RequestParts, Exchange) {
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = run_request(policy, &mut parts, &mut exchange);
    (flow, parts, exchange)
}

/// A request from alice to `/orders?page=2` signed over `@request-target date`.
fn signed_by_alice(date: &str) -> RequestParts {
    let signing_string = format!("alice-key\nGET /orders?page=2\ndate: {date}\n");
    let signature = sign_sha256("alice-secret", &signing_string);
    let header = authorization("alice-key", "hmac-sha256", "@request-target date", &signature);
    request("/orders?page=2", &[("date", date), ("authorization", &header)])
}

/// The status, challenge and problem type of an answer.
fn refusal(flow: Flow) -> (StatusCode, String, String) {
    let Flow::Respond(response) = flow else { panic!("the request must be refused") };
    let challenge = response.headers()[WWW_AUTHENTICATE].to_str().expect("text").to_owned();
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    let kind = body["type"].as_str().expect("type").trim_start_matches("https://gantry.dev/problems/").to_owned();
    (response.status(), challenge, kind)
}

fn refused_as(flow: Flow) -> String {
    let (status, _, kind) = refusal(flow);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    kind
}

#[test]
fn accepts_a_valid_sha256_signature_and_hides_the_authorization_header() {
    let policy = policy("");
    let (flow, parts, exchange) = run(&*policy, signed_by_alice(&date(0)));
    assert!(matches!(flow, Flow::Continue), "{flow:?}");
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "alice");
    assert!(identity.consumer.is_in("finance"));
    assert_eq!(&*identity.credential_id, "alice:hmac_auth");
    assert_eq!(identity.method, "hmac_auth");
    assert!(parts.headers.get(AUTHORIZATION).is_none());
    assert!(parts.headers.get(DATE).is_some(), "only the credentials are hidden");
}

#[test]
fn keeps_the_authorization_header_when_not_asked_to_hide_it() {
    let (flow, parts, _) = run(&*policy("hide_credentials: false"), signed_by_alice(&date(0)));
    assert!(matches!(flow, Flow::Continue));
    assert!(parts.headers.get(AUTHORIZATION).is_some());
}

#[test]
fn accepts_sha512_and_signed_custom_headers_with_repeated_values_joined() {
    let policy = policy("signed_headers: [\"@request-target\", date, x-tenant]");
    let now = date(0);
    let signing_string = format!("bob-new\nGET /ledger\ndate: {now}\nx-tenant: acme, beta\n");
    let header = authorization(
        "bob-new",
        "hmac-sha512",
        "@request-target date x-tenant",
        &sign_sha512("bob-new-secret", &signing_string),
    );
    let parts =
        request("/ledger", &[("date", &now), ("x-tenant", "acme"), ("x-tenant", "beta"), ("authorization", &header)]);
    let (flow, _, exchange) = run(&*policy, parts);
    assert!(matches!(flow, Flow::Continue), "{flow:?}");
    assert_eq!(&*exchange.identity.expect("recognised").credential_id, "bob:hmac_auth:1");
}

#[test]
fn refuses_sha1_unless_it_is_allowed() {
    let now = date(0);
    let signing_string = format!("alice-key\nGET /\ndate: {now}\n");
    let header =
        authorization("alice-key", "hmac-sha1", "@request-target date", &sign_sha1("alice-secret", &signing_string));
    let parts = || request("/", &[("date", &now), ("authorization", &header)]);

    let (flow, _, _) = run(&*policy(""), parts());
    let Flow::Respond(response) = flow else { panic!("sha1 is not allowed by default") };
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(body["type"], "https://gantry.dev/problems/invalid-credentials");
    assert_eq!(body["detail"], "the signature's algorithm is not allowed here; use one of hmac-sha256, hmac-sha512");

    let (flow, _, _) = run(&*policy("allowed_algorithms: [hmac-sha1]"), parts());
    assert!(matches!(flow, Flow::Continue), "{flow:?}");
}

#[test]
fn refuses_an_algorithm_it_does_not_know() {
    let now = date(0);
    let header = authorization("alice-key", "hmac-md5", "@request-target date", "AAAA");
    let (flow, _, _) = run(&*policy(""), request("/", &[("date", &now), ("authorization", &header)]));
    assert_eq!(refused_as(flow), "invalid-credentials");
}

#[test]
fn refuses_a_signature_made_with_the_wrong_secret() {
    let now = date(0);
    let signing_string = format!("alice-key\nGET /orders?page=2\ndate: {now}\n");
    let header = authorization(
        "alice-key",
        "hmac-sha256",
        "@request-target date",
        &sign_sha256("not-alice-secret", &signing_string),
    );
    let (flow, _, exchange) =
        run(&*policy(""), request("/orders?page=2", &[("date", &now), ("authorization", &header)]));
    let (status, challenge, kind) = refusal(flow);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge, "Signature realm=\"gantry\",headers=\"@request-target date\"");
    assert_eq!(kind, "invalid-credentials");
    assert!(exchange.identity.is_none());
}

#[test]
fn refuses_an_unknown_key_id_like_a_wrong_signature() {
    let now = date(0);
    let signing_string = format!("mallory-key\nGET /\ndate: {now}\n");
    let header = authorization(
        "mallory-key",
        "hmac-sha256",
        "@request-target date",
        &sign_sha256("alice-secret", &signing_string),
    );
    let (flow, _, _) = run(&*policy(""), request("/", &[("date", &now), ("authorization", &header)]));
    let Flow::Respond(response) = flow else { panic!("an unknown key id must be refused") };
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(body["detail"], "the signature is not valid");
    assert!(!body.to_string().contains("mallory"), "{body}");
}

#[test]
fn refuses_a_signature_moved_to_another_path() {
    let signed = signed_by_alice(&date(0));
    let mut moved = request("/admin", &[]);
    moved.headers = signed.headers;
    assert_eq!(refused_as(run(&*policy(""), moved).0), "invalid-credentials");
}

#[test]
fn refuses_an_expired_date_and_one_too_far_ahead_but_accepts_one_within_the_skew() {
    let policy = policy("clock_skew: 60s");
    for offset in [-120, 120] {
        let (flow, _, _) = run(&*policy, signed_by_alice(&date(offset)));
        let Flow::Respond(response) = flow else { panic!("a date {offset}s away must be refused") };
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["type"], "https://gantry.dev/problems/invalid-date", "{offset}");
        assert_eq!(body["detail"], "the Date header is more than 1m away from the gateway's clock");
    }
    for offset in [-45, 45] {
        let (flow, _, _) = run(&*policy, signed_by_alice(&date(offset)));
        assert!(matches!(flow, Flow::Continue), "a date {offset}s away is within the skew: {flow:?}");
    }
}

#[test]
fn refuses_a_request_without_a_date_or_with_an_unreadable_one() {
    let policy = policy("signed_headers: []");
    let signing_string = "alice-key\nGET /\n";
    let header =
        authorization("alice-key", "hmac-sha256", "@request-target", &sign_sha256("alice-secret", signing_string));
    for dates in [&[][..], &[("date", "yesterday")][..]] {
        let mut headers = dates.to_vec();
        headers.push(("authorization", &header));
        assert_eq!(refused_as(run(&*policy, request("/", &headers)).0), "invalid-date", "{dates:?}");
    }
}

#[test]
fn refuses_a_signature_that_does_not_cover_a_required_header() {
    let policy = policy("signed_headers: [date, x-tenant]");
    let (flow, _, _) = run(&*policy, signed_by_alice(&date(0)));
    let Flow::Respond(response) = flow else { panic!("x-tenant is not covered") };
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Signature realm=\"gantry\",headers=\"date x-tenant\"");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(body["type"], "https://gantry.dev/problems/invalid-credentials");
    assert_eq!(body["detail"], "the signature must cover `x-tenant`");
}

#[test]
fn refuses_a_signature_listing_a_header_the_request_lacks() {
    let now = date(0);
    let signing_string = format!("alice-key\nGET /\ndate: {now}\nx-tenant: acme\n");
    let header = authorization(
        "alice-key",
        "hmac-sha256",
        "@request-target date x-tenant",
        &sign_sha256("alice-secret", &signing_string),
    );
    let (flow, _, _) = run(&*policy(""), request("/", &[("date", &now), ("authorization", &header)]));
    assert_eq!(refused_as(flow), "invalid-credentials");
}

#[test]
fn refuses_a_replayed_signature_within_the_window() {
    let policy = policy("");
    let now = date(0);
    assert!(matches!(run(&*policy, signed_by_alice(&now)).0, Flow::Continue));
    let (flow, _, exchange) = run(&*policy, signed_by_alice(&now));
    assert_eq!(refused_as(flow), "replayed-signature");
    assert!(exchange.identity.is_none());

    // A fresh signature of the same client still passes.
    assert!(matches!(run(&*policy, signed_by_alice(&date(-1))).0, Flow::Continue));
}

#[test]
fn remembers_only_verified_signatures() {
    let policy = policy("");
    let now = date(0);
    let genuine = signed_by_alice(&now);
    // The genuine signature sent first on a request it does not fit is refused, not remembered.
    let mut misused = request("/elsewhere", &[]);
    misused.headers = genuine.headers.clone();
    assert_eq!(refused_as(run(&*policy, misused).0), "invalid-credentials");
    assert!(matches!(run(&*policy, genuine).0, Flow::Continue));
}

#[test]
fn accepts_a_repeated_signature_when_replays_are_allowed() {
    let policy = policy("reject_replays: false");
    let now = date(0);
    assert!(matches!(run(&*policy, signed_by_alice(&now)).0, Flow::Continue));
    assert!(matches!(run(&*policy, signed_by_alice(&now)).0, Flow::Continue));
}

#[test]
fn refuses_malformed_signature_parameters() {
    let now = date(0);
    let good = signed_by_alice(&now);
    let valid = good.headers[AUTHORIZATION].to_str().expect("text").to_owned();
    for header in [
        "Signature keyId=\"alice-key\",algorithm=\"hmac-sha256\"".to_owned(),
        "Signature keyId=alice-key,algorithm=\"hmac-sha256\",signature=\"AAAA\"".to_owned(),
        "Signature keyId=\"alice-key,algorithm=\"hmac-sha256\",signature=\"AAAA".to_owned(),
        format!("{valid},keyId=\"alice-key\""),
    ] {
        let (flow, _, _) = run(&*policy(""), request("/orders?page=2", &[("date", &now), ("authorization", &header)]));
        let Flow::Respond(response) = flow else { panic!("{header} must be refused") };
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["detail"], "the Signature credentials are malformed", "{header}");
    }
    let mut non_ascii = request("/orders?page=2", &[("date", &now)]);
    non_ascii.headers.insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(b"Signature keyId=\"caf\xc3\xa9\"").expect("obs-text is a valid header value"),
    );
    let Flow::Respond(response) = run(&*policy(""), non_ascii).0 else { panic!("non-ASCII must be refused") };
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(body["detail"], "the Signature credentials are malformed");

    let not_base64 = authorization("alice-key", "hmac-sha256", "@request-target date", "%%%");
    let (flow, _, _) = run(&*policy(""), request("/orders?page=2", &[("date", &now), ("authorization", &not_base64)]));
    assert_eq!(refused_as(flow), "invalid-credentials");
}

#[test]
fn reads_parameters_in_any_order_with_spaces_and_ignores_unknown_ones() {
    let now = date(0);
    let signing_string = format!("alice-key\nGET /orders?page=2\ndate: {now}\n");
    let signature = sign_sha256("alice-secret", &signing_string);
    let header = format!(
        "signature signature=\"{signature}\", created=\"1\", headers=\"@request-target Date\", keyId=\"alice-key\", algorithm=\"hmac-sha256\""
    );
    let (flow, _, _) = run(&*policy(""), request("/orders?page=2", &[("date", &now), ("authorization", &header)]));
    assert!(matches!(flow, Flow::Continue), "{flow:?}");
}

#[test]
fn answers_a_request_without_a_signature_with_a_challenge_or_the_anonymous_consumer() {
    let (flow, _, _) = run(&*policy("realm: ledger"), request("/", &[("authorization", "Basic YTpi")]));
    let (status, challenge, kind) = refusal(flow);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge, "Signature realm=\"ledger\",headers=\"@request-target date\"");
    assert_eq!(kind, "missing-credentials");

    let anonymous = policy("anonymous_consumer: guest");
    let (flow, _, exchange) = run(&*anonymous, request("/", &[]));
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);
    let (flow, _, _) = run(
        &*anonymous,
        request(
            "/",
            &[("date", &date(0)), ("authorization", &authorization("alice-key", "hmac-sha256", "date", "AAAA"))],
        ),
    );
    assert_eq!(refused_as(flow), "invalid-credentials");
}

#[test]
fn builds_the_signing_string_as_apisix_does() {
    // APISIX 3.x's `generate_signature`: the key id, `METHOD request_uri` for the request
    // target, `name: value` per header, each line ending in a newline.
    let parts = request(
        "/get?x=1&y=2",
        &[
            ("date", "Fri, 06 Sep 2024 06:41:29 GMT"),
            ("X-Custom", "a"),
            ("authorization", &authorization("john-key", "hmac-sha256", "@request-target date X-Custom", "x")),
        ],
    );
    let Presented::Signature(params) = presented(&parts) else { panic!("a signature") };
    assert_eq!(
        signing_string_text(&params, &parts),
        "john-key\nGET /get?x=1&y=2\ndate: Fri, 06 Sep 2024 06:41:29 GMT\nx-custom: a\n"
    );
}

fn signing_string_text(params: &SignatureParams<'_>, parts: &RequestParts) -> String {
    String::from_utf8(signing_string(params, parts).expect("every header present")).expect("text")
}

#[test]
fn reports_a_key_id_shared_by_two_consumers_once() {
    let config = "consumers:
  - id: alice
    credentials: {hmac_auth: {key_id: shared, secret: one}}
  - id: bob
    credentials: {hmac_auth: {key_id: shared, secret: two}}
";
    assert_eq!(
        errors("", config),
        ["consumers[bob].credentials.hmac_auth.key_id: the key id `shared` is already the credential `alice:hmac_auth`"]
    );
}

#[test]
fn rejects_empty_credentials_at_their_path_without_the_secret() {
    let config = "consumers:
  - id: alice
    credentials: {hmac_auth: {key_id: \"\", secret: \"\"}}
  - id: bob
    credentials: {hmac_auth: {key_id: 'has\"quote', secret: bob-secret}}
";
    let found = errors("", config);
    assert_eq!(
        found,
        [
            "consumers[alice].credentials.hmac_auth.key_id: must not be empty",
            "consumers[alice].credentials.hmac_auth.secret: must not be empty",
            "consumers[bob].credentials.hmac_auth.key_id: must not contain `\"` or control characters",
        ]
    );
    assert!(!found.iter().any(|error| error.contains("bob-secret")));
}

#[test]
fn rejects_bad_settings_at_their_path() {
    let found = errors(
        "allowed_algorithms: []\nclock_skew: 0s\nsigned_headers: [date, \"bad header\"]\nanonymous_consumer: nobody",
        CONSUMERS,
    );
    for expected in [
        "global_policies[0].hmac_auth.allowed_algorithms: allow at least one algorithm",
        "global_policies[0].hmac_auth.clock_skew: must be at least 1s: a Date header counts whole seconds",
        "global_policies[0].hmac_auth.signed_headers[1]: `bad header` is neither a header name nor `@request-target`",
        "global_policies[0].hmac_auth.anonymous_consumer: no consumer has id `nobody`",
    ] {
        assert!(found.contains(&expected.to_owned()), "{expected}\nnot in {found:#?}");
    }
    let unknown = errors("allowed_algorithms: [hmac-md5]", CONSUMERS);
    assert!(
        unknown
            .iter()
            .any(|e| e.starts_with("global_policies[0].hmac_auth.allowed_algorithms[0]: unknown variant `hmac-md5`")),
        "{unknown:?}"
    );
}
