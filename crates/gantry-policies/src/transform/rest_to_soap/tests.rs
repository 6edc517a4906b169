use std::sync::Arc;

use bytes::Bytes;
use gantry_policy_api::response_body::{take_response_body_action, ResponseBodyAction};
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Exchange, Flow, Policy, RegisteredPolicy, RequestBody};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::{json, Value};

use super::RestToSoap;

const SETTINGS: &str = "namespace: urn:calc\noperation: Add\naction: urn:calc#Add\npath: /soap\nfield_order: [b, a]";

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_policy(RegisteredPolicy::of::<RestToSoap>(), settings).expect("valid settings")
}

/// Runs the request hook on `uri` with `body`: the status (200 to go on), the forwarded head
/// and body, and the exchange.
fn send(policy: &dyn Policy, uri: &str, body: &str) -> (u16, http::request::Parts, String, Exchange) {
    let mut request =
        request_parts(http::Request::get(uri).header(CONTENT_TYPE, "application/json").body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.path_params.push(("id".into(), "42".to_owned()));
    let limit = policy.request_body_limit(&request);
    assert_eq!(limit, Some(1024 * 1024), "every request's body is read");
    exchange.extensions.insert(RequestBody(Bytes::from(body.to_owned())));
    let status = match run_request(policy, &mut request, &mut exchange) {
        Flow::Continue => 200,
        Flow::Respond(answer) => answer.status().as_u16(),
    };
    let forwarded = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
    (status, request, String::from_utf8(forwarded.to_vec()).expect("UTF-8"), exchange)
}

#[test]
fn sends_the_body_and_parameters_as_the_operation_element_in_schema_order() {
    let policy = policy(SETTINGS);
    let (status, head, body, exchange) =
        send(&*policy, "/calc/42?a=2&tag=x&tag=y", r##"{"a": 9, "b": {"@unit": "m", "#text": 5}}"##);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
         <soap:Body><Add xmlns=\"urn:calc\"><b unit=\"m\">5</b><a>9</a><id>42</id><tag>x</tag><tag>y</tag></Add>\
         </soap:Body></soap:Envelope>",
        "b and a in `field_order`, the body's `a` wins over the query's, the rest by name"
    );
    assert_eq!(head.method, http::Method::POST);
    assert_eq!(head.headers[CONTENT_TYPE], "text/xml; charset=utf-8");
    assert_eq!(head.headers["soapaction"], "\"urn:calc#Add\"");
    assert_eq!(head.headers[CONTENT_LENGTH], body.len().to_string());
    assert_eq!(exchange.upstream_path.as_ref().map(|path| path.as_str()), Some("/soap"));
}

#[test]
fn writes_soap12_with_the_action_in_the_media_type_and_unqualified_children() {
    let policy = policy(
        "soap_version: 1.2\nnamespace: urn:calc\noperation: Add\naction: urn:calc#Add\nelement_form: unqualified\nparameters: []",
    );
    let (status, head, body, exchange) = send(&*policy, "/calc?ignored=1", "");
    assert_eq!(status, 200);
    assert_eq!(head.headers[CONTENT_TYPE], "application/soap+xml; charset=utf-8; action=\"urn:calc#Add\"");
    assert!(head.headers.get("soapaction").is_none());
    assert!(
        body.ends_with(
            "<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\"><soap:Body><op:Add xmlns:op=\"urn:calc\"/></soap:Body></soap:Envelope>"
        ),
        "{body}"
    );
    assert!(exchange.upstream_path.is_none(), "the request's own path goes upstream");
}

#[test]
fn refuses_bodies_that_are_not_json_objects_of_xml_names() {
    let policy = policy(SETTINGS);
    for body in ["[1, 2]", "{oops", "{\"bad name\": 1}", "\"text\""] {
        let (status, _, _, exchange) = send(&*policy, "/calc", body);
        assert_eq!(status, 400, "{body}");
        assert!(exchange.upstream_path.is_none());
    }
}

/// Shows `body` to the response hooks as an answer with `status` to a request the policy sent.
fn answer(policy: &dyn Policy, status: u16, body: &str) -> Result<(u16, Value), (u16, Value)> {
    let (_, _, _, mut exchange) = send(policy, "/calc", "{}");
    let (mut head, ()) = http::Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/xml; charset=utf-8")
        .body(())
        .expect("response")
        .into_parts();
    assert!(policy.response_body_limit(&head, &exchange).is_some());
    if let Some(answer) = policy.on_response_body(&head, &Bytes::from(body.to_owned()), &mut exchange) {
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/problem+json");
        let problem = serde_json::from_slice(answer.body()).expect("a problem document");
        return Err((answer.status().as_u16(), problem));
    }
    policy.on_response(&mut head, &mut exchange);
    let Some(ResponseBodyAction::Replace(sent)) = take_response_body_action(&mut exchange) else { panic!("replaced") };
    assert_eq!(head.headers[CONTENT_TYPE], "application/json");
    assert_eq!(head.headers[CONTENT_LENGTH], sent.len().to_string());
    Ok((head.status.as_u16(), serde_json::from_slice(&sent).expect("JSON")))
}

const SPYNE_ANSWER: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<soap11env:Envelope xmlns:soap11env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tns="urn:calc" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soap11env:Body><tns:AddResponse><tns:AddResult>7</tns:AddResult><tns:note xsi:nil="true"/><tns:tags><tns:tag>a</tns:tag></tns:tags></tns:AddResponse></soap11env:Body></soap11env:Envelope>"#;

#[test]
fn answers_the_response_element_as_json_without_prefixes() {
    let typed = policy(&format!("{SETTINGS}\ntyped_values: true\nalways_array: [tag]"));
    let expected = json!({"AddResult": 7, "note": null, "tags": {"tag": ["a"]}});
    assert_eq!(answer(&*typed, 200, SPYNE_ANSWER), Ok((200, expected.clone())));
    let wrapped = policy(&format!("{SETTINGS}\nunwrap_response: false"));
    let expected = json!({"AddResponse": {"AddResult": "7", "note": null, "tags": {"tag": "a"}}});
    assert_eq!(answer(&*wrapped, 200, SPYNE_ANSWER), Ok((200, expected)));
}

#[test]
fn maps_faults_to_problems_by_their_codes() {
    let policy = policy(&format!("{SETTINGS}\nfault_statuses:\n  Client.DivisionByZero: 422"));
    let fault11 = |code: &str| {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:{code}</faultcode><faultstring>no &amp; never</faultstring><faultactor>urn:calc</faultactor><detail><dividend>5</dividend></detail></s:Fault></s:Body></s:Envelope>"#
        )
    };
    let Err((status, problem)) = answer(&*policy, 500, &fault11("Client.DivisionByZero")) else { panic!("a problem") };
    assert_eq!(status, 422);
    assert_eq!(problem["type"], "https://gantry.dev/problems/soap-fault");
    assert_eq!(problem["status"], 422);
    assert_eq!(problem["faultcode"], "s:Client.DivisionByZero");
    assert_eq!(problem["faultstring"], "no & never");
    assert_eq!(problem["faultactor"], "urn:calc");
    assert_eq!(problem["faultdetail"], json!({"dividend": "5"}));
    assert_eq!(answer(&*policy, 500, &fault11("Client.Validation")).map_err(|(status, _)| status), Err(400));
    assert_eq!(answer(&*policy, 500, &fault11("Server")).map_err(|(status, _)| status), Err(502));
    assert_eq!(answer(&*policy, 200, &fault11("Other")).map_err(|(status, _)| status), Err(502), "whatever the status");

    let fault12 = r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><e:Fault><e:Code><e:Value>e:Sender</e:Value><e:Subcode><e:Value>DivisionByZero</e:Value></e:Subcode></e:Code><e:Reason><e:Text xml:lang="en">cannot divide</e:Text></e:Reason><e:Role></e:Role></e:Fault></e:Body></e:Envelope>"#;
    let Err((status, problem)) = answer(&*policy, 500, fault12) else { panic!("a problem") };
    assert_eq!(status, 400, "Sender.DivisionByZero falls back to Sender");
    assert_eq!(problem["faultcode"], "e:Sender.DivisionByZero");
    assert_eq!(problem["faultstring"], "cannot divide");
    assert!(problem.get("faultactor").is_none() && problem.get("faultdetail").is_none());
}

