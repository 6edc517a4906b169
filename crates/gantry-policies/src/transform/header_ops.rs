//! Header operations shared by `request_headers` and `response_headers`: their settings, the
//! checks on them and the compiled form applied to a message's headers.
//!
//! Runs per request: names and values are parsed once at build time, so applying the
//! operations only clones pre-built `HeaderName`s and `HeaderValue`s (reference counts, no
//! parsing). The parsing helpers are shared with the other policies that take header settings.

use std::collections::BTreeMap;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::Validate;
use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `request_headers` and `response_headers`. Header names are case-insensitive;
/// values are literal text. Operations apply in this order: `rename`, `remove`, `set`, `add`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    /// Headers to rename, old name to new name. Applied first. Every value of the old header
    /// moves to the new name and replaces any values the new name had; a missing old header
    /// changes nothing.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Names of headers to remove, with all their values. Applied after `rename`.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set, name to value, replacing any values already present. Applied after
    /// `remove`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to add, name to value, kept beside any values already present (a header with
    /// several values). Applied last.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

// Every check needs the parsed names and values, so `HeaderOps::build` makes them all.
impl Validate for HeaderOpsConfig {}

/// Header operations with names and values parsed, in the order they are applied.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderOps {
    rename: Vec<(HeaderName, HeaderName)>,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Parses `config` written at `path`, or gives every problem found.
    pub(crate) fn build(config: &HeaderOpsConfig, path: &FieldPath) -> Result<Self, ConfigErrors> {
        ConfigErrors::collect(|errors| Self::compile(config, path, errors))
    }

    /// Parses `config`, adding each problem to `errors`; the result is complete only when
    /// nothing was added.
    fn compile(config: &HeaderOpsConfig, path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut ops = Self::default();
        if config.rename.is_empty() && config.remove.is_empty() && config.set.is_empty() && config.add.is_empty() {
            errors.push(path.clone(), "give at least one of `rename`, `remove`, `set` or `add`");
            return ops;
        }

        let at = path.key("rename");
        for (from, to) in &config.rename {
            let field = at.key(from);
            let (Some(from_name), Some(to_name)) =
                (parse_changeable_name(from, &field, errors), parse_changeable_name(to, &field, errors))
            else {
                continue;
            };
            if from_name == to_name {
                errors.push(field, format!("`{from}` is renamed to itself"));
                continue;
            }
            if ops.rename.iter().any(|(earlier_from, _)| *earlier_from == from_name) {
                errors.push(field, format!("`{from}` is renamed twice (names are case-insensitive)"));
                continue;
            }
            if let Some((earlier, _)) = ops.rename.iter().find(|(_, earlier_to)| *earlier_to == to_name) {
                errors.push(field, format!("`{earlier}` is already renamed to `{to}`"));
                continue;
            }
            ops.rename.push((from_name, to_name));
        }
        // A chain (`a` to `b`, `b` to `c`) would depend on the order renames run in.
        for (from, to) in &config.rename {
            let Ok(to_name) = HeaderName::from_bytes(to.as_bytes()) else {
                continue;
            };
            if ops.rename.iter().any(|(source, _)| *source == to_name) {
                errors.push(
                    at.key(from),
                    format!("`{to}` is itself renamed: rename each header once, straight to its final name"),
                );
            }
        }

        let at = path.key("remove");
        for (index, name) in config.remove.iter().enumerate() {
            if let Some(name) = parse_changeable_name(name, &at.index(index), errors) {
                ops.remove.push(name);
            }
        }
        ops.set = parse_header_map(&config.set, &path.key("set"), errors);
        ops.add = parse_header_map(&config.add, &path.key("add"), errors);
        ops
    }

    /// Applies the operations to `headers`, in documented order.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (from, to) in &self.rename {
            let Entry::Occupied(entry) = headers.entry(from) else {
                continue;
            };
            // Allocates only when the header is present; a header can carry several values.
            let values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
            headers.remove(to);
            for value in values {
                headers.append(to.clone(), value);
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Headers that carry message framing or connection handling. The data plane owns them:
/// changing them from a policy would corrupt the message or the connection.
const MANAGED_HEADERS: [&str; 8] =
    ["connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Parses a header name, adding a problem at `path` when it is not a valid name.
pub(crate) fn parse_header_name(name: &str, path: &FieldPath, errors: &mut ConfigErrors) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(parsed) => Some(parsed),
        Err(_) => {
            errors.push(
                path.clone(),
                format!("`{name}` is not a valid header name: use letters, digits and ``!#$%&'*+-.^_`|~``"),
            );
            None
        }
    }
}

/// Parses a header name a policy may change: valid, and not one of the [`MANAGED_HEADERS`].
pub(crate) fn parse_changeable_name(name: &str, path: &FieldPath, errors: &mut ConfigErrors) -> Option<HeaderName> {
    let parsed = parse_header_name(name, path, errors)?;
    if MANAGED_HEADERS.contains(&parsed.as_str()) {
        errors.push(
            path.clone(),
            format!(
                "`{name}` is managed by the gateway (message framing and connection handling) and cannot be changed"
            ),
        );
        return None;
    }
    Some(parsed)
}

