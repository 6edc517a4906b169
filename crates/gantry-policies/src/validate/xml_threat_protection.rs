#![doc = include_str!("xml_threat_protection.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::StatusCode;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{body_limit, oversized, problem_with, request_body, require_positive, Exceeded, MediaTypes};

/// Settings of `xml_threat_protection`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest XML body accepted, in bytes; a larger one is answered with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Deepest nesting of elements (the root element is 1 deep).
    #[serde(default = "default_max_depth")]
    pub max_depth: u64,
    /// Most elements in the whole document.
    #[serde(default = "default_max_elements")]
    pub max_elements: u64,
    /// Most attributes on one element (namespace declarations included).
    #[serde(default = "default_max_attributes_per_element")]
    pub max_attributes_per_element: u64,
    /// Longest attribute value, in bytes as written.
    #[serde(default = "default_max_attribute_value_bytes")]
    pub max_attribute_value_bytes: u64,
    /// Longest run of text (character data, CDATA sections and references) between two tags,
    /// in bytes as written.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: u64,
    /// Longest element or attribute name, prefix included, in bytes.
    #[serde(default = "default_max_name_bytes")]
    pub max_name_bytes: u64,
    /// Request media types checked (`type/subtype`, or `type/*+suffix` for a structured-syntax
    /// suffix); parameters such as `charset` are ignored. Other requests pass unchecked.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_depth() -> u64 {
    32
}

fn default_max_elements() -> u64 {
    10_000
}

fn default_max_attributes_per_element() -> u64 {
    64
}

fn default_max_attribute_value_bytes() -> u64 {
    4096
}

fn default_max_text_bytes() -> u64 {
    64 * 1024
}

fn default_max_name_bytes() -> u64 {
    256
}

fn default_content_types() -> Vec<String> {
    vec!["application/xml".into(), "text/xml".into(), "application/*+xml".into()]
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        require_positive(self.max_body_bytes, path.key("max_body_bytes"), errors);
        require_positive(self.max_depth, path.key("max_depth"), errors);
        require_positive(self.max_elements, path.key("max_elements"), errors);
        require_positive(self.max_attribute_value_bytes, path.key("max_attribute_value_bytes"), errors);
        require_positive(self.max_text_bytes, path.key("max_text_bytes"), errors);
        require_positive(self.max_name_bytes, path.key("max_name_bytes"), errors);
        if self.content_types.is_empty() {
            errors.push(path.key("content_types"), "must list at least one media type");
        }
    }
}

/// Factory of the `xml_threat_protection` policy.
#[derive(Debug)]
pub struct XmlThreatProtection;

impl PolicyFactory for XmlThreatProtection {
    const NAME: &'static str = "xml_threat_protection";
    const STAGE: Stage = Stage::Validate;
    const DOCS: &'static str = include_str!("xml_threat_protection.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let content_types = MediaTypes::parse(&config.content_types, &path.key("content_types"), &mut errors);
        let limits = XmlLimits {
            max_depth: config.max_depth,
            max_elements: config.max_elements,
            max_attributes_per_element: config.max_attributes_per_element,
            max_attribute_value_bytes: config.max_attribute_value_bytes,
            max_text_bytes: config.max_text_bytes,
            max_name_bytes: config.max_name_bytes,
        };
        errors.into_result(Arc::new(CompiledXmlThreatProtection {
            max_body_bytes: config.max_body_bytes,
            limits,
            content_types,
        }) as Arc<dyn Policy>)
    }
}

/// The structural limits an XML document is read against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct XmlLimits {
    pub(crate) max_depth: u64,
    pub(crate) max_elements: u64,
    pub(crate) max_attributes_per_element: u64,
    pub(crate) max_attribute_value_bytes: u64,
    pub(crate) max_text_bytes: u64,
    pub(crate) max_name_bytes: u64,
}

/// Runs per request with an XML body: one pull-parser pass over the buffered bytes, no tree.
struct CompiledXmlThreatProtection {
    max_body_bytes: u64,
    limits: XmlLimits,
    content_types: MediaTypes,
}

impl Policy for CompiledXmlThreatProtection {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        body_limit(request, self.max_body_bytes).filter(|_| self.content_types.matches(&request.headers))
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if !self.content_types.matches(&request.headers) {
            return Hook::Done(Flow::Continue);
        }
        let body = request_body(exchange);
        if let Some(exceeded) = oversized(request, body, self.max_body_bytes) {
            return exceeded.response("xml-threat", "XML limit exceeded").into();
        }
        let Some(body) = body else { return Hook::Done(Flow::Continue) };
        match scan_xml(body, &self.limits) {
            Ok(()) => Hook::Done(Flow::Continue),
            Err(XmlScanError::Exceeded(exceeded)) => {
                tracing::debug!(limit = exceeded.limit, "XML body refused");
                exceeded.response("xml-threat", "XML limit exceeded").into()
            }
            Err(XmlScanError::Refused(reason)) => {
                tracing::debug!(reason, "XML body refused");
                problem_with(StatusCode::BAD_REQUEST, "xml-threat", "XML refused", reason, serde_json::Map::new())
                    .into()
            }
            Err(XmlScanError::Malformed(reason)) => problem_with(
                StatusCode::BAD_REQUEST,
                "invalid-xml",
                "Invalid XML",
                &format!("the request body is not well-formed XML: {reason}"),
                serde_json::Map::new(),
            )
            .into(),
        }
    }
}

/// Why an XML body was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XmlScanError {
    /// It went past a limit.
    Exceeded(Exceeded),
    /// It has a DTD or an entity reference, which this policy never accepts.
    Refused(&'static str),
    /// It is not well-formed.
    Malformed(String),
}

