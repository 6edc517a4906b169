//! The operations of `body_transform`: their settings, compiled form and how they change a
//! JSON document.

use std::collections::{BTreeMap, HashMap};

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::Exchange;
use http::HeaderMap;
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::json_path::JsonPath;

/// One change to a JSON body. Paths are JSON Pointers (`/customer/id`) or dotted paths
/// (`customer.id`, `items.0.sku`).
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Puts a value at a path where there is none; an existing value stays.
    Add(PutOp),
    /// Puts a value at a path, replacing any there.
    Set(PutOp),
    /// Removes the fields at these paths.
    Remove(Vec<String>),
    /// Renames a field, keeping it in the same object.
    Rename(RenameOp),
    /// Moves a value to another path.
    Move(MoveOp),
    /// Copies a value to another path.
    Copy(MoveOp),
    /// Masks or removes sensitive fields wherever they are.
    Filter(FilterOp),
    /// Replaces a field's value by the one a table maps it to.
    MapValues(MapValuesOp),
}

/// Settings of `add` and `set`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutOp {
    /// Where the value goes; missing objects on the way are created.
    pub path: String,
    /// The value: any JSON. In its strings, `${consumer_id}`, `${request_id}`, `${route_id}`,
    /// `${client_ip}`, `${path_param.NAME}` and (request bodies only) `${header.NAME}` are
    /// replaced by the request's facts; when one is missing the operation is skipped.
    pub value: Value,
}

/// Settings of `rename`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameOp {
    /// The field to rename.
    pub path: String,
    /// Its new name, in the same object.
    pub to: String,
}

/// Settings of `move` and `copy`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveOp {
    /// The value's path.
    pub from: String,
    /// Where it goes, replacing any value there; missing objects on the way are created.
    pub to: String,
}

/// Settings of `filter`. Give `names`, `paths`, `value_patterns` or several.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterOp {
    /// Field names matched at any depth, case-insensitively (`password`, `card_number`).
    #[serde(default)]
    pub names: Vec<String>,
    /// Paths of fields matched exactly.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Regular expressions matched against string values at any depth (card numbers): `mask`
    /// replaces the matching text, `remove` removes the field.
    #[serde(default)]
    pub value_patterns: Vec<String>,
    /// `mask` (the default) replaces a matched field's value by `mask`; `remove` deletes it.
    #[serde(default)]
    pub action: FilterAction,
    /// The text a masked value becomes.
    #[serde(default = "default_mask")]
    pub mask: String,
}

fn default_mask() -> String {
    "****".to_owned()
}

/// What `filter` does to a matched field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Replaces the value by the mask text.
    #[default]
    Mask,
    /// Deletes the field.
    Remove,
}

/// Settings of `map_values`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapValuesOp {
    /// The field whose value is mapped; when it holds an array, each item is mapped.
    pub path: String,
    /// Old value (a string, or a number, `true`, `false` or `null` written as text) to new
    /// value (any JSON).
    pub values: BTreeMap<String, Value>,
    /// The value for anything the table does not list; without it such values stay.
    #[serde(default)]
    pub default: Option<Value>,
}

/// What templates may refer to.
pub(crate) struct Facts<'a> {
    pub(crate) exchange: &'a Exchange,
    /// The request's headers; `None` for response bodies.
    pub(crate) headers: Option<&'a HeaderMap>,
}

impl Facts<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        match name {
            "consumer_id" => self.exchange.consumer().map(|consumer| consumer.id.to_string()),
            "request_id" => Some(self.exchange.request_id.to_string()),
            "route_id" => Some(self.exchange.route_id.to_string()),
            "client_ip" => Some(self.exchange.client_addr.ip().to_string()),
            _ => {
                if let Some(header) = name.strip_prefix("header.") {
                    let value = self.headers?.get(header)?;
                    value.to_str().ok().map(str::to_owned)
                } else {
                    let param = name.strip_prefix("path_param.")?;
                    self.exchange.path_param(param).map(str::to_owned)
                }
            }
        }
    }
}

/// The placeholders of a template string: `${name}`.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split("${").skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

