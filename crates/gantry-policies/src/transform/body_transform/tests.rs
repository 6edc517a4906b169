use std::sync::Arc;

use gantry_policy_api::response_body::{take_response_body_action, ResponseBodyAction};
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Consumer, Identity, RegisteredPolicy};
use serde_json::{json, Value};

use super::*;
use bytes::Bytes;
use gantry_policy_api::{Flow, Hooks, RequestBody};
use http::header::CONTENT_LENGTH;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<BodyTransform>()
}

/// Runs the request hook on a JSON `body`, as the data plane would after reading it; gives
/// the flow's status (200 for continue) and the body and `content-length` forwarded.
fn transform_request(settings: &str, content_type: &str, body: &str, exchange: &mut Exchange) -> (u16, Bytes, String) {
    let policy = build_policy(entry(), settings).expect("valid settings");
    let mut request = request_parts(
        http::Request::post("/orders")
            .header("content-type", content_type)
            .header("content-length", body.len())
            .header("x-tenant", "acme")
            .body(())
            .expect("request"),
    );
    let limit = policy.request_body_limit(&request);
    if limit.is_some() {
        exchange.extensions.insert(RequestBody(Bytes::from(body.to_owned())));
    }
    let status = match run_request(&*policy, &mut request, exchange) {
        Flow::Continue => 200,
        Flow::Respond(answer) => answer.status().as_u16(),
    };
    let forwarded = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
    let length = request.headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
    (status, forwarded, length)
}

fn request_json(settings: &str, body: Value) -> Value {
    let mut exchange = exchange_from("10.0.0.1:5000");
    let (status, forwarded, length) = transform_request(settings, "application/json", &body.to_string(), &mut exchange);
    assert_eq!(status, 200);
    assert_eq!(length, forwarded.len().to_string(), "content-length matches the new body");
    serde_json::from_slice(&forwarded).expect("JSON forwarded")
}

#[test]
fn applies_operations_in_order() {
    let settings = r#"request:
  - add: {path: meta.source, value: gateway}
  - add: {path: meta.source, value: ignored}
  - set: {path: /status, value: {code: 1}}
  - remove: [debug, items.1]
  - rename: {path: customer.name, to: full_name}
  - move: {from: customer.email, to: contact.email}
  - copy: {from: /contact/email, to: audit.email}
"#;
    let out = request_json(
        settings,
        json!({"debug": true, "status": "x", "items": [1, 2, 3],
               "customer": {"name": "Ann", "email": "ann@example.com"}}),
    );
    assert_eq!(
        out,
        json!({"meta": {"source": "gateway"}, "status": {"code": 1}, "items": [1, 3],
               "customer": {"full_name": "Ann"}, "contact": {"email": "ann@example.com"},
               "audit": {"email": "ann@example.com"}})
    );
}

#[test]
fn fills_templates_from_request_facts_and_skips_when_a_fact_is_missing() {
    let settings = r#"request:
  - set: {path: tenant, value: "${header.x-tenant}/${route_id}"}
  - set: {path: caller, value: {id: "${consumer_id}"}}
  - set: {path: absent, value: "${header.x-missing}"}
"#;
    let mut exchange = exchange_from("10.0.0.1:5000");
    let consumer = Arc::new(Consumer::named("alice"));
    exchange.authenticate(Identity::credential(consumer, "alice:key".into(), "key_auth"));
    let (_, forwarded, _) = transform_request(settings, "application/json", "{}", &mut exchange);
    let out: Value = serde_json::from_slice(&forwarded).expect("JSON");
    assert_eq!(out, json!({"tenant": "acme/test-route", "caller": {"id": "alice"}}));

    let anonymous = request_json("request:\n  - set: {path: caller, value: \"${consumer_id}\"}", json!({}));
    assert_eq!(anonymous, json!({}), "no consumer: the operation is skipped");
}

#[test]
fn filters_sensitive_fields_anywhere_by_name_path_and_value() {
    let settings = r#"request:
  - filter:
      names: [Password, card_number]
      paths: [/profile/ssn]
      value_patterns: ['\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b']
      mask: "[hidden]"
"#;
    let out = request_json(
        settings,
        json!({"user": {"PASSWORD": "s3cret", "tokens": [{"card_number": 4111}]},
               "profile": {"ssn": 123}, "note": "paid with 4111 1111 1111 1111 today"}),
    );
    assert_eq!(
        out,
        json!({"user": {"PASSWORD": "[hidden]", "tokens": [{"card_number": "[hidden]"}]},
               "profile": {"ssn": "[hidden]"}, "note": "paid with [hidden] today"})
    );

    let removed = request_json(
        "request:\n  - filter: {names: [password], value_patterns: ['^\\d{16}$'], action: remove}",
        json!({"a": {"password": "x", "keep": 1}, "cards": ["4111111111111111", "other"], "card": "4111111111111111"}),
    );
    assert_eq!(removed, json!({"a": {"keep": 1}, "cards": ["other"]}));
}

