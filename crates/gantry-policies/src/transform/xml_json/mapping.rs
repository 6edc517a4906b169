//! The mapping between XML documents and JSON values used by `xml_to_json` and `json_to_xml`
//! (documented in `xml_to_json.md`).
//!
//! XML is read with quick-xml's pull parser, without recursion, and refused when it has a DTD:
//! without one no entity can be declared, so neither entity expansion nor external entities
//! (XXE) can occur. JSON values are written with quick-xml's escaping.

use std::collections::HashSet;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused, in both directions: the values are dropped and written
/// recursively, and serde_json reads no deeper either.
pub(crate) const MAX_DEPTH: usize = 128;

/// How names and values are mapped.
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    /// Put before an attribute's name to make its key (`@`).
    pub(crate) attribute_prefix: String,
    /// The key of an element's text when it also has attributes or children (`#text`).
    pub(crate) text_key: String,
    /// Elements made arrays even when they occur once (XML to JSON).
    pub(crate) always_array: HashSet<String>,
    /// Whether texts that read as JSON numbers or booleans become them (XML to JSON).
    pub(crate) typed_values: bool,
    /// The root element when the JSON value does not name one (JSON to XML).
    pub(crate) root_element: String,
}

/// One open element while reading.
struct Frame {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<(String, Value)>,
    text: String,
}

/// Converts an XML document to JSON.
pub(crate) fn xml_to_json(body: &[u8], mapping: &Mapping) -> Result<Value, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_comments = true;
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader.read_event().map_err(|err| format!("{err} (at byte {})", reader.error_position()))?;
        match event {
            Event::Start(start) => {
                if stack.is_empty() && root.is_some() {
                    return Err("the document has more than one root element".into());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("elements nest more than {MAX_DEPTH} deep"));
                }
                stack.push(open(&start)?);
            }
            Event::Empty(start) => {
                let frame = open(&start)?;
                close(frame, &mut stack, &mut root, mapping)?;
            }
            Event::End(_) => {
                // quick-xml checks that end tags match their start tags.
                let frame = stack.pop().ok_or("an end tag without a start tag")?;
                close(frame, &mut stack, &mut root, mapping)?;
            }
            Event::Text(text) => {
                let text = text.xml_content(quick_xml::XmlVersion::Implicit1_0).map_err(|err| err.to_string())?;
                append_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|err| err.to_string())?;
                append_text(&mut stack, &text)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    let name = reference.decode().map_err(|err| err.to_string())?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_owned)
                };
                let resolved = resolved.ok_or("a reference to an entity that is not predefined is not accepted")?;
                append_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err("a document type declaration (<!DOCTYPE>) is not accepted".into()),
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof if !stack.is_empty() => return Err("the document ends inside an element".into()),
            Event::Eof => return root.ok_or_else(|| "the document has no element".to_owned()),
        }
    }
}

fn open(start: &BytesStart<'_>) -> Result<Frame, String> {
    let name = std::str::from_utf8(start.name().as_ref()).map_err(|err| err.to_string())?.to_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|err| err.to_string())?;
        let key = std::str::from_utf8(attribute.key.as_ref()).map_err(|err| err.to_string())?.to_owned();
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| format!("attribute `{key}`: {err}"))?;
        attributes.push((key, value.into_owned()));
    }
    Ok(Frame { name, attributes, children: Vec::new(), text: String::new() })
}

fn append_text(stack: &mut [Frame], text: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(frame) => {
            frame.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err("text outside the root element".into()),
    }
}

fn close(frame: Frame, stack: &mut [Frame], root: &mut Option<Value>, mapping: &Mapping) -> Result<(), String> {
    let name = frame.name.clone();
    let value = element_value(frame, mapping);
    match stack.last_mut() {
        Some(parent) => parent.children.push((name, value)),
        None => {
            if root.is_some() {
                return Err("the document has more than one root element".into());
            }
            let value = if mapping.always_array.contains(&name) { Value::Array(vec![value]) } else { value };
            *root = Some(Value::Object(Map::from_iter([(name, value)])));
        }
    }
    Ok(())
}