fn check_placeholders(value: &Value, for_request: bool, path: &FieldPath, errors: &mut ConfigErrors) {
    match value {
        Value::String(text) => {
            for name in placeholders(text) {
                let header = name.strip_prefix("header.");
                let known = matches!(name, "consumer_id" | "request_id" | "route_id" | "client_ip")
                    || name.strip_prefix("path_param.").is_some_and(|param| !param.is_empty())
                    || header.is_some_and(|header| http::HeaderName::try_from(header).is_ok());
                if !known {
                    errors.push(
                        path.clone(),
                        format!(
                            "`${{{name}}}` is not a known fact: use consumer_id, request_id, route_id, \
                             client_ip, path_param.NAME or header.NAME"
                        ),
                    );
                } else if header.is_some() && !for_request {
                    errors
                        .push(path.clone(), format!("`${{{name}}}`: request headers are not known in response bodies"));
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| check_placeholders(item, for_request, path, errors)),
        Value::Object(map) => map.values().for_each(|item| check_placeholders(item, for_request, path, errors)),
        _ => {}
    }
}

/// `value` with its placeholders filled in, or `None` when a fact is missing.
fn render(value: &Value, facts: &Facts<'_>) -> Option<Value> {
    Some(match value {
        Value::String(text) if text.contains("${") => {
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some((name, tail)) = after.split_once('}') else {
                    out.push_str(&rest[start..]);
                    rest = "";
                    break;
                };
                out.push_str(&facts.lookup(name)?);
                rest = tail;
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| render(item, facts)).collect::<Option<_>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(key, item)| Some((key.clone(), render(item, facts)?))).collect::<Option<_>>()?,
        ),
        other => other.clone(),
    })
}

fn has_placeholders(value: &Value) -> bool {
    match value {
        Value::String(text) => placeholders(text).next().is_some(),
        Value::Array(items) => items.iter().any(has_placeholders),
        Value::Object(map) => map.values().any(has_placeholders),
        _ => false,
    }
}

/// An operation with its paths parsed and patterns compiled.
#[derive(Debug)]
enum Compiled {
    Put { path: JsonPath, value: Value, templated: bool, overwrite: bool },
    Remove(Vec<JsonPath>),
    Move { from: JsonPath, to: JsonPath, keep_source: bool },
    Filter(Filter),
    MapValues { path: JsonPath, table: HashMap<String, Value>, default: Option<Value> },
}

#[derive(Debug)]
struct Filter {
    /// Lower-cased.
    names: Vec<String>,
    paths: Vec<JsonPath>,
    patterns: Vec<Regex>,
    action: FilterAction,
    mask: Value,
}

/// The operations of one direction, in order.
#[derive(Debug, Default)]
pub(crate) struct Operations(Vec<Compiled>);

fn parse_path(text: &str, path: FieldPath, errors: &mut ConfigErrors) -> Option<JsonPath> {
    JsonPath::parse(text).map_err(|message| errors.push(path, format!("the path {message}"))).ok()
}

