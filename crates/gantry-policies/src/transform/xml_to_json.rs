#![doc = include_str!("xml_to_json.md")]

use std::collections::HashSet;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Policy, PolicyFactory, Stage, Validate};
use http::HeaderValue;
use schemars::JsonSchema;
use serde::Deserialize;

use super::xml_json::mapping::{check_name, Mapping};
use super::xml_json::{Conversion, Direction};
use crate::validate::MediaTypes;

/// Settings of `xml_to_json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Converts XML request bodies before they go upstream.
    #[serde(default = "yes")]
    pub request: bool,
    /// Converts XML upstream response bodies before they go to the client.
    #[serde(default)]
    pub response: bool,
    /// Put before an attribute's name to make its key.
    #[serde(default = "default_attribute_prefix")]
    pub attribute_prefix: String,
    /// The key of an element's text when the element also has attributes or children.
    #[serde(default = "default_text_key")]
    pub text_key: String,
    /// Elements (qualified names as written, such as `item` or `m:item`) that become arrays
    /// even when they occur once.
    #[serde(default)]
    pub always_array: Vec<String>,
    /// Whether texts written as JSON numbers or booleans (`12`, `-1.5`, `true`) become
    /// numbers and booleans; by default every text is a string.
    #[serde(default)]
    pub typed_values: bool,
    /// Largest body converted, in bytes: a longer request body is answered with 413, a longer
    /// response body with 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

pub(crate) fn yes() -> bool {
    true
}

pub(crate) fn default_attribute_prefix() -> String {
    "@".to_owned()
}

pub(crate) fn default_text_key() -> String {
    "#text".to_owned()
}

pub(crate) fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

/// The checks both conversions share.
pub(crate) fn validate_common(
    (request, response, attribute_prefix, text_key, max_body_bytes): (bool, bool, &str, &str, u64),
    path: &FieldPath,
    errors: &mut ConfigErrors,
) {
    if !request && !response {
        errors.push(path.clone(), "convert `request` bodies, `response` bodies or both");
    }
    if check_name(&attribute_prefix[..attribute_prefix.chars().next().map_or(0, char::len_utf8)]).is_ok()
        || attribute_prefix.is_empty()
    {
        errors.push(
            path.key("attribute_prefix"),
            "must start with a character that cannot start an XML name (such as `@` or `-`), \
             or attributes would look like elements",
        );
    }
    if text_key.is_empty() {
        errors.push(path.key("text_key"), "must not be empty");
    } else if text_key.starts_with(attribute_prefix) && !attribute_prefix.is_empty() {
        errors.push(path.key("text_key"), "must not start with `attribute_prefix`");
    } else if check_name(text_key).is_ok() {
        errors.push(path.key("text_key"), "must not be a valid XML name, or it would look like an element");
    }
    if max_body_bytes == 0 {
        errors.push(path.key("max_body_bytes"), "must be more than 0");
    }
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let common =
            (self.request, self.response, self.attribute_prefix.as_str(), self.text_key.as_str(), self.max_body_bytes);
        validate_common(common, path, errors);
        for (index, name) in self.always_array.iter().enumerate() {
            if let Err(message) = check_name(name) {
                errors.push(path.key("always_array").index(index), message);
            }
        }
    }
}

/// Factory of the `xml_to_json` policy.
#[derive(Debug)]
pub struct XmlToJson;

impl PolicyFactory for XmlToJson {
    const NAME: &'static str = "xml_to_json";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("xml_to_json.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let xml_types = ["application/xml", "text/xml", "application/*+xml"].map(str::to_owned);
        let from = MediaTypes::parse(&xml_types, path, &mut errors);
        let mapping = Mapping {
            attribute_prefix: config.attribute_prefix,
            text_key: config.text_key,
            always_array: config.always_array.into_iter().collect::<HashSet<_>>(),
            typed_values: config.typed_values,
            root_element: String::new(),
        };
        errors.into_result(Arc::new(Conversion {
            direction: Direction::XmlToJson,
            mapping,
            request: config.request,
            response: config.response,
            max_body_bytes: config.max_body_bytes,
            from,
            to: HeaderValue::from_static("application/json"),
        }) as Arc<dyn Policy>)
    }
}