#[test]
fn answers_502_for_answers_that_are_not_soap() {
    let policy = policy(SETTINGS);
    let cases = [
        (200, "<a>"),
        (200, "not xml at all"),
        (200, "<html><body>hello</body></html>"),
        (200, "<!DOCTYPE d [<!ENTITY x \"y\">]><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope>"),
        (200, "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"/>"),
        (503, "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><x/></s:Body></s:Envelope>"),
        (503, ""),
    ];
    for (status, body) in cases {
        let Err((answered, problem)) = answer(&*policy, status, body) else { panic!("a problem for {body}") };
        assert_eq!(answered, 502, "{body}");
        assert_eq!(problem["type"], "https://gantry.dev/problems/upstream-soap-invalid", "{body}");
    }
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let entry = RegisteredPolicy::of::<RestToSoap>();
    let base = "global_policies[0].rest_to_soap";
    let cases = [
        ("operation: Add", base.to_owned()),
        ("namespace: urn:calc\noperation: 'a:b'", format!("{base}.operation")),
        ("namespace: 'urn:a b'\noperation: Add", format!("{base}.namespace")),
        ("namespace: urn:c\noperation: Add\nsoap_version: 1.3", format!("{base}.soap_version")),
        ("namespace: urn:c\noperation: Add\naction: 'a\"b'", format!("{base}.action")),
        ("namespace: urn:c\noperation: Add\npath: soap", format!("{base}.path")),
        ("namespace: urn:c\noperation: Add\nfield_order: [a, '1b']", format!("{base}.field_order[1]")),
        ("namespace: urn:c\noperation: Add\nfault_statuses:\n  Client: 200", format!("{base}.fault_statuses.Client")),
        ("namespace: urn:c\noperation: Add\nmax_body_bytes: 0", format!("{base}.max_body_bytes")),
        ("namespace: urn:c\noperation: Add\nparameters: [header]", format!("{base}.parameters[0]")),
        ("namespace: urn:c\noperation: Add\nsurprise: 1", format!("{base}.surprise")),
    ];
    for (settings, path) in cases {
        let errors = build_policy_error(entry, settings);
        assert!(errors.0.iter().any(|error| error.path.to_string() == path), "{settings}: expected {path}: {errors}");
    }
}