impl Operations {
    /// Compiles `operations` written at `path`; `for_request` allows request header facts.
    pub(crate) fn compile(
        operations: &[Operation],
        for_request: bool,
        path: &FieldPath,
        errors: &mut ConfigErrors,
    ) -> Self {
        let mut compiled = Vec::with_capacity(operations.len());
        for (index, operation) in operations.iter().enumerate() {
            let at = path.index(index);
            let made = match operation {
                Operation::Add(put) | Operation::Set(put) => {
                    let at = at.key(if matches!(operation, Operation::Add(_)) { "add" } else { "set" });
                    check_placeholders(&put.value, for_request, &at.key("value"), errors);
                    parse_path(&put.path, at.key("path"), errors).map(|target| Compiled::Put {
                        path: target,
                        templated: has_placeholders(&put.value),
                        value: put.value.clone(),
                        overwrite: matches!(operation, Operation::Set(_)),
                    })
                }
                Operation::Remove(paths) => {
                    let at = at.key("remove");
                    let parsed: Vec<_> = paths
                        .iter()
                        .enumerate()
                        .filter_map(|(index, text)| parse_path(text, at.index(index), errors))
                        .collect();
                    (parsed.len() == paths.len()).then_some(Compiled::Remove(parsed))
                }
                Operation::Rename(rename) => {
                    let at = at.key("rename");
                    if rename.to.is_empty() {
                        errors.push(at.key("to"), "must not be empty");
                    }
                    parse_path(&rename.path, at.key("path"), errors).and_then(|from| {
                        let to = from.sibling(&rename.to);
                        from.name().is_some().then_some(Compiled::Move { from, to, keep_source: false })
                    })
                }
                Operation::Move(moved) | Operation::Copy(moved) => {
                    let keep_source = matches!(operation, Operation::Copy(_));
                    let at = at.key(if keep_source { "copy" } else { "move" });
                    let from = parse_path(&moved.from, at.key("from"), errors);
                    let to = parse_path(&moved.to, at.key("to"), errors);
                    from.zip(to).map(|(from, to)| Compiled::Move { from, to, keep_source })
                }
                Operation::Filter(filter) => compile_filter(filter, &at.key("filter"), errors),
                Operation::MapValues(map) => {
                    let at = at.key("map_values");
                    if map.values.is_empty() {
                        errors.push(at.key("values"), "must list at least one value");
                    }
                    parse_path(&map.path, at.key("path"), errors).map(|target| Compiled::MapValues {
                        path: target,
                        table: map.values.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
                        default: map.default.clone(),
                    })
                }
            };
            compiled.extend(made);
        }
        Self(compiled)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies every operation in order. An operation whose path is missing (or whose template
    /// lacks a fact) changes nothing.
    pub(crate) fn apply(&self, document: &mut Value, facts: &Facts<'_>) {
        for operation in &self.0 {
            match operation {
                Compiled::Put { path, value, templated, overwrite } => {
                    let value = if *templated { render(value, facts) } else { Some(value.clone()) };
                    if let Some(value) = value {
                        path.insert(document, value, *overwrite);
                    }
                }
                Compiled::Remove(paths) => {
                    for path in paths {
                        path.remove(document);
                    }
                }
                Compiled::Move { from, to, keep_source } => {
                    let value = if *keep_source { from.get(document).cloned() } else { from.remove(document) };
                    if let Some(value) = value {
                        to.insert(document, value, true);
                    }
                }
                Compiled::Filter(filter) => filter.apply(document),
                Compiled::MapValues { path, table, default } => {
                    if let Some(target) = path.get_mut(document) {
                        match target {
                            Value::Array(items) => {
                                items.iter_mut().for_each(|item| map_value(item, table, default.as_ref()))
                            }
                            single => map_value(single, table, default.as_ref()),
                        }
                    }
                }
            }
        }
    }
}

fn compile_filter(filter: &FilterOp, at: &FieldPath, errors: &mut ConfigErrors) -> Option<Compiled> {
    if filter.names.is_empty() && filter.paths.is_empty() && filter.value_patterns.is_empty() {
        errors.push(at.clone(), "give `names`, `paths` or `value_patterns`");
    }
    let paths: Vec<_> = filter
        .paths
        .iter()
        .enumerate()
        .filter_map(|(index, text)| parse_path(text, at.key("paths").index(index), errors))
        .collect();
    let patterns: Vec<_> = filter
        .value_patterns
        .iter()
        .enumerate()
        .filter_map(|(index, pattern)| {
            Regex::new(pattern)
                .map_err(|err| {
                    errors.push(at.key("value_patterns").index(index), format!("invalid regular expression: {err}"))
                })
                .ok()
        })
        .collect();
    let complete = paths.len() == filter.paths.len() && patterns.len() == filter.value_patterns.len();
    complete.then(|| {
        Compiled::Filter(Filter {
            names: filter.names.iter().map(|name| name.to_lowercase()).collect(),
            paths,
            patterns,
            action: filter.action,
            mask: Value::String(filter.mask.clone()),
        })
    })
}

fn map_value(value: &mut Value, table: &HashMap<String, Value>, default: Option<&Value>) {
    let key = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_owned(),
        Value::Array(_) | Value::Object(_) => return,
    };
    if let Some(mapped) = table.get(&key).or(default) {
        *value = mapped.clone();
    }
}

impl Filter {
    fn apply(&self, document: &mut Value) {
        for path in &self.paths {
            match self.action {
                FilterAction::Mask => {
                    if let Some(value) = path.get_mut(document) {
                        *value = self.mask.clone();
                    }
                }
                FilterAction::Remove => {
                    path.remove(document);
                }
            }
        }
        if !self.names.is_empty() || !self.patterns.is_empty() {
            self.walk(document);
        }
    }

    /// Whether a string value holds sensitive text.
    fn matches_value(&self, value: &Value) -> bool {
        matches!(value, Value::String(text) if self.patterns.iter().any(|pattern| pattern.is_match(text)))
    }

    fn walk(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                let matched: Vec<String> = map
                    .iter()
                    .filter(|(key, item)| {
                        self.names.iter().any(|name| key.to_lowercase() == *name)
                            || (self.action == FilterAction::Remove && self.matches_value(item))
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in &matched {
                    match self.action {
                        FilterAction::Remove => {
                            map.remove(key);
                        }
                        FilterAction::Mask => {
                            map.insert(key.clone(), self.mask.clone());
                        }
                    }
                }
                for (key, item) in map.iter_mut() {
                    if !matched.contains(key) {
                        self.walk(item);
                    }
                }
            }
            Value::Array(items) => {
                if self.action == FilterAction::Remove {
                    items.retain(|item| !self.matches_value(item));
                }
                items.iter_mut().for_each(|item| self.walk(item));
            }
            Value::String(text) if self.action == FilterAction::Mask && !self.patterns.is_empty() => {
                let mask = self.mask.as_str().unwrap_or_default();
                for pattern in &self.patterns {
                    if let std::borrow::Cow::Owned(masked) = pattern.replace_all(text, regex::NoExpand(mask)) {
                        *text = masked;
                    }
                }
            }
            _ => {}
        }
    }
}
