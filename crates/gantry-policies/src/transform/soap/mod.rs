//! What `rest_to_soap` and `soap_to_rest` share: SOAP 1.1 and 1.2 envelopes read and written,
//! faults, and the JSON made from the elements inside a Body.
//!
//! Envelopes are read with uppsala's namespace-aware parser (DTDs refused, so no entity can be
//! declared: no XXE, no billion laughs), because which element is the Envelope, the Body or a
//! Fault depends on namespace URIs, not on the prefixes a sender picked. The element inside the
//! Body is then converted by the same mapping `xml_to_json` uses, and its names are reduced to
//! local names (`simplify`), since prefixes are the sender's choice and REST clients should
//! not depend on them. [`wsdl`] reads WSDL 1.1 documents for `gantry import wsdl`.

pub mod wsdl;

use std::collections::{BTreeMap, HashSet};

use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value};
use uppsala::{Document, NodeId, Parser};

use super::xml_json::mapping::{self, Mapping};

/// The SOAP 1.1 envelope namespace.
pub const SOAP11_ENVELOPE: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The SOAP 1.2 envelope namespace.
pub const SOAP12_ENVELOPE: &str = "http://www.w3.org/2003/05/soap-envelope";

/// Deepest nesting read from an envelope; the JSON mapping reads no deeper either.
const MAX_DEPTH: u32 = mapping::MAX_DEPTH as u32 + 2;

/// A SOAP version: 1.1 (`text/xml` with a `SOAPAction` header) or 1.2 (`application/soap+xml`
/// with an `action` parameter). Written `"1.1"` or `"1.2"`; an unquoted YAML `1.2` is read too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SoapVersion {
    /// SOAP 1.1.
    #[default]
    V11,
    /// SOAP 1.2.
    V12,
}

impl SoapVersion {
    /// The envelope namespace of this version.
    pub fn envelope_namespace(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_ENVELOPE,
            SoapVersion::V12 => SOAP12_ENVELOPE,
        }
    }

    /// The version written in configurations.
    pub fn as_str(self) -> &'static str {
        match self {
            SoapVersion::V11 => "1.1",
            SoapVersion::V12 => "1.2",
        }
    }

    /// The media type of this version's messages.
    pub(crate) fn media_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml",
            SoapVersion::V12 => "application/soap+xml",
        }
    }

    /// The `Content-Type` of a message, with the action as SOAP 1.2 carries it (RFC 3902).
    pub(crate) fn content_type(self, action: Option<&str>) -> String {
        match (self, action) {
            (SoapVersion::V12, Some(action)) => format!("application/soap+xml; charset=utf-8; action=\"{action}\""),
            _ => format!("{}; charset=utf-8", self.media_type()),
        }
    }

    /// The fault code of a fault the sender caused, and of one the receiver did.
    pub(crate) fn fault_codes(self) -> (&'static str, &'static str) {
        match self {
            SoapVersion::V11 => ("Client", "Server"),
            SoapVersion::V12 => ("Sender", "Receiver"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SoapVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;
        impl Visitor<'_> for VersionVisitor {
            type Value = SoapVersion;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("\"1.1\" or \"1.2\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<SoapVersion, E> {
                match text {
                    "1.1" => Ok(SoapVersion::V11),
                    "1.2" => Ok(SoapVersion::V12),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, number: f64) -> Result<SoapVersion, E> {
                // YAML reads an unquoted `1.2` as a number.
                if (number - 1.1).abs() < 1e-9 {
                    Ok(SoapVersion::V11)
                } else if (number - 1.2).abs() < 1e-9 {
                    Ok(SoapVersion::V12)
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(number), &self))
                }
            }
        }
        deserializer.deserialize_any(VersionVisitor)
    }
}

impl schemars::JsonSchema for SoapVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SoapVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The SOAP version, \"1.1\" or \"1.2\".",
            "enum": ["1.1", "1.2", 1.1, 1.2]
        })
    }
}