/// The JSON of a closed element: its text alone (or `null` when empty) when it has no
/// attributes and no children, else an object of attributes, children and text.
fn element_value(frame: Frame, mapping: &Mapping) -> Value {
    if frame.attributes.is_empty() && frame.children.is_empty() {
        return if frame.text.is_empty() { Value::Null } else { scalar(frame.text, mapping) };
    }
    let mut object = Map::new();
    for (key, value) in frame.attributes {
        object.insert(format!("{}{key}", mapping.attribute_prefix), scalar(value, mapping));
    }
    // Children grouped by name: a name seen twice, or listed in `always_array`, is an array.
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<Value>> = std::collections::HashMap::new();
    for (name, value) in frame.children {
        let group = groups.entry(name.clone()).or_default();
        if group.is_empty() {
            order.push(name);
        }
        group.push(value);
    }
    for name in order {
        let mut values = groups.remove(&name).unwrap_or_default();
        let value = if values.len() == 1 && !mapping.always_array.contains(&name) {
            values.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        object.insert(name, value);
    }
    // Mixed content: the text pieces between children, joined, without the indentation.
    let text = frame.text.trim();
    if !text.is_empty() {
        object.insert(mapping.text_key.clone(), scalar(text.to_owned(), mapping));
    }
    Value::Object(object)
}

/// A text as JSON: a string, or with `typed_values` a number or boolean when it is written
/// exactly as JSON writes one (`12`, `-1.5`, `true`; not `012` or `+1`).
fn scalar(text: String, mapping: &Mapping) -> Value {
    if mapping.typed_values {
        match text.as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {
                if let Ok(number) = text.parse::<Number>() {
                    if number.to_string() == text {
                        return Value::Number(number);
                    }
                }
            }
        }
    }
    Value::String(text)
}

/// Converts a JSON value to an XML document, with an XML declaration.
pub(crate) fn json_to_xml(value: &Value, mapping: &Mapping) -> Result<String, String> {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    match value {
        Value::Object(object) if object.len() == 1 => {
            let (name, inner) = object.iter().next().ok_or("an empty object")?;
            let names_the_root = !name.starts_with(&mapping.attribute_prefix)
                && *name != mapping.text_key
                && !matches!(inner, Value::Array(_));
            if names_the_root {
                write_element(&mut out, name, inner, mapping, 1)?;
            } else {
                write_element(&mut out, &mapping.root_element, value, mapping, 1)?;
            }
        }
        // Items of a top-level array would each be a root: they go inside one.
        Value::Array(_) => {
            out.push('<');
            out.push_str(&mapping.root_element);
            out.push('>');
            write_element(&mut out, &mapping.root_element, value, mapping, 2)?;
            push_end(&mut out, &mapping.root_element);
        }
        _ => write_element(&mut out, &mapping.root_element, value, mapping, 1)?,
    }
    Ok(out)
}

pub(crate) fn write_element(
    out: &mut String,
    name: &str,
    value: &Value,
    mapping: &Mapping,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("the value nests more than {MAX_DEPTH} deep"));
    }
    check_name(name)?;
    match value {
        Value::Array(items) => {
            // A nested array becomes elements of the same name inside one of that name.
            for item in items {
                if let Value::Array(_) = item {
                    out.push('<');
                    out.push_str(name);
                    out.push('>');
                    write_element(out, name, item, mapping, depth + 1)?;
                    push_end(out, name);
                } else {
                    write_element(out, name, item, mapping, depth + 1)?;
                }
            }
        }
        Value::Object(object) => {
            out.push('<');
            out.push_str(name);
            let mut text: Option<String> = None;
            let mut children = Vec::new();
            for (key, item) in object {
                if let Some(attribute) =
                    key.strip_prefix(&mapping.attribute_prefix).filter(|_| !mapping.attribute_prefix.is_empty())
                {
                    check_name(attribute)?;
                    let value = scalar_text(item)
                        .ok_or_else(|| format!("attribute `{key}` is not a string, number or boolean"))?;
                    out.push(' ');
                    out.push_str(attribute);
                    out.push_str("=\"");
                    push_escaped(out, &value)?;
                    out.push('"');
                } else if *key == mapping.text_key {
                    text =
                        Some(scalar_text(item).ok_or_else(|| format!("`{key}` is not a string, number or boolean"))?);
                } else {
                    children.push((key, item));
                }
            }
            if text.is_none() && children.is_empty() {
                out.push_str("/>");
                return Ok(());
            }
            out.push('>');
            if let Some(text) = text {
                push_escaped(out, &text)?;
            }
            for (key, item) in children {
                write_element(out, key, item, mapping, depth + 1)?;
            }
            push_end(out, name);
        }
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        scalar => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            push_escaped(out, &scalar_text(scalar).unwrap_or_default())?;
            push_end(out, name);
        }
    }
    Ok(())
}

fn push_end(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Appends `text` escaped; characters XML 1.0 cannot carry (most control characters) are
/// refused rather than written into a document no parser would read.
fn push_escaped(out: &mut String, text: &str) -> Result<(), String> {
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}');
    if let Some(bad) = text.chars().find(|c| !allowed(*c)) {
        return Err(format!("the character U+{:04X} cannot be written in XML", u32::from(bad)));
    }
    out.push_str(&quick_xml::escape::escape(text));
    Ok(())
}

/// Checks an element or attribute name against XML's `Name` (ASCII punctuation and digits not
/// first; letters, `_`, `:` and any non-ASCII character anywhere).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let starts_well = name.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':' || !c.is_ascii());
    let continues_well =
        name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.') || !c.is_ascii());
    if starts_well && continues_well {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid XML name"))
    }
}

#[cfg(test)]
mod tests;
