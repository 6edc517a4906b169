use bytes::Bytes;
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Policy, RegisteredPolicy, RequestBody};

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<XmlThreatProtection>()
}

fn limits() -> XmlLimits {
    XmlLimits {
        max_depth: 3,
        max_elements: 5,
        max_attributes_per_element: 2,
        max_attribute_value_bytes: 5,
        max_text_bytes: 8,
        max_name_bytes: 6,
    }
}

fn exceeded(body: &str) -> &'static str {
    match scan_xml(body.as_bytes(), &limits()) {
        Err(XmlScanError::Exceeded(exceeded)) => exceeded.limit,
        other => panic!("{body}: expected a limit to be exceeded, got {other:?}"),
    }
}

#[test]
fn accepts_documents_at_every_limit() {
    let at_limits = r#"<?xml version="1.0"?><!-- c --><a x="12345" y="&amp;"><b><c>1&lt;</c></b><d>&#65;</d></a>"#;
    assert_eq!(scan_xml(at_limits.as_bytes(), &limits()), Ok(()));
    assert_eq!(scan_xml(b"<abcdef><![CDATA[12345678]]></abcdef>", &limits()), Ok(()));
    assert_eq!(scan_xml(b" \n", &limits()), Ok(()));
}

#[test]
fn names_the_limit_each_document_goes_past() {
    assert_eq!(exceeded("<a><b><c><d/></c></b></a>"), "max_depth");
    assert_eq!(exceeded("<a><b/><b/><b/><b/><b/></a>"), "max_elements");
    assert_eq!(exceeded(r#"<a x="1" y="2" z="3"/>"#), "max_attributes_per_element");
    assert_eq!(exceeded(r#"<a x="123456"/>"#), "max_attribute_value_bytes");
    assert_eq!(exceeded("<a>123456789</a>"), "max_text_bytes");
    // Text split by references and CDATA is one run.
    assert_eq!(exceeded("<a>1234&amp;<![CDATA[5]]></a>"), "max_text_bytes");
    assert_eq!(exceeded("<abcdefg/>"), "max_name_bytes");
    assert_eq!(exceeded(r#"<a abcdefg="1"/>"#), "max_name_bytes");
}

#[test]
fn refuses_a_dtd_and_undeclared_entities() {
    let billion_laughs =
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
    assert_eq!(scan_xml(billion_laughs.as_bytes(), &limits()), Err(XmlScanError::Refused(DTD_REFUSED)));
    let external = r#"<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><a>&xxe;</a>"#;
    assert_eq!(scan_xml(external.as_bytes(), &limits()), Err(XmlScanError::Refused(DTD_REFUSED)));
    assert_eq!(scan_xml(b"<a>&xxe;</a>", &limits()), Err(XmlScanError::Refused(ENTITY_REFUSED)));
    assert_eq!(scan_xml(br#"<a b="&xxe;"/>"#, &limits()), Err(XmlScanError::Refused(ENTITY_REFUSED)));
}

#[test]
fn reports_malformed_documents() {
    for body in ["<a><b></a>", "<a>", "<a/><b/>", "text only", r#"<a x="1" x="2"/>"#] {
        let result = scan_xml(body.as_bytes(), &limits());
        assert!(matches!(result, Err(XmlScanError::Malformed(_))), "{body}: {result:?}");
    }
}

#[test]
fn rejects_out_of_range_settings_at_their_paths() {
    let errors = build_policy_error(entry(), "max_depth: 0\nmax_text_bytes: 0\ncontent_types: []");
    let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
    for field in ["max_depth", "max_text_bytes", "content_types"] {
        let path = format!("global_policies[0].xml_threat_protection.{field}");
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
}

fn xml_post(body: &str, content_type: &str) -> RequestParts {
    request_parts(
        http::Request::post("/soap")
            .header("content-type", content_type)
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
fn refuses_too_many_elements_with_400_naming_the_limit() {
    let policy = build_policy(entry(), "max_elements: 2").expect("valid settings");
    let body = "<a><b/><c/></a>";
    let mut request = xml_post(body, "application/soap+xml; charset=utf-8");
    assert_eq!(policy.request_body_limit(&request), Some(1024 * 1024));
    let (status, problem) = problem(run_with_body(&*policy, &mut request, body));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "https://gantry.dev/problems/xml-threat");
    assert_eq!(problem["limit"], "max_elements");
    assert_eq!(problem["allowed"], 2);
}

#[test]
fn refuses_a_dtd_with_400() {
    let policy = build_policy(entry(), "").expect("defaults");
    let body = r#"<!DOCTYPE a SYSTEM "http://example.com/a.dtd"><a/>"#;
    let (status, problem) = problem(run_with_body(&*policy, &mut xml_post(body, "text/xml"), body));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["detail"], DTD_REFUSED);
}

#[test]
fn refuses_a_declared_oversized_body_with_413() {
    let policy = build_policy(entry(), "max_body_bytes: 4").expect("valid settings");
    let mut request = xml_post("<a>1</a>", "application/xml");
    assert_eq!(policy.request_body_limit(&request), None);
    let (status, problem) = problem(run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:5000")));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["limit"], "max_body_bytes");
}

#[test]
fn lets_a_document_within_the_limits_and_other_media_types_through() {
    let policy = build_policy(entry(), "max_depth: 1").expect("valid settings");
    assert!(matches!(run_with_body(&*policy, &mut xml_post("<a/>", "application/xml"), "<a/>"), Flow::Continue));
    let mut json = xml_post("<a><b/></a>", "application/json");
    assert_eq!(policy.request_body_limit(&json), None);
    assert!(matches!(run_with_body(&*policy, &mut json, "<a><b/></a>"), Flow::Continue));
}
