use bytes::Bytes;
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Policy, RegisteredPolicy, RequestBody};
use http::StatusCode;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<JsonThreatProtection>()
}

fn limits() -> JsonLimits {
    JsonLimits { max_depth: 3, max_object_entries: 3, max_array_items: 3, max_string_bytes: 5, max_key_bytes: 4 }
}

fn exceeded(body: &str) -> &'static str {
    match scan_json(body.as_bytes(), &limits()) {
        Err(ScanError::Exceeded(exceeded)) => exceeded.limit,
        other => panic!("{body}: expected a limit to be exceeded, got {other:?}"),
    }
}

#[test]
fn accepts_documents_at_every_limit() {
    let at_limits = r#"{"abcd": [{"k": "12345"}, 2, 3], "b": null, "c": -1.5e3}"#;
    assert_eq!(scan_json(at_limits.as_bytes(), &limits()), Ok(()));
    assert_eq!(scan_json(b"\"scalar\"".as_slice(), &JsonLimits { max_string_bytes: 6, ..limits() }), Ok(()));
    assert_eq!(scan_json(b"  \n", &limits()), Ok(()));
}

#[test]
fn names_the_limit_each_document_goes_past() {
    assert_eq!(exceeded("[[[[1]]]]"), "max_depth");
    assert_eq!(exceeded(r#"{"a": {"b": {"c": {}}}}"#), "max_depth");
    assert_eq!(exceeded(r#"{"a": 1, "b": 2, "c": 3, "d": 4}"#), "max_object_entries");
    assert_eq!(exceeded("[1, 2, 3, 4]"), "max_array_items");
    assert_eq!(exceeded(r#"["123456"]"#), "max_string_bytes");
    assert_eq!(exceeded(r#"{"abcde": 1}"#), "max_key_bytes");
}

#[test]
fn measures_strings_after_unescaping_in_utf8_bytes() {
    // Six escaped characters make a five-byte string: within the limit.
    assert_eq!(scan_json(br#"["\u0041\u0042\u0043\u0044\u0045"]"#, &limits()), Ok(()));
    // Three two-byte characters are six bytes.
    assert_eq!(exceeded("[\"\u{e9}\u{e9}\u{e9}\"]"), "max_string_bytes");
}

#[test]
fn stops_at_the_first_limit_even_when_the_rest_is_malformed() {
    assert_eq!(exceeded("[1, 2, 3, 4, oops"), "max_array_items");
}

#[test]
fn reports_malformed_json_with_a_position() {
    let Err(ScanError::Malformed(reason)) = scan_json(b"{\"a\": }", &limits()) else { panic!("malformed JSON") };
    assert!(reason.contains("line 1 column"), "{reason}");
    let Err(ScanError::Malformed(_)) = scan_json(b"{} {}", &limits()) else { panic!("trailing data") };
}

#[test]
fn parses_defaults() {
    let policy = build_policy(entry(), "").expect("every setting has a default");
    assert!(policy.reads_request_body());
}

#[test]
fn rejects_out_of_range_settings_at_their_paths() {
    let errors = build_policy_error(
        entry(),
        "max_body_bytes: 0\nmax_depth: 101\nmax_key_bytes: 0\ncontent_types: [json]\nmax_array_items: 0",
    );
    let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
    for field in ["max_body_bytes", "max_depth", "max_key_bytes", "max_array_items", "content_types[0]"] {
        let path = format!("global_policies[0].json_threat_protection.{field}");
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    let unknown = build_policy_error(entry(), "max_nesting: 3");
    assert!(unknown.0[0].message.contains("unknown field"), "{unknown}");
}

fn json_post(body: &str) -> RequestParts {
    request_parts(
        http::Request::post("/orders")
            .header("content-type", "application/json; charset=utf-8")
            .header("content-length", body.len())
            .body(())
            .expect("request"),
    )
}

fn run_with_body(policy: &dyn Policy, request: &mut RequestParts, body: &str) -> Flow {
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.extensions.insert(RequestBody(Bytes::copy_from_slice(body.as_bytes())));
    run_request(policy, request, &mut exchange)
}

fn problem(flow: Flow) -> (StatusCode, serde_json::Value) {
    let Flow::Respond(response) = flow else { panic!("the body should be refused") };
    (response.status(), serde_json::from_slice(response.body()).expect("a JSON problem"))
}

#[test]
fn refuses_a_deep_document_with_400_naming_the_limit() {
    let policy = build_policy(entry(), "max_depth: 2").expect("valid settings");
    let body = r#"{"a": {"b": {"c": 1}}}"#;
    let mut request = json_post(body);
    assert_eq!(policy.request_body_limit(&request), Some(1024 * 1024));
    let (status, problem) = problem(run_with_body(&*policy, &mut request, body));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "https://gantry.dev/problems/json-threat");
    assert_eq!(problem["limit"], "max_depth");
    assert_eq!(problem["allowed"], 2);
    assert_eq!(problem["detail"], "objects and arrays nest more than 2 deep");
}

#[test]
fn lets_a_document_within_the_limits_through() {
    let policy = build_policy(entry(), "max_depth: 2").expect("valid settings");
    let body = r#"{"a": {"b": 1}}"#;
    assert!(matches!(run_with_body(&*policy, &mut json_post(body), body), Flow::Continue));
}

#[test]
fn refuses_a_declared_oversized_body_with_413_without_reading_it() {
    let policy = build_policy(entry(), "max_body_bytes: 10").expect("valid settings");
    let mut request = json_post(r#"{"too": "long"}"#);
    assert_eq!(policy.request_body_limit(&request), None, "a body declared too large must not be read");
    let (status, problem) = problem(run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:5000")));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["limit"], "max_body_bytes");
    assert_eq!(problem["detail"], "the request body is 15 bytes; at most 10 are accepted");
}

#[test]
fn refuses_malformed_json_with_400() {
    let policy = build_policy(entry(), "").expect("valid settings");
    let (status, problem) = problem(run_with_body(&*policy, &mut json_post("{\"a\""), "{\"a\""));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "https://gantry.dev/problems/invalid-json");
}

#[test]
fn ignores_requests_of_other_media_types() {
    let policy = build_policy(entry(), "max_depth: 1").expect("valid settings");
    let mut request =
        request_parts(http::Request::post("/upload").header("content-type", "text/plain").body(()).expect("request"));
    assert_eq!(policy.request_body_limit(&request), None);
    assert!(matches!(run_with_body(&*policy, &mut request, "[[[]]]"), Flow::Continue));
}