/// Whether the elements inside an operation's element are in the operation's namespace
/// (`elementFormDefault="qualified"`, as spyne, WCF and most document/literal services write
/// them) or in none (`unqualified`, JAX-WS's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ElementForm {
    /// Child elements are in the operation's namespace.
    #[default]
    Qualified,
    /// Child elements are in no namespace.
    Unqualified,
}

/// How the JSON made from a Body's element is shaped.
#[derive(Clone, Debug, Default)]
pub(crate) struct JsonShape {
    /// Local names of elements made arrays even when they occur once.
    pub(crate) always_array: HashSet<String>,
    /// Whether texts written as JSON numbers or booleans become them.
    pub(crate) typed_values: bool,
}

/// The attribute prefix and text key of the SOAP policies' JSON (those of `xml_to_json`'s
/// defaults).
pub(crate) const ATTRIBUTE_PREFIX: &str = "@";
pub(crate) const TEXT_KEY: &str = "#text";

fn json_mapping(typed_values: bool) -> Mapping {
    Mapping {
        attribute_prefix: ATTRIBUTE_PREFIX.to_owned(),
        text_key: TEXT_KEY.to_owned(),
        always_array: HashSet::new(),
        typed_values,
        root_element: String::new(),
    }
}

/// A SOAP message read from bytes.
pub(crate) struct Envelope<'a> {
    document: Document<'a>,
    pub(crate) version: SoapVersion,
    /// The first element inside the Body, if it has one.
    first: Option<NodeId>,
}

/// A SOAP Fault, in either version's terms.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fault {
    /// The code as written: `soap:Client.Validation` (1.1), or the 1.2 `Value` (with the
    /// `Subcode` values, joined by `.`).
    pub(crate) code: String,
    /// The code's local names, prefixes removed: `Client.Validation`, `Sender.DivisionByZero`.
    pub(crate) code_name: String,
    /// `faultstring` (1.1) or the first `Reason/Text` (1.2).
    pub(crate) string: String,
    /// `faultactor` (1.1) or `Role` (1.2), when not empty.
    pub(crate) actor: Option<String>,
    /// `detail` (1.1) or `Detail` (1.2) as JSON, when present.
    pub(crate) detail: Option<Value>,
}

impl std::fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope").field("version", &self.version).field("operation", &self.operation()).finish()
    }
}

