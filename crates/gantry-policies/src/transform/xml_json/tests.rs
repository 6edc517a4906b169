use bytes::Bytes;
use gantry_policy_api::response_body::{take_response_body_action, ResponseBodyAction};
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Flow, Hooks, RegisteredPolicy, RequestBody};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

use crate::transform::json_to_xml::JsonToXml;
use crate::transform::xml_to_json::XmlToJson;

/// Runs `entry`'s request hook on `body` sent as `content_type`: the status (200 to go on),
/// and the body and `Content-Type` forwarded.
fn convert_request(entry: RegisteredPolicy, settings: &str, content_type: &str, body: &str) -> (u16, String, String) {
    let policy = build_policy(entry, settings).expect("valid settings");
    let mut request =
        request_parts(http::Request::post("/orders").header(CONTENT_TYPE, content_type).body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    if policy.request_body_limit(&request).is_some() {
        exchange.extensions.insert(RequestBody(Bytes::from(body.to_owned())));
    }
    let status = match run_request(&*policy, &mut request, &mut exchange) {
        Flow::Continue => 200,
        Flow::Respond(answer) => answer.status().as_u16(),
    };
    let forwarded = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
    if status == 200 && !forwarded.is_empty() {
        assert_eq!(request.headers[CONTENT_LENGTH], forwarded.len().to_string());
    }
    let content_type = request.headers[CONTENT_TYPE].to_str().expect("text").to_owned();
    (status, String::from_utf8(forwarded.to_vec()).expect("UTF-8"), content_type)
}

#[test]
fn converts_xml_request_bodies_to_json() {
    let entry = RegisteredPolicy::of::<XmlToJson>();
    let (status, body, content_type) = convert_request(
        entry,
        "always_array: [item]\ntyped_values: true",
        "application/xml; charset=utf-8",
        r#"<order id="7"><item sku="a-1">2</item><paid>true</paid></order>"#,
    );
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert_eq!(body, r##"{"order":{"@id":7,"item":[{"#text":2,"@sku":"a-1"}],"paid":true}}"##);

    let (status, body, _) = convert_request(entry, "", "application/json", "{\"a\":1}");
    assert_eq!((status, body.as_str()), (200, ""), "other media types are not read");

    let xxe = "<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>";
    assert_eq!(convert_request(entry, "", "text/xml", xxe).0, 400);
}

#[test]
fn converts_json_request_bodies_to_xml() {
    let entry = RegisteredPolicy::of::<JsonToXml>();
    let (status, body, content_type) = convert_request(
        entry,
        "content_type: text/xml; charset=utf-8\nroot_element: request",
        "application/json",
        r#"{"id": 7, "tags": ["a", "b"]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/xml; charset=utf-8");
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><request><id>7</id><tags>a</tags><tags>b</tags></request>"
    );
    assert_eq!(convert_request(entry, "", "application/json", "{\"bad key\": 1}").0, 400);
    assert_eq!(convert_request(entry, "", "application/json", "{oops").0, 400);
}

#[test]
fn converts_a_response_body_and_switches_its_content_type() {
    let policy = build_policy(RegisteredPolicy::of::<XmlToJson>(), "request: false\nresponse: true").expect("valid");
    assert_eq!(policy.hooks(), Hooks::RESPONSE);
    let mut exchange = exchange_from("10.0.0.1:5000");
    let (mut head, ()) =
        http::Response::builder().header(CONTENT_TYPE, "application/soap+xml").body(()).expect("response").into_parts();
    assert!(policy.response_body_limit(&head, &exchange).is_some());
    assert!(policy.on_response_body(&head, &Bytes::from_static(b"<ok>yes</ok>"), &mut exchange).is_none());
    policy.on_response(&mut head, &mut exchange);
    let Some(ResponseBodyAction::Replace(sent)) = take_response_body_action(&mut exchange) else { panic!("replaced") };
    assert_eq!(sent, r#"{"ok":"yes"}"#);
    assert_eq!(head.headers[CONTENT_TYPE], "application/json");
    assert_eq!(head.headers[CONTENT_LENGTH], sent.len().to_string());

    let answer = policy.on_response_body(&head_of("text/xml"), &Bytes::from_static(b"<a>"), &mut exchange);
    assert_eq!(answer.map(|answer| answer.status().as_u16()), Some(502));
}

fn head_of(content_type: &str) -> http::response::Parts {
    http::Response::builder().header(CONTENT_TYPE, content_type).body(()).expect("response").into_parts().0
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let cases = [
        (RegisteredPolicy::of::<XmlToJson>(), "request: false", "global_policies[0].xml_to_json"),
        (RegisteredPolicy::of::<XmlToJson>(), "attribute_prefix: a", "global_policies[0].xml_to_json.attribute_prefix"),
        (
            RegisteredPolicy::of::<XmlToJson>(),
            "attribute_prefix: ''",
            "global_policies[0].xml_to_json.attribute_prefix",
        ),
        (RegisteredPolicy::of::<XmlToJson>(), "text_key: value", "global_policies[0].xml_to_json.text_key"),
        (RegisteredPolicy::of::<XmlToJson>(), "text_key: '@t'", "global_policies[0].xml_to_json.text_key"),
        (
            RegisteredPolicy::of::<XmlToJson>(),
            "always_array: [ok, '1bad']",
            "global_policies[0].xml_to_json.always_array[1]",
        ),
        (RegisteredPolicy::of::<XmlToJson>(), "max_body_bytes: 0", "global_policies[0].xml_to_json.max_body_bytes"),
        (RegisteredPolicy::of::<XmlToJson>(), "root_element: a", "global_policies[0].xml_to_json.root_element"),
        (RegisteredPolicy::of::<JsonToXml>(), "root_element: 'a b'", "global_policies[0].json_to_xml.root_element"),
        (
            RegisteredPolicy::of::<JsonToXml>(),
            "content_type: application/json",
            "global_policies[0].json_to_xml.content_type",
        ),
        (RegisteredPolicy::of::<JsonToXml>(), "always_array: [a]", "global_policies[0].json_to_xml.always_array"),
    ];
    for (entry, settings, path) in cases {
        let errors = build_policy_error(entry, settings);
        assert!(errors.0.iter().any(|error| error.path.to_string() == path), "{settings}: expected {path}: {errors}");
    }
}