/// The entities XML defines without a DTD (XML 1.0 §4.6).
const PREDEFINED_ENTITIES: [&[u8]; 5] = [b"lt", b"gt", b"amp", b"apos", b"quot"];

const DTD_REFUSED: &str = "a document type declaration (<!DOCTYPE>) is not accepted";
const ENTITY_REFUSED: &str = "a reference to an entity that is not predefined is not accepted";

/// Checks `body` against `limits` in one pass of a pull parser. A DTD is refused outright:
/// without one no entity can be declared, so entity expansion (billion laughs) and external
/// entities (XXE) cannot occur. An empty body passes.
pub(crate) fn scan_xml(body: &[u8], limits: &XmlLimits) -> Result<(), XmlScanError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_comments = true;
    let mut depth = 0u64;
    let mut elements = 0u64;
    let mut text_bytes = 0u64;
    let mut roots = 0u32;
    loop {
        let event = reader
            .read_event()
            .map_err(|err| XmlScanError::Malformed(format!("{err} (at byte {})", reader.error_position())))?;
        match event {
            Event::Start(_) | Event::Empty(_) if depth == 0 && roots > 0 => {
                return Err(XmlScanError::Malformed("the document has more than one root element".into()));
            }
            Event::Start(start) => {
                text_bytes = 0;
                depth += 1;
                roots += u32::from(depth == 1);
                check_element(&start, depth, &mut elements, limits)?;
            }
            Event::Empty(start) => {
                text_bytes = 0;
                roots += u32::from(depth == 0);
                check_element(&start, depth + 1, &mut elements, limits)?;
            }
            Event::End(_) => {
                text_bytes = 0;
                depth = depth.saturating_sub(1);
            }
            Event::Text(text) if depth == 0 && !text.iter().all(u8::is_ascii_whitespace) => {
                return Err(XmlScanError::Malformed("text outside the root element".into()));
            }
            Event::Text(text) => add_text(&mut text_bytes, text.len(), limits)?,
            Event::CData(data) => add_text(&mut text_bytes, data.len(), limits)?,
            Event::GeneralRef(reference) => {
                if !reference.is_char_ref() && !PREDEFINED_ENTITIES.contains(&reference.as_ref()) {
                    return Err(XmlScanError::Refused(ENTITY_REFUSED));
                }
                // As written: the name and its `&` and `;`.
                add_text(&mut text_bytes, reference.len() + 2, limits)?;
            }
            Event::DocType(_) => return Err(XmlScanError::Refused(DTD_REFUSED)),
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => text_bytes = 0,
            Event::Eof if depth > 0 => {
                return Err(XmlScanError::Malformed("the document ends inside an element".into()));
            }
            Event::Eof if roots == 0 => return Err(XmlScanError::Malformed("the document has no element".into())),
            Event::Eof => return Ok(()),
        }
    }
}

fn check_element(
    start: &BytesStart<'_>,
    depth: u64,
    elements: &mut u64,
    limits: &XmlLimits,
) -> Result<(), XmlScanError> {
    if depth > limits.max_depth {
        let allowed = limits.max_depth;
        return Err(exceeded("max_depth", allowed, format!("elements nest more than {allowed} deep")));
    }
    *elements += 1;
    if *elements > limits.max_elements {
        let allowed = limits.max_elements;
        return Err(exceeded("max_elements", allowed, format!("the document has more than {allowed} elements")));
    }
    check_name(start.name().as_ref(), limits)?;
    let mut attributes = 0u64;
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|err| XmlScanError::Malformed(err.to_string()))?;
        attributes += 1;
        if attributes > limits.max_attributes_per_element {
            let allowed = limits.max_attributes_per_element;
            return Err(exceeded(
                "max_attributes_per_element",
                allowed,
                format!("an element has more than {allowed} attributes"),
            ));
        }
        check_name(attribute.key.as_ref(), limits)?;
        if attribute.value.len() as u64 > limits.max_attribute_value_bytes {
            let allowed = limits.max_attribute_value_bytes;
            return Err(exceeded(
                "max_attribute_value_bytes",
                allowed,
                format!("an attribute value is longer than {allowed} bytes"),
            ));
        }
        if has_undeclared_entity(&attribute.value) {
            return Err(XmlScanError::Refused(ENTITY_REFUSED));
        }
    }
    Ok(())
}

fn check_name(name: &[u8], limits: &XmlLimits) -> Result<(), XmlScanError> {
    if name.len() as u64 > limits.max_name_bytes {
        let allowed = limits.max_name_bytes;
        return Err(exceeded("max_name_bytes", allowed, format!("a name is longer than {allowed} bytes")));
    }
    Ok(())
}

fn add_text(text_bytes: &mut u64, more: usize, limits: &XmlLimits) -> Result<(), XmlScanError> {
    *text_bytes += more as u64;
    if *text_bytes > limits.max_text_bytes {
        let allowed = limits.max_text_bytes;
        return Err(exceeded("max_text_bytes", allowed, format!("a text is longer than {allowed} bytes")));
    }
    Ok(())
}

fn exceeded(limit: &'static str, allowed: u64, detail: String) -> XmlScanError {
    XmlScanError::Exceeded(Exceeded { limit, allowed, detail })
}

/// Whether an attribute value as written refers to an entity other than the predefined ones
/// and character references.
fn has_undeclared_entity(value: &[u8]) -> bool {
    value.split(|&byte| byte == b'&').skip(1).any(|after| {
        let name = after.split(|&byte| byte == b';').next().unwrap_or_default();
        !name.starts_with(b"#") && !PREDEFINED_ENTITIES.contains(&name)
    })
}

#[cfg(test)]
mod tests;