impl<'a> Envelope<'a> {
    /// Reads `body` as a SOAP 1.1 or 1.2 envelope.
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the document is not UTF-8".to_owned())?;
        let document = Parser::new()
            .with_forbid_dtd(true)
            .with_max_depth(MAX_DEPTH)
            .parse(text)
            .map_err(|err| format!("not well-formed XML: {err}"))?;
        let root = document.document_element().ok_or("the document has no element")?;
        let root_element = document.element(root).ok_or("the document has no element")?;
        let version = if root_element.matches_name_ns(SOAP11_ENVELOPE, "Envelope") {
            SoapVersion::V11
        } else if root_element.matches_name_ns(SOAP12_ENVELOPE, "Envelope") {
            SoapVersion::V12
        } else {
            return Err(format!(
                "the root element is `{}`, not a SOAP 1.1 or 1.2 Envelope",
                root_element.name.prefixed_name()
            ));
        };
        let namespace = version.envelope_namespace();
        let bodies = document.child_elements_by_name_ns(root, namespace, "Body");
        let body = match bodies.as_slice() {
            [body] => *body,
            [] => return Err("the Envelope has no Body".into()),
            _ => return Err("the Envelope has more than one Body".into()),
        };
        let first = document.children_iter(body).find(|child| document.element(*child).is_some());
        Ok(Self { document, version, first })
    }

    /// The namespace URI and local name of the element inside the Body.
    pub(crate) fn operation(&self) -> Option<(Option<&str>, &str)> {
        let element = self.document.element(self.first?)?;
        Some((element.name.namespace_uri.as_deref(), &element.name.local_name))
    }

    /// The Fault inside the Body, if the Body holds one.
    pub(crate) fn fault(&self, shape: &JsonShape) -> Option<Fault> {
        let fault = self.first?;
        let namespace = self.version.envelope_namespace();
        if !self.document.element(fault)?.matches_name_ns(namespace, "Fault") {
            return None;
        }
        let document = &self.document;
        let text = |id: Option<NodeId>| id.map(|id| document.text_content_deep(id).trim().to_owned());
        let child = |parent: NodeId, name: &str| -> Option<NodeId> {
            // SOAP 1.1 puts the fault's parts in no namespace; some senders qualify them.
            document.children_iter(parent).find(|id| {
                document.element(*id).is_some_and(|element| {
                    (element.name.local_name == name
                        && matches!(element.name.namespace_uri.as_deref(), None | Some("")))
                        || element.matches_name_ns(namespace, name)
                })
            })
        };
        let (code, code_name, string, actor, detail) = match self.version {
            SoapVersion::V11 => {
                let code = text(child(fault, "faultcode")).unwrap_or_default();
                let code_name = local_part(&code).to_owned();
                (
                    code,
                    code_name,
                    text(child(fault, "faultstring")),
                    text(child(fault, "faultactor")),
                    child(fault, "detail"),
                )
            }
            SoapVersion::V12 => {
                let mut codes = Vec::new();
                let mut level = child(fault, "Code");
                while let Some(code) = level {
                    if let Some(value) = text(child(code, "Value")) {
                        codes.push(value);
                    }
                    level = child(code, "Subcode");
                }
                let reason = child(fault, "Reason").and_then(|reason| child(reason, "Text"));
                let code_name = codes.iter().map(|code| local_part(code)).collect::<Vec<_>>().join(".");
                (codes.join("."), code_name, text(reason), text(child(fault, "Role")), child(fault, "Detail"))
            }
        };
        let detail = detail.and_then(|detail| self.children_json(detail, shape).ok());
        Some(Fault {
            code,
            code_name,
            string: string.unwrap_or_default(),
            actor: actor.filter(|actor| !actor.is_empty()),
            detail,
        })
    }

    /// The element inside the Body as JSON: `{"name": value}` with local names, or `None` when
    /// the Body is empty.
    pub(crate) fn operation_json(&self, shape: &JsonShape) -> Result<Option<(String, Value)>, String> {
        let Some(first) = self.first else { return Ok(None) };
        let value = element_json(&self.document, first, shape)?;
        let name = self.document.element(first).map(|element| element.name.local_name.to_string()).unwrap_or_default();
        Ok(Some((name, value)))
    }

    /// The child elements of `parent` as one JSON object (a fault's detail); text alone gives a
    /// string.
    fn children_json(&self, parent: NodeId, shape: &JsonShape) -> Result<Value, String> {
        let mut object = Map::new();
        for child in self.document.children_iter(parent) {
            let Some(element) = self.document.element(child) else { continue };
            let name = element.name.local_name.to_string();
            let value = element_json(&self.document, child, shape)?;
            insert_merging(&mut object, name, value);
        }
        if object.is_empty() {
            let text = self.document.text_content_deep(parent).trim().to_owned();
            return Ok(if text.is_empty() { Value::Null } else { Value::String(text) });
        }
        Ok(Value::Object(object))
    }
}

/// The JSON of one element: its source converted by the `xml_to_json` mapping, then
/// [`simplify`]d. Prefixes declared on ancestors do not matter there: the mapping keeps names
/// as written, and [`simplify`] drops the prefixes.
fn element_json(document: &Document<'_>, element: NodeId, shape: &JsonShape) -> Result<Value, String> {
    let source = document.node_source(element).ok_or("an element of the Body could not be read")?;
    let converted = mapping::xml_to_json(source.as_bytes(), &json_mapping(shape.typed_values))?;
    let simplified = simplify(converted, shape);
    match simplified {
        Value::Object(mut object) if object.len() == 1 => {
            let key = object.keys().next().cloned().unwrap_or_default();
            Ok(object.remove(&key).unwrap_or(Value::Null))
        }
        other => Ok(other),
    }
}

