use std::collections::BTreeMap;

use serde_json::json;

use super::*;

#[test]
fn reads_either_version_by_namespace_not_prefix() {
    let soap11 = r#"<x:Envelope xmlns:x="http://schemas.xmlsoap.org/soap/envelope/"><x:Header/><x:Body> <m:Get xmlns:m="urn:m"/></x:Body></x:Envelope>"#;
    let envelope = Envelope::parse(soap11.as_bytes()).expect("SOAP 1.1");
    assert_eq!(envelope.version, SoapVersion::V11);
    assert_eq!(envelope.operation(), Some((Some("urn:m"), "Get")));
    let soap12 = r#"<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope"><Body/></Envelope>"#;
    let envelope = Envelope::parse(soap12.as_bytes()).expect("SOAP 1.2");
    assert_eq!(envelope.version, SoapVersion::V12);
    assert_eq!(envelope.operation(), None);
    let wrong = r#"<s:Envelope xmlns:s="urn:not-soap"><s:Body/></s:Envelope>"#;
    assert!(Envelope::parse(wrong.as_bytes()).expect_err("not SOAP").contains("not a SOAP 1.1 or 1.2 Envelope"));
    let two = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/><s:Body/></s:Envelope>"#;
    assert!(Envelope::parse(two.as_bytes()).is_err());
    assert!(Envelope::parse(b"\xff\xfe<a/>").is_err());
}

#[test]
fn refuses_envelopes_nested_deeper_than_the_mapping_reads() {
    let deep = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>{}{}</s:Body></s:Envelope>"#,
        "<a>".repeat(200),
        "</a>".repeat(200)
    );
    assert!(Envelope::parse(deep.as_bytes()).is_err());
}

#[test]
fn simplifies_names_namespaces_nils_and_texts() {
    let shape = JsonShape { always_array: ["item".to_owned()].into(), typed_values: false };
    let converted = json!({"t:r": {"@xmlns:t": "urn:t", "@t:id": "1", "t:v": {"@xmlns": "urn:x", "#text": "a"},
        "u:v": "b", "t:n": {"@i:nil": "true"}, "t:item": "only"}});
    assert_eq!(simplify(converted, &shape), json!({"r": {"@id": "1", "v": ["a", "b"], "n": null, "item": ["only"]}}));
}

#[test]
fn writes_json_members_in_the_order_given_then_by_name() {
    let mut out = String::new();
    let value = json!({"c": 3, "a": [1, 2], "b": {"@k": "v", "#text": "t"}, "@id": 7});
    write_json_element(&mut out, "Op", Some(("xmlns", "urn:o")), &value, &["c".to_owned()]).expect("written");
    assert_eq!(out, r#"<Op id="7" xmlns="urn:o"><c>3</c><a>1</a><a>2</a><b k="v">t</b></Op>"#);
    let mut out = String::new();
    write_json_element(&mut out, "Op", None, &json!("a<b"), &[]).expect("written");
    assert_eq!(out, "<Op>a&lt;b</Op>");
    assert!(write_json_element(&mut String::new(), "Op", None, &json!({"bad key": 1}), &[]).is_err());
}

#[test]
fn looks_fault_statuses_up_by_the_longest_dotted_prefix() {
    let statuses: BTreeMap<String, u16> = [("Client".to_owned(), 400), ("Client.Auth".to_owned(), 401)].into();
    assert_eq!(status_for_fault(&statuses, "Client.Auth.Expired"), Some(401));
    assert_eq!(status_for_fault(&statuses, "Client.Other"), Some(400));
    assert_eq!(status_for_fault(&statuses, "Server"), None);
}

#[test]
fn writes_faults_both_versions_read_back() {
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let (client, _) = version.fault_codes();
        let written = fault_envelope(version, client, "bad <input>", Some(&json!({"field": "a"})));
        let envelope = Envelope::parse(written.as_bytes()).expect("an envelope");
        let fault = envelope.fault(&JsonShape::default()).expect("a fault");
        assert_eq!((fault.code_name.as_str(), fault.string.as_str()), (client, "bad <input>"));
        assert_eq!(fault.detail, Some(json!({"field": "a"})));
    }
    assert_eq!(fault_status(SoapVersion::V12, "Sender"), http::StatusCode::BAD_REQUEST);
    assert_eq!(fault_status(SoapVersion::V11, "Client"), http::StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn reads_the_action_parameter_of_a_media_type() {
    let content_type = r#"application/soap+xml; charset=utf-8; Action="urn:a#b""#;
    assert_eq!(media_type_parameter(content_type, "action"), Some("urn:a#b"));
    assert_eq!(media_type_parameter("text/xml", "action"), None);
}
