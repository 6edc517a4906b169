use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{RegisteredPolicy, RequestBody};

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<JsonSchemaPolicy>()
}

const ORDER_SCHEMA: &str = "request:\n  schema:\n    type: object\n    required: [sku, quantity]\n    properties:\n      sku: {type: string}\n      quantity: {type: integer, minimum: 1}\n      card: {type: string, pattern: '^[0-9]{16}$'}\n";

fn post(body: &str, content_type: &str) -> (RequestParts, Exchange) {
    let request = request_parts(
        http::Request::post("/orders")
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(())
            .expect("request"),
    );
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.extensions.insert(RequestBody(Bytes::copy_from_slice(body.as_bytes())));
    (request, exchange)
}

fn answer(flow: Flow) -> (StatusCode, Value) {
    let Flow::Respond(response) = flow else { panic!("the request should be refused") };
    (response.status(), serde_json::from_slice(response.body()).expect("a JSON problem"))
}

#[test]
fn lets_a_matching_body_through() {
    let policy = build_policy(entry(), ORDER_SCHEMA).expect("valid settings");
    let (mut request, mut exchange) = post(r#"{"sku": "A-1", "quantity": 2}"#, "application/json");
    assert_eq!(policy.request_body_limit(&request), Some(1024 * 1024));
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));
}

#[test]
fn refuses_a_mismatch_with_400_listing_errors_without_the_values() {
    let policy = build_policy(entry(), &format!("{ORDER_SCHEMA}max_errors: 2\n")).expect("valid settings");
    let (mut request, mut exchange) = post(r#"{"quantity": 0, "card": "4111-secret"}"#, "application/json");
    let (status, problem) = answer(run_request(&*policy, &mut request, &mut exchange));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-validation-failed");
    assert_eq!(problem["error_count"], 3, "{problem}");
    let errors = problem["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "max_errors caps the list");
    let text = problem.to_string();
    assert!(!text.contains("4111-secret"), "the problem repeats a value: {text}");
    let paths: Vec<&str> = errors.iter().filter_map(|error| error["instance_path"].as_str()).collect();
    assert!(paths.iter().all(|path| ["", "/quantity", "/card"].contains(path)), "{paths:?}");
}

#[test]
fn refuses_other_media_types_malformed_json_and_missing_bodies() {
    let policy = build_policy(entry(), ORDER_SCHEMA).expect("valid settings");
    let (mut request, mut exchange) = post("sku=A-1", "application/x-www-form-urlencoded");
    assert_eq!(answer(run_request(&*policy, &mut request, &mut exchange)).0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (mut request, mut exchange) = post("{\"sku\":", "application/json");
    let (status, problem) = answer(run_request(&*policy, &mut request, &mut exchange));
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("https://gantry.dev/problems/invalid-json"))
    );
    let (mut request, mut exchange) = post("", "application/json");
    assert_eq!(answer(run_request(&*policy, &mut request, &mut exchange)).0, StatusCode::BAD_REQUEST);
}

#[test]
fn does_not_check_methods_it_does_not_list() {
    let policy = build_policy(entry(), ORDER_SCHEMA).expect("valid settings");
    let mut request = request_parts(http::Request::get("/orders").body(()).expect("request"));
    assert_eq!(policy.request_body_limit(&request), None);
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:5000")), Flow::Continue));
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let paths = |yaml: &str| -> Vec<String> {
        build_policy_error(entry(), yaml).0.iter().map(|error| error.path.to_string()).collect()
    };
    let at = "global_policies[0].json_schema";
    assert_eq!(paths("max_errors: 3"), [at]);
    assert_eq!(paths("request: {schema: {type: nope}}"), [format!("{at}.request.schema")]);
    assert_eq!(paths("request: {file: /no/such/schema.json}"), [format!("{at}.request.file")]);
    assert_eq!(paths("request: {}"), [format!("{at}.request")]);
    assert_eq!(paths("request: {schema: {}, file: a.json}"), [format!("{at}.request")]);
    assert_eq!(paths("response: {schema: {}, statuses: [700]}"), [format!("{at}.response.statuses[0]")]);
    assert_eq!(paths("request: {schema: {}}\nmethods: [\"BAD METHOD\"]"), [format!("{at}.methods[0]")]);
}

#[test]
fn reads_a_schema_file_relative_to_the_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("order.json"), r#"{"type": "object", "required": ["sku"]}"#).expect("write");
    let spec = GatewaySpec { source_dir: gantry_config::SourceDir::new(dir.path()), ..GatewaySpec::default() };
    let consumers = gantry_policy_api::ConsumerDirectory::default();
    let context = BuildContext::new(&spec, &consumers);
    let raw = serde_json::json!({"request": {"file": "order.json"}});
    let Ok(policy) = entry().build(&raw, &FieldPath::root(), &context) else { panic!("the file is found") };
    let (mut request, mut exchange) = post("{}", "application/json");
    assert_eq!(answer(run_request(&*policy, &mut request, &mut exchange)).0, StatusCode::BAD_REQUEST);
}

fn upstream_response(status: u16, content_type: &str) -> ResponseParts {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(())
        .expect("response")
        .into_parts()
        .0
}

const RESPONSE_SCHEMA: &str = "response:\n  schema: {type: object, required: [id]}\n";

#[test]
fn rejects_a_mismatching_response_with_502() {
    let policy = build_policy(entry(), RESPONSE_SCHEMA).expect("valid settings");
    assert!(policy.reads_response_body());
    let mut exchange = exchange_from("10.0.0.1:5000");
    let ok = upstream_response(200, "application/json");
    assert_eq!(policy.response_body_limit(&ok, &exchange), Some(1024 * 1024));
    assert!(policy.on_response_body(&ok, &Bytes::from_static(br#"{"id": 1}"#), &mut exchange).is_none());
    let answer = policy.on_response_body(&ok, &Bytes::from_static(br#"{"name": "x"}"#), &mut exchange);
    let answer = answer.expect("a mismatch is rejected");
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    let problem: Value = serde_json::from_slice(answer.body()).expect("problem");
    assert_eq!(problem["type"], "https://gantry.dev/problems/response-validation-failed");
    assert_eq!(problem["errors"][0]["instance_path"], "");
    let text = upstream_response(200, "text/plain");
    assert!(policy.on_response_body(&text, &Bytes::from_static(b"{\"id\": 1}"), &mut exchange).is_some());
    assert!(policy.on_response_body(&ok, &Bytes::new(), &mut exchange).is_none(), "an empty body (204, HEAD) passes");
    let mut gzipped = upstream_response(200, "application/json");
    gzipped.headers.insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static("gzip"));
    assert_eq!(policy.response_body_limit(&gzipped, &exchange), None, "a compressed body is not read");
}

#[test]
fn checks_only_the_listed_statuses_and_only_logs_in_log_mode() {
    let policy = build_policy(entry(), &format!("{RESPONSE_SCHEMA}  on_failure: log\n")).expect("valid settings");
    let mut exchange = exchange_from("10.0.0.1:5000");
    assert_eq!(policy.response_body_limit(&upstream_response(404, "application/json"), &exchange), None);
    let ok = upstream_response(201, "application/json");
    assert!(policy.on_response_body(&ok, &Bytes::from_static(b"[]"), &mut exchange).is_none());
    let listed = build_policy(entry(), &format!("{RESPONSE_SCHEMA}  statuses: [404]\n")).expect("valid settings");
    assert_eq!(listed.response_body_limit(&upstream_response(200, "application/json"), &exchange), None);
    assert!(listed.response_body_limit(&upstream_response(404, "application/json"), &exchange).is_some());
}