/// The local part of a qualified name: `Client` of `soap:Client`.
fn local_part(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, local)| local)
}

/// Reduces JSON made by the mapping from SOAP XML to what a REST client expects: element and
/// attribute names lose their prefixes, namespace declarations are dropped, an element with
/// `xsi:nil="true"` becomes `null`, an object left with only its text becomes that text, and
/// `always_array` names become arrays. Two names that differ only by prefix are merged into
/// one array.
pub(crate) fn simplify(value: Value, shape: &JsonShape) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(|item| simplify(item, shape)).collect()),
        Value::Object(object) => {
            // `xsi:nil="true"`, by whatever prefix the sender bound the XSI namespace to.
            let is_nil = object.iter().any(|(key, value)| {
                let is_true = matches!(value, Value::Bool(true)) || value.as_str() == Some("true");
                is_true && key.strip_prefix(ATTRIBUTE_PREFIX).is_some_and(|name| local_part(name) == "nil")
            });
            if is_nil {
                return Value::Null;
            }
            let mut simplified = Map::new();
            for (key, value) in object {
                let name = match key.strip_prefix(ATTRIBUTE_PREFIX) {
                    Some(attribute) if attribute == "xmlns" || attribute.starts_with("xmlns:") => continue,
                    Some(attribute) => format!("{ATTRIBUTE_PREFIX}{}", local_part(attribute)),
                    None if key == TEXT_KEY => key,
                    None => local_part(&key).to_owned(),
                };
                let mut value = simplify(value, shape);
                if shape.always_array.contains(&name) && !value.is_array() {
                    value = Value::Array(vec![value]);
                }
                insert_merging(&mut simplified, name, value);
            }
            if simplified.len() == 1 && simplified.contains_key(TEXT_KEY) {
                return simplified.remove(TEXT_KEY).unwrap_or(Value::Null);
            }
            if simplified.is_empty() {
                return Value::Null;
            }
            Value::Object(simplified)
        }
        scalar => scalar,
    }
}

fn insert_merging(object: &mut Map<String, Value>, key: String, value: Value) {
    match object.remove(&key) {
        None => {
            object.insert(key, value);
        }
        Some(Value::Array(mut items)) => {
            match value {
                Value::Array(more) => items.extend(more),
                one => items.push(one),
            }
            object.insert(key, Value::Array(items));
        }
        Some(earlier) => {
            let mut items = vec![earlier];
            match value {
                Value::Array(more) => items.extend(more),
                one => items.push(one),
            }
            object.insert(key, Value::Array(items));
        }
    }
}

