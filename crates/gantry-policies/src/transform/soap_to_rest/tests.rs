use std::sync::Arc;

use bytes::Bytes;
use gantry_policy_api::response_body::{take_response_body_action, ResponseBodyAction};
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Exchange, Flow, Policy, RegisteredPolicy, RequestBody};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::SoapToRest;
use crate::transform::soap::{Envelope, JsonShape, SoapVersion};

const SETTINGS: &str = "typed_values: true
operations:
  Add:
    path: /calc/add
  GetAccount:
    method: GET
    path: /accounts/{id}
    action: urn:accounts#get";

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_policy(RegisteredPolicy::of::<SoapToRest>(), settings).expect("valid settings")
}

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";

fn envelope(namespace: &str, body: &str) -> String {
    format!(r#"<?xml version="1.0"?><s:Envelope xmlns:s="{namespace}"><s:Header/><s:Body>{body}</s:Body></s:Envelope>"#)
}

/// What the request hook did with a SOAP request: forwarded (method, path and query, body),
/// or answered (status, content type, body).
#[derive(Debug)]
enum Outcome {
    Forwarded(http::request::Parts, String),
    Answered(u16, String, String),
}

fn send(policy: &dyn Policy, method: &str, headers: &[(&str, &str)], body: &str) -> (Outcome, Exchange) {
    let mut builder = http::Request::builder().method(method).uri("/soap");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = request_parts(builder.body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    assert!(policy.request_body_limit(&request).is_some());
    exchange.extensions.insert(RequestBody(Bytes::from(body.to_owned())));
    let outcome = match run_request(policy, &mut request, &mut exchange) {
        Flow::Continue => {
            let forwarded = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
            let path = exchange.upstream_path.as_ref().map(|path| path.to_string()).unwrap_or_default();
            request.uri = path.parse().expect("a path");
            Outcome::Forwarded(request, String::from_utf8(forwarded.to_vec()).expect("UTF-8"))
        }
        Flow::Respond(answer) => Outcome::Answered(
            answer.status().as_u16(),
            answer.headers()[CONTENT_TYPE].to_str().expect("text").to_owned(),
            String::from_utf8(answer.body().to_vec()).expect("UTF-8"),
        ),
    };
    (outcome, exchange)
}

const XML11: [(&str, &str); 1] = [("content-type", "text/xml; charset=utf-8")];

#[test]
fn sends_the_operation_element_as_json_to_its_method_and_path() {
    let policy = policy(SETTINGS);
    let add = envelope(
        SOAP11,
        r#"<c:Add xmlns:c="urn:calc"><c:a>2</c:a><c:b>5</c:b><c:note xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/></c:Add>"#,
    );
    let (Outcome::Forwarded(head, body), _) =
        send(&*policy, "POST", &[("content-type", "text/xml"), ("soapaction", "\"Add\"")], &add)
    else {
        panic!("forwarded")
    };
    assert_eq!((head.method.as_str(), head.uri.to_string().as_str()), ("POST", "/calc/add"));
    assert_eq!(body, r#"{"a":2,"b":5,"note":null}"#);
    assert_eq!(head.headers[CONTENT_TYPE], "application/json");
    assert_eq!(head.headers[CONTENT_LENGTH], body.len().to_string());
    assert!(head.headers.get("soapaction").is_none());

    // Chosen by its action, whatever the element; fields go to the path and the query.
    let get = envelope(SOAP12, r#"<Lookup xmlns="urn:a"><id>a/1</id><lang>en</lang><lang>de</lang></Lookup>"#);
    let content_type = "application/soap+xml; charset=utf-8; action=\"urn:accounts#get\"";
    let (Outcome::Forwarded(head, body), _) = send(&*policy, "POST", &[("content-type", content_type)], &get) else {
        panic!("forwarded")
    };
    assert_eq!((head.method.as_str(), head.uri.to_string().as_str()), ("GET", "/accounts/a%2F1?lang=en&lang=de"));
    assert_eq!(body, "");
    assert!(head.headers.get(CONTENT_TYPE).is_none());
}

fn assert_fault(outcome: &Outcome, status: u16, version: SoapVersion, code: &str, string_part: &str) {
    let Outcome::Answered(answered, content_type, body) = outcome else { panic!("answered: {outcome:?}") };
    assert_eq!(*answered, status, "{body}");
    assert!(content_type.starts_with(version.media_type()), "{content_type}");
    let envelope = Envelope::parse(body.as_bytes()).expect("a SOAP envelope");
    assert_eq!(envelope.version, version);
    let fault = envelope.fault(&JsonShape::default()).expect("a fault");
    assert_eq!(fault.code_name, code, "{body}");
    assert!(fault.string.contains(string_part), "{}", fault.string);
}

#[test]
fn answers_requests_that_are_not_served_soap_with_client_faults() {
    let policy = policy(SETTINGS);
    let unknown = envelope(SOAP11, r#"<Subtract xmlns="urn:calc"/>"#);
    assert_fault(
        &send(&*policy, "POST", &XML11, &unknown).0,
        500,
        SoapVersion::V11,
        "Client",
        "`Subtract` is not served",
    );
    let malformed = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>";
    assert_fault(&send(&*policy, "POST", &XML11, malformed).0, 500, SoapVersion::V11, "Client", "not a SOAP envelope");
    let soap12 = [("content-type", "application/soap+xml")];
    assert_fault(&send(&*policy, "POST", &soap12, "not xml").0, 400, SoapVersion::V12, "Sender", "not a SOAP envelope");
    let xxe = format!("<!DOCTYPE s [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}", envelope(SOAP11, "<Add>&x;</Add>"));
    assert_fault(&send(&*policy, "POST", &XML11, &xxe).0, 500, SoapVersion::V11, "Client", "not a SOAP envelope");
    let empty = envelope(SOAP12, "");
    assert_fault(&send(&*policy, "POST", &soap12, &empty).0, 400, SoapVersion::V12, "Sender", "Body is empty");
    let no_id = envelope(SOAP11, r#"<GetAccount xmlns="urn:a"/>"#);
    assert_fault(&send(&*policy, "POST", &XML11, &no_id).0, 500, SoapVersion::V11, "Client", "field `id`");
    assert_fault(&send(&*policy, "GET", &XML11, "").0, 500, SoapVersion::V11, "Client", "POST");
    let plain = "<Envelope><Body><Add/></Body></Envelope>";
    assert_fault(&send(&*policy, "POST", &XML11, plain).0, 500, SoapVersion::V11, "Client", "not a SOAP envelope");
}

/// Answers a forwarded call with `status` and `body`: what the client gets.
fn upstream_answers(version_namespace: &str, status: u16, body: &str) -> (u16, String, String) {
    let policy = policy(SETTINGS);
    let call = envelope(version_namespace, r#"<c:Add xmlns:c="urn:calc"><c:a>2</c:a></c:Add>"#);
    let content_type = if version_namespace == SOAP12 { "application/soap+xml" } else { "text/xml" };
    let (outcome, mut exchange) = send(&*policy, "POST", &[("content-type", content_type)], &call);
    assert!(matches!(outcome, Outcome::Forwarded(..)));
    let (mut head, ()) = http::Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(())
        .expect("response")
        .into_parts();
    assert!(policy.response_body_limit(&head, &exchange).is_some());
    if let Some(answer) = policy.on_response_body(&head, &Bytes::from(body.to_owned()), &mut exchange) {
        let (mut answer_head, answer_body) = answer.into_parts();
        policy.on_response(&mut answer_head, &mut exchange);
        assert!(take_response_body_action(&mut exchange).is_none(), "a fault is left as it is");
        let content_type = answer_head.headers[CONTENT_TYPE].to_str().expect("text").to_owned();
        return (answer_head.status.as_u16(), content_type, String::from_utf8(answer_body.to_vec()).expect("UTF-8"));
    }
    policy.on_response(&mut head, &mut exchange);
    let Some(ResponseBodyAction::Replace(sent)) = take_response_body_action(&mut exchange) else { panic!("replaced") };
    assert_eq!(head.headers[CONTENT_LENGTH], sent.len().to_string());
    let content_type = head.headers[CONTENT_TYPE].to_str().expect("text").to_owned();
    (head.status.as_u16(), content_type, String::from_utf8(sent.to_vec()).expect("UTF-8"))
}

#[test]
fn wraps_json_answers_in_a_response_envelope_of_the_clients_version() {
    let (status, content_type, body) = upstream_answers(SOAP11, 201, r#"{"sum": 7, "parts": [2, 5]}"#);
    assert_eq!((status, content_type.as_str()), (200, "text/xml; charset=utf-8"));
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
         <soap:Body><AddResponse xmlns=\"urn:calc\"><parts>2</parts><parts>5</parts><sum>7</sum></AddResponse>\
         </soap:Body></soap:Envelope>"
    );
    let (status, content_type, body) = upstream_answers(SOAP12, 200, "[1, 2]");
    assert_eq!((status, content_type.as_str()), (200, "application/soap+xml; charset=utf-8"));
    assert!(body.contains("<AddResponse xmlns=\"urn:calc\"><item>1</item><item>2</item></AddResponse>"), "{body}");
    let (_, _, body) = upstream_answers(SOAP11, 204, "");
    assert!(body.contains("<AddResponse xmlns=\"urn:calc\"/>"), "{body}");
}

#[test]
fn turns_upstream_errors_into_faults() {
    let read = |(status, content_type, body): (u16, String, String)| {
        let envelope = Envelope::parse(body.as_bytes()).expect("an envelope");
        let fault = envelope.fault(&JsonShape { typed_values: true, ..JsonShape::default() }).expect("a fault");
        (status, content_type, fault)
    };
    let (status, content_type, fault) = read(upstream_answers(SOAP11, 404, r#"{"error": "no such sum"}"#));
    assert_eq!((status, content_type.as_str(), fault.code_name.as_str()), (500, "text/xml; charset=utf-8", "Client"));
    assert_eq!(fault.string, "the upstream answered 404 Not Found");
    assert_eq!(fault.detail, Some(serde_json::json!({"status": 404, "response": {"error": "no such sum"}})));
    let (status, _, fault) = read(upstream_answers(SOAP12, 404, "{}"));
    assert_eq!((status, fault.code_name.as_str()), (400, "Sender"));
    let (status, _, fault) = read(upstream_answers(SOAP11, 500, "<html>oops</html>"));
    assert_eq!((status, fault.code_name.as_str()), (500, "Server"));
    assert_eq!(fault.detail, Some(serde_json::json!({"status": 500})));
    let (status, _, fault) = read(upstream_answers(SOAP12, 503, ""));
    assert_eq!((status, fault.code_name.as_str()), (500, "Receiver"));
    let (status, _, fault) = read(upstream_answers(SOAP11, 200, "not json"));
    assert_eq!((status, fault.code_name.as_str()), (500, "Server"));
    let (_, _, fault) = read(upstream_answers(SOAP11, 200, r#"{"bad key": 1}"#));
    assert!(fault.string.contains("cannot be sent as SOAP"), "{}", fault.string);
}

#[test]
fn turns_the_gateways_own_errors_into_faults() {
    let policy = policy(SETTINGS);
    let call = envelope(SOAP11, r#"<Add xmlns="urn:calc"/>"#);
    let (_, mut exchange) = send(&*policy, "POST", &XML11, &call);
    let (mut head, ()) = http::Response::builder()
        .status(502)
        .header(CONTENT_TYPE, "application/problem+json")
        .body(())
        .expect("response")
        .into_parts();
    policy.on_response(&mut head, &mut exchange);
    let Some(ResponseBodyAction::Replace(sent)) = take_response_body_action(&mut exchange) else { panic!("replaced") };
    assert_eq!(head.status, 500);
    let envelope = Envelope::parse(&sent).expect("an envelope");
    assert_eq!(envelope.fault(&JsonShape::default()).expect("a fault").code_name, "Server");
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let entry = RegisteredPolicy::of::<SoapToRest>();
    let base = "global_policies[0].soap_to_rest";
    let cases = [
        ("operations: {}", format!("{base}.operations")),
        ("operations:\n  'a b':\n    path: /x", format!("{base}.operations.a b")),
        ("operations:\n  Add:\n    path: x", format!("{base}.operations.Add.path")),
        ("operations:\n  Add:\n    path: '/x/{a'", format!("{base}.operations.Add.path")),
        ("operations:\n  Add:\n    path: '/x/{1}'", format!("{base}.operations.Add.path")),
        ("operations:\n  Add:\n    path: /x\n    method: 'GE T'", format!("{base}.operations.Add.method")),
        (
            "operations:\n  A:\n    path: /a\n    action: x\n  B:\n    path: /b\n    action: x",
            format!("{base}.operations.B.action"),
        ),
        ("operations:\n  Add:\n    path: /x\nnamespace: ''", format!("{base}.namespace")),
        ("operations:\n  Add:\n    path: /x\nresponse_suffix: ' x'", format!("{base}.response_suffix")),
        ("operations:\n  Add:\n    path: /x\nmax_body_bytes: 0", format!("{base}.max_body_bytes")),
        ("operations:\n  Add:\n    path: /x\n    surprise: 1", format!("{base}.operations.Add.surprise")),
    ];
    for (settings, path) in cases {
        let errors = build_policy_error(entry, settings);
        assert!(errors.0.iter().any(|error| error.path.to_string() == path), "{settings}: expected {path}: {errors}");
    }
}
