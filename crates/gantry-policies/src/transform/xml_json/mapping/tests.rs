use serde_json::json;

use super::*;

fn mapping() -> Mapping {
    Mapping {
        attribute_prefix: "@".into(),
        text_key: "#text".into(),
        always_array: HashSet::new(),
        typed_values: false,
        root_element: "root".into(),
    }
}

fn to_json(xml: &str, mapping: &Mapping) -> Value {
    xml_to_json(xml.as_bytes(), mapping).unwrap_or_else(|err| panic!("{xml}: {err}"))
}

#[test]
fn maps_attributes_text_repeated_elements_and_empty_ones() {
    let xml = r#"<?xml version="1.0"?>
<order id="7" status="open">
  <item sku="a-1">Pen</item>
  <item sku="b-2">Ink &amp; paper &#x263A;</item>
  <note/>
  <gift></gift>
  <total currency="EUR">12.50</total>
  <!-- ignored -->
  <remark><![CDATA[<b>as is</b>]]></remark>
</order>"#;
    assert_eq!(
        to_json(xml, &mapping()),
        json!({"order": {
            "@id": "7", "@status": "open",
            "item": [{"@sku": "a-1", "#text": "Pen"}, {"@sku": "b-2", "#text": "Ink & paper \u{263A}"}],
            "note": null, "gift": null,
            "total": {"@currency": "EUR", "#text": "12.50"},
            "remark": "<b>as is</b>"
        }})
    );
}

#[test]
fn keeps_namespace_prefixes_and_declarations() {
    let xml = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:default">
<soap:Body><m:Get xmlns:m="urn:m"><m:id>1</m:id></m:Get></soap:Body></soap:Envelope>"#;
    let value = to_json(xml, &mapping());
    assert_eq!(
        value,
        json!({"soap:Envelope": {
            "@xmlns:soap": "http://schemas.xmlsoap.org/soap/envelope/", "@xmlns": "urn:default",
            "soap:Body": {"m:Get": {"@xmlns:m": "urn:m", "m:id": "1"}}
        }})
    );
    let back = json_to_xml(&value, &mapping()).expect("writes");
    assert_eq!(to_json(&back, &mapping()), value, "round trip: {back}");
}

#[test]
fn joins_the_text_of_mixed_content() {
    let value = to_json("<p>Hello <b>big</b> world</p>", &mapping());
    assert_eq!(value, json!({"p": {"b": "big", "#text": "Hello  world"}}));
}

#[test]
fn makes_listed_elements_arrays_even_alone_and_types_values_when_asked() {
    let mut typed = mapping();
    typed.always_array = HashSet::from(["item".to_owned()]);
    typed.typed_values = true;
    let value =
        to_json("<cart paid=\"true\"><item>3</item><code>007</code><price>-1.5</price><x>+1</x></cart>", &typed);
    assert_eq!(value, json!({"cart": {"@paid": true, "item": [3], "code": "007", "price": -1.5, "x": "+1"}}));
}

#[test]
fn refuses_dtds_undeclared_entities_and_broken_documents() {
    let cases = [
        ("<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>", "document type"),
        ("<a>&nbsp;</a>", "not predefined"),
        ("<a><b></a>", ""),
        ("<a/><b/>", "more than one root"),
        ("text<a/>", "outside the root"),
        ("", "no element"),
        ("<a>", "ends inside"),
    ];
    for (xml, expected) in cases {
        let err = xml_to_json(xml.as_bytes(), &mapping()).expect_err(xml);
        assert!(err.contains(expected), "{xml}: {err}");
    }
    let deep = format!("{}{}", "<a>".repeat(MAX_DEPTH + 1), "</a>".repeat(MAX_DEPTH + 1));
    assert!(xml_to_json(deep.as_bytes(), &mapping()).expect_err("too deep").contains("nest"));
}

#[test]
fn writes_json_as_xml_with_the_same_mapping() {
    let value = json!({"order": {"@id": 7, "item": [{"@sku": "a", "#text": "Pen <blue>"}, "Ink"],
                                  "note": null, "paid": true, "matrix": [[1, 2]]}});
    let xml = json_to_xml(&value, &mapping()).expect("writes");
    assert_eq!(
        xml,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><order id=\"7\"><item sku=\"a\">Pen &lt;blue&gt;</item>\
         <item>Ink</item><matrix><matrix>1</matrix><matrix>2</matrix></matrix><note/><paid>true</paid></order>"
    );
}

#[test]
fn wraps_values_that_name_no_single_root() {
    let xml = json_to_xml(&json!({"a": 1, "b": 2}), &mapping()).expect("writes");
    assert!(xml.ends_with("<root><a>1</a><b>2</b></root>"), "{xml}");
    let xml = json_to_xml(&json!([1, 2]), &mapping()).expect("writes");
    assert!(xml.ends_with("<root><root>1</root><root>2</root></root>"), "{xml}");
    let xml = json_to_xml(&json!({"items": [1, 2]}), &mapping()).expect("writes");
    assert!(xml.ends_with("<root><items>1</items><items>2</items></root>"), "{xml}");
    let xml = json_to_xml(&json!("text"), &mapping()).expect("writes");
    assert!(xml.ends_with("<root>text</root>"), "{xml}");
}

#[test]
fn refuses_what_xml_cannot_carry() {
    for value in [json!({"bad name": 1}), json!({"1st": 1}), json!({"a": "\u{0}"}), json!({"a": {"@x": [1]}})] {
        assert!(json_to_xml(&value, &mapping()).is_err(), "{value}");
    }
}

#[test]
fn round_trips_arrays_of_one_with_always_array() {
    let mut listed = mapping();
    listed.always_array = HashSet::from(["item".to_owned()]);
    let value = json!({"cart": {"item": [{"@sku": "a", "#text": "Pen"}], "empty": null}});
    let xml = json_to_xml(&value, &listed).expect("writes");
    assert_eq!(to_json(&xml, &listed), value, "{xml}");
    assert_eq!(
        to_json(&xml, &mapping())["cart"]["item"],
        json!({"@sku": "a", "#text": "Pen"}),
        "without the list, one item is no array"
    );
}

#[test]
fn uses_configured_prefixes() {
    let mut custom = mapping();
    custom.attribute_prefix = "-".into();
    custom.text_key = "value".into();
    let value = to_json("<a id=\"1\">x</a>", &custom);
    assert_eq!(value, json!({"a": {"-id": "1", "value": "x"}}));
    assert_eq!(
        json_to_xml(&value, &custom).expect("writes"),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a id=\"1\">x</a>"
    );
}