/// Writes an element named `name` holding `value` (the `json_to_xml` mapping), with the
/// namespace declaration `xmlns` (`("xmlns", uri)` or `("xmlns:p", uri)`) and the object's
/// members in `order` first, then the others by name.
pub(crate) fn write_json_element(
    out: &mut String,
    name: &str,
    namespace_declaration: Option<(&str, &str)>,
    value: &Value,
    order: &[String],
) -> Result<(), String> {
    let mapping = json_mapping(false);
    let mut members: Vec<(&String, &Value)> = Vec::new();
    let mut attributes = Map::new();
    let mut text = None;
    match value {
        Value::Object(object) => {
            for key in order {
                if let Some(member) = object.get_key_value(key) {
                    members.push(member);
                }
            }
            for (key, member) in object {
                if key.starts_with(ATTRIBUTE_PREFIX) {
                    attributes.insert(key.clone(), member.clone());
                } else if key == TEXT_KEY {
                    text = Some(member.clone());
                } else if !order.contains(key) {
                    members.push((key, member));
                }
            }
        }
        Value::Null => {}
        Value::Array(_) => {
            return Err("a JSON array cannot be the content of an element: send an object".into());
        }
        scalar => text = Some(scalar.clone()),
    }
    if let Some((attribute, uri)) = namespace_declaration {
        attributes.insert(format!("{ATTRIBUTE_PREFIX}{attribute}"), Value::String(uri.to_owned()));
    }
    // The head (attributes and text) goes through the mapping as an element without children,
    // then its end tag is taken off to add the children in order.
    if let Some(text) = text {
        attributes.insert(TEXT_KEY.to_owned(), text);
    }
    let mut head = String::new();
    mapping::write_element(&mut head, name, &Value::Object(attributes), &mapping, 1)?;
    if members.is_empty() {
        out.push_str(&head);
        return Ok(());
    }
    match head.strip_suffix("/>") {
        Some(open) => {
            out.push_str(open);
            out.push('>');
        }
        None => {
            let end = format!("</{name}>");
            out.push_str(head.strip_suffix(&end).unwrap_or(&head));
        }
    }
    for (key, member) in members {
        mapping::write_element(out, key, member, &mapping, 2)?;
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
    Ok(())
}

/// A whole envelope of `version` with `body` (XML already written) inside its Body.
pub(crate) fn envelope(version: SoapVersion, body: &str) -> String {
    let namespace = version.envelope_namespace();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{namespace}\"><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

/// A Fault envelope of `version`: `code` is the local code (`Client`, `Sender`), `detail` JSON
/// written inside the detail element, when given.
pub(crate) fn fault_envelope(version: SoapVersion, code: &str, string: &str, detail: Option<&Value>) -> String {
    let mut detail_xml = String::new();
    if let Some(Value::Object(members)) = detail {
        let mapping = json_mapping(false);
        for (key, member) in members {
            if mapping::write_element(&mut detail_xml, key, member, &mapping, 2).is_err() {
                // A detail that cannot be XML (a key that is no XML name) is left out rather
                // than failing the fault itself.
                detail_xml.clear();
                break;
            }
        }
    }
    let string = quick_xml::escape::escape(string);
    let fault = match version {
        SoapVersion::V11 => {
            let detail = if detail_xml.is_empty() { String::new() } else { format!("<detail>{detail_xml}</detail>") };
            format!("<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{string}</faultstring>{detail}</soap:Fault>")
        }
        SoapVersion::V12 => {
            let detail =
                if detail_xml.is_empty() { String::new() } else { format!("<soap:Detail>{detail_xml}</soap:Detail>") };
            format!(
                "<soap:Fault><soap:Code><soap:Value>soap:{code}</soap:Value></soap:Code><soap:Reason><soap:Text xml:lang=\"en\">{string}</soap:Text></soap:Reason>{detail}</soap:Fault>"
            )
        }
    };
    envelope(version, &fault)
}

/// The HTTP status a SOAP fault is sent with: 500, except a SOAP 1.2 Sender fault, which the
/// SOAP 1.2 HTTP binding sends with 400 (SOAP 1.2 part 2, 7.5.2.2; WS-I Basic Profile R1126
/// has 500 for every SOAP 1.1 fault).
pub(crate) fn fault_status(version: SoapVersion, code: &str) -> http::StatusCode {
    match (version, code) {
        (SoapVersion::V12, "Sender") => http::StatusCode::BAD_REQUEST,
        _ => http::StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether `uri` is a usable namespace name: not empty, without characters that need escaping
/// in an attribute.
pub(crate) fn check_namespace(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("must not be empty".into());
    }
    if uri.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '<' | '>' | '&')) {
        return Err(format!("`{uri}` is not a namespace URI"));
    }
    Ok(())
}

/// The value of parameter `name` (case-insensitive) of a `Content-Type`, quotes removed.
pub(crate) fn media_type_parameter<'h>(content_type: &'h str, name: &str) -> Option<&'h str> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (key, value) = parameter.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().trim_matches('"'))
    })
}

/// Fault codes and their statuses, longest dotted prefix first when looked up.
pub(crate) fn status_for_fault(statuses: &BTreeMap<String, u16>, code_name: &str) -> Option<u16> {
    let mut candidate = code_name;
    loop {
        if let Some(status) = statuses.get(candidate) {
            return Some(*status);
        }
        candidate = candidate.rsplit_once('.')?.0;
    }
}

#[cfg(test)]
mod tests;
