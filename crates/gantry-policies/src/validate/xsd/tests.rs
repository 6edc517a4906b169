use bytes::Bytes;
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{RegisteredPolicy, RequestBody};

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Xsd>()
}

const ORDER_XSD: &str = r#"schema: |
  <xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
    <xs:element name="order">
      <xs:complexType>
        <xs:sequence>
          <xs:element name="sku" type="xs:string"/>
          <xs:element name="quantity" type="xs:positiveInteger"/>
        </xs:sequence>
        <xs:attribute name="id" type="xs:int" use="required"/>
      </xs:complexType>
    </xs:element>
  </xs:schema>
"#;

fn check(yaml: &str, content_type: &str, body: &str) -> Flow {
    let policy = build_policy(entry(), yaml).expect("valid settings");
    let mut request = request_parts(
        http::Request::post("/orders")
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(())
            .expect("request"),
    );
    assert_eq!(policy.request_body_limit(&request), Some(1024 * 1024));
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.extensions.insert(RequestBody(Bytes::copy_from_slice(body.as_bytes())));
    run_request(&*policy, &mut request, &mut exchange)
}

fn refused(flow: Flow) -> (StatusCode, Value) {
    let Flow::Respond(response) = flow else { panic!("the request should be refused") };
    (response.status(), serde_json::from_slice(response.body()).expect("a JSON problem"))
}

#[test]
fn lets_a_valid_document_through() {
    let body = r#"<order id="7"><sku>A-1</sku><quantity>2</quantity></order>"#;
    assert!(matches!(check(ORDER_XSD, "application/xml", body), Flow::Continue));
}

#[test]
fn refuses_an_invalid_document_with_positions_and_without_its_values() {
    let body = "<order id=\"4111111111111111\">\n  <sku>A-1</sku>\n  <quantity>-5</quantity>\n</order>";
    let (status, problem) = refused(check(ORDER_XSD, "text/xml; charset=utf-8", body));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-validation-failed");
    assert!(problem["error_count"].as_u64().is_some_and(|count| count >= 2), "{problem}");
    let text = problem.to_string();
    assert!(!text.contains("4111111111111111") && !text.contains("-5"), "a value is repeated: {text}");
    assert!(problem["errors"][0]["line"].as_u64().is_some(), "{problem}");
}

#[test]
fn refuses_dtds_other_media_types_and_malformed_documents() {
    let laughs = r#"<!DOCTYPE order [<!ENTITY a "aaaa">]><order id="1"><sku>&a;</sku><quantity>1</quantity></order>"#;
    let (status, problem) = refused(check(ORDER_XSD, "application/xml", laughs));
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("https://gantry.dev/problems/invalid-xml"))
    );
    assert_eq!(refused(check(ORDER_XSD, "application/json", "{}")).0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        refused(check(ORDER_XSD, "application/xml", "<order>")).1["type"],
        "https://gantry.dev/problems/invalid-xml"
    );
    assert_eq!(refused(check(ORDER_XSD, "application/xml", "")).0, StatusCode::BAD_REQUEST);
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let at = "global_policies[0].xsd";
    assert_eq!(build_policy_error(entry(), "methods: [POST]").0[0].path.to_string(), at);
    let not_a_schema = build_policy_error(entry(), "schema: '<a/>'");
    assert_eq!(not_a_schema.0[0].path.to_string(), format!("{at}.schema"));
    let broken = build_policy_error(entry(), "schema: '<xs:schema'");
    assert!(broken.0[0].message.contains("not well-formed"), "{broken}");
    let missing = build_policy_error(entry(), "file: /no/such/schema.xsd");
    assert_eq!(missing.0[0].path.to_string(), format!("{at}.file"));
}

#[test]
fn redacts_every_quoted_part_of_a_message() {
    assert_eq!(redact_quoted("'-5' is not a valid positiveInteger"), "'…' is not a valid positiveInteger");
    assert_eq!(redact_quoted("Element 'a' expected, found 'b'"), "Element '…' expected, found '…'");
    assert_eq!(redact_quoted("no quotes"), "no quotes");
    assert_eq!(redact_quoted("one ' quote"), "one ' quote");
}