#[test]
fn maps_values_of_a_field_or_each_item_of_an_array() {
    let settings = r#"request:
  - map_values: {path: status, values: {A: active, "1": true}, default: unknown}
  - map_values: {path: flags, values: {"true": "yes", "null": "none"}}
"#;
    let out = request_json(settings, json!({"status": "A", "flags": [true, null, false]}));
    assert_eq!(out, json!({"status": "active", "flags": ["yes", "none", false]}));
    let out = request_json(settings, json!({"status": 1}));
    assert_eq!(out["status"], true, "numbers are looked up by their text");
    let out = request_json(settings, json!({"status": "Z"}));
    assert_eq!(out["status"], "unknown");
}

#[test]
fn passes_or_refuses_bodies_that_are_not_json() {
    let settings = "request:\n  - remove: [a]";
    let mut exchange = exchange_from("10.0.0.1:5000");
    let (status, forwarded, _) = transform_request(settings, "text/plain", "a=1", &mut exchange);
    assert_eq!(status, 200);
    assert!(forwarded.is_empty(), "a text body is not read");

    let rejecting = format!("{settings}\nnon_json_request: reject");
    let (status, _, _) = transform_request(&rejecting, "text/plain", "a=1", &mut exchange_from("10.0.0.1:5000"));
    assert_eq!(status, 415);

    let (status, _, _) =
        transform_request(settings, "application/json", "{not json", &mut exchange_from("10.0.0.1:5000"));
    assert_eq!(status, 400, "a body claiming to be JSON that is not");

    let (status, _, _) = transform_request(settings, "application/vnd.api+json", "{\"a\":1,\"b\":2}", &mut exchange);
    assert_eq!(status, 200);
}

#[test]
fn rewrites_a_json_response_body_and_its_length() {
    let policy =
        build_policy(entry(), "response:\n  - remove: [internal]\n  - set: {path: req, value: \"${request_id}\"}")
            .expect("valid settings");
    assert_eq!(policy.hooks(), Hooks::RESPONSE);
    let mut exchange = exchange_from("10.0.0.1:5000");
    let (mut head, ()) = http::Response::builder()
        .header("content-type", "application/json")
        .header("content-length", "29")
        .body(())
        .expect("response")
        .into_parts();
    assert_eq!(policy.response_body_limit(&head, &exchange), Some(1024 * 1024));
    let body = Bytes::from_static(br#"{"internal":{"x":1},"ok":true}"#);
    assert!(policy.on_response_body(&head, &body, &mut exchange).is_none());
    policy.on_response(&mut head, &mut exchange);
    let Some(ResponseBodyAction::Replace(sent)) = take_response_body_action(&mut exchange) else {
        panic!("the body is replaced")
    };
    assert_eq!(serde_json::from_slice::<Value>(&sent).expect("JSON"), json!({"ok": true, "req": "test-request"}));
    assert_eq!(head.headers[CONTENT_LENGTH], sent.len().to_string());

    let (gzipped, ()) = http::Response::builder()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(())
        .expect("response")
        .into_parts();
    assert_eq!(policy.response_body_limit(&gzipped, &exchange), None, "compressed bodies pass");
}

#[test]
fn leaves_a_response_another_policy_replaced() {
    let policy = build_policy(entry(), "response:\n  - remove: [a]").expect("valid settings");
    let mut exchange = exchange_from("10.0.0.1:5000");
    let (head, ()) =
        http::Response::builder().header("content-type", "application/json").body(()).expect("response").into_parts();
    assert!(policy.on_response_body(&head, &Bytes::from_static(b"{\"a\":1}"), &mut exchange).is_none());
    let (mut answer, ()) = http::Response::builder()
        .status(502)
        .header("content-type", "application/problem+json")
        .body(())
        .expect("response")
        .into_parts();
    policy.on_response(&mut answer, &mut exchange);
    assert!(take_response_body_action(&mut exchange).is_none());
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let cases = [
        ("{}", "global_policies[0].body_transform"),
        ("request: [{set: {path: 'a..b', value: 1}}]", "global_policies[0].body_transform.request[0].set.path"),
        ("request: [{remove: [a, '/x~2']}]", "global_policies[0].body_transform.request[0].remove[1]"),
        (
            "response: [{set: {path: a, value: '${header.x}'}}]",
            "global_policies[0].body_transform.response[0].set.value",
        ),
        ("request: [{add: {path: a, value: '${secret}'}}]", "global_policies[0].body_transform.request[0].add.value"),
        (
            "request: [{filter: {value_patterns: ['(']}}]",
            "global_policies[0].body_transform.request[0].filter.value_patterns[0]",
        ),
        ("request: [{filter: {}}]", "global_policies[0].body_transform.request[0].filter"),
        (
            "request: [{map_values: {path: a, values: {}}}]",
            "global_policies[0].body_transform.request[0].map_values.values",
        ),
        ("request: [{rename: {path: a, to: ''}}]", "global_policies[0].body_transform.request[0].rename.to"),
        ("request: [{move: {from: a, too: b}}]", "global_policies[0].body_transform.request[0].move"),
        ("request: [{upsert: {path: a}}]", "global_policies[0].body_transform.request[0]"),
        ("request: [{remove: [a]}]\nmax_body_bytes: 0", "global_policies[0].body_transform.max_body_bytes"),
    ];
    for (settings, path) in cases {
        let errors = build_policy_error(entry(), settings);
        assert!(
            errors.0.iter().any(|error| error.path.to_string().starts_with(path)),
            "{settings}: expected an error at {path}: {errors}"
        );
    }
}