/// Parses a header value, adding a problem at `path` when it holds characters a header cannot.
pub(crate) fn parse_header_value(value: &str, path: &FieldPath, errors: &mut ConfigErrors) -> Option<HeaderValue> {
    // `HeaderValue` accepts bytes above 127 (obs-text), which RFC 9110 §5.5 says senders
    // must not generate and which clients decode inconsistently.
    match HeaderValue::from_str(value).ok().filter(|_| value.is_ascii()) {
        Some(parsed) => Some(parsed),
        None => {
            errors.push(path.clone(), "a header value may hold only visible ASCII characters, spaces and tabs");
            None
        }
    }
}

/// Parses a `name: value` map of changeable headers; two names differing only in case are
/// rejected, since one would silently win.
pub(crate) fn parse_header_map(
    map: &BTreeMap<String, String>,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut parsed: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(map.len());
    for (name, value) in map {
        let field = path.key(name);
        let header_name = parse_changeable_name(name, &field, errors);
        let header_value = parse_header_value(value, &field, errors);
        let (Some(header_name), Some(header_value)) = (header_name, header_value) else {
            continue;
        };
        if parsed.iter().any(|(earlier, _)| *earlier == header_name) {
            errors.push(field, format!("`{name}` is given twice (header names are case-insensitive)"));
            continue;
        }
        parsed.push((header_name, header_value));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> HeaderOpsConfig {
        let value: serde_json::Value = gantry_config::load_str(&format!("global_policies:\n  - p: {yaml}\n"))
            .expect("valid yaml")
            .global_policies
            .remove(0)
            .config;
        serde_json::from_value(value).expect("valid settings")
    }

    fn errors_of(yaml: &str) -> Vec<String> {
        let path = FieldPath::root().key("p");
        match HeaderOps::build(&config(yaml), &path) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name).iter().map(|value| value.to_str().expect("ascii")).collect()
    }

    #[test]
    fn applies_rename_then_remove_then_set_then_add() {
        let ops = HeaderOps::build(
            &config("{rename: {x-old: x-new}, remove: [x-new], set: {x-new: set}, add: {x-new: added}}"),
            &FieldPath::root(),
        )
        .expect("valid");
        let mut map = headers(&[("x-old", "original")]);
        ops.apply(&mut map);
        assert_eq!(values(&map, "x-new"), ["set", "added"]);
        assert!(map.get("x-old").is_none());
    }

    #[test]
    fn renames_every_value_and_replaces_the_new_names_values() {
        let ops = HeaderOps::build(&config("{rename: {X-Old: X-New}}"), &FieldPath::root()).expect("valid");
        let mut map = headers(&[("x-old", "a"), ("x-old", "b"), ("x-new", "stale")]);
        ops.apply(&mut map);
        assert_eq!(values(&map, "x-new"), ["a", "b"]);
        assert!(map.get("x-old").is_none());
    }

    #[test]
    fn leaves_headers_alone_when_the_renamed_one_is_missing() {
        let ops = HeaderOps::build(&config("{rename: {x-old: x-new}}"), &FieldPath::root()).expect("valid");
        let mut map = headers(&[("x-new", "kept")]);
        ops.apply(&mut map);
        assert_eq!(values(&map, "x-new"), ["kept"]);
    }

    #[test]
    fn rejects_an_empty_operation_list_at_the_policy_path() {
        assert_eq!(errors_of("{}"), ["p: give at least one of `rename`, `remove`, `set` or `add`"]);
    }

    #[test]
    fn rejects_an_invalid_name_and_value_at_their_paths() {
        let errors = errors_of("{remove: [ok, 'bad name'], set: {x-a: \"caf\\u00e9\"}}");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("p.remove[1]: `bad name` is not a valid header name"), "{errors:?}");
        assert!(errors[1].starts_with("p.set.x-a: a header value may hold only visible ASCII"), "{errors:?}");
    }

    #[test]
    fn rejects_changing_a_framing_header() {
        let errors = errors_of("{add: {Content-Length: '5'}}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("p.add.Content-Length: `Content-Length` is managed by the gateway"),
            "{errors:?}"
        );
    }

    #[test]
    fn rejects_names_differing_only_in_case() {
        let errors = errors_of("{set: {X-A: '1', x-a: '2'}}");
        assert_eq!(errors, ["p.set.x-a: `x-a` is given twice (header names are case-insensitive)"]);
    }

    #[test]
    fn rejects_rename_chains_and_shared_targets() {
        let chain = errors_of("{rename: {a: b, b: c}}");
        assert_eq!(chain.len(), 1, "{chain:?}");
        assert!(chain[0].starts_with("p.rename.a: `b` is itself renamed"), "{chain:?}");
        let shared = errors_of("{rename: {a: c, b: c}}");
        assert_eq!(shared, ["p.rename.b: `a` is already renamed to `c`"]);
        let itself = errors_of("{rename: {a: A}}");
        assert_eq!(itself, ["p.rename.a: `a` is renamed to itself"]);
    }
}
