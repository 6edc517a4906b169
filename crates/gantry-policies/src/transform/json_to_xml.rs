#![doc = include_str!("json_to_xml.md")]

use std::collections::HashSet;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Policy, PolicyFactory, Stage, Validate};
use http::HeaderValue;
use schemars::JsonSchema;
use serde::Deserialize;

use super::xml_json::mapping::{check_name, Mapping};
use super::xml_json::{Conversion, Direction};
use super::xml_to_json::{default_attribute_prefix, default_max_body_bytes, default_text_key, validate_common, yes};
use crate::validate::MediaTypes;

/// Settings of `json_to_xml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Converts JSON request bodies before they go upstream.
    #[serde(default = "yes")]
    pub request: bool,
    /// Converts JSON upstream response bodies before they go to the client.
    #[serde(default)]
    pub response: bool,
    /// Keys starting with this are written as attributes, without it.
    #[serde(default = "default_attribute_prefix")]
    pub attribute_prefix: String,
    /// The key whose value is written as an element's text.
    #[serde(default = "default_text_key")]
    pub text_key: String,
    /// The root element's name when the JSON value is not an object with one key naming it.
    #[serde(default = "default_root_element")]
    pub root_element: String,
    /// The `Content-Type` of converted bodies.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Largest body converted, in bytes: a longer request body is answered with 413, a longer
    /// response body with 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_root_element() -> String {
    "root".to_owned()
}

fn default_content_type() -> String {
    "application/xml".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let common =
            (self.request, self.response, self.attribute_prefix.as_str(), self.text_key.as_str(), self.max_body_bytes);
        validate_common(common, path, errors);
        if let Err(message) = check_name(&self.root_element) {
            errors.push(path.key("root_element"), message);
        }
    }
}

/// Factory of the `json_to_xml` policy.
#[derive(Debug)]
pub struct JsonToXml;

impl PolicyFactory for JsonToXml {
    const NAME: &'static str = "json_to_xml";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("json_to_xml.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let json_types = ["application/json", "application/*+json"].map(str::to_owned);
        let from = MediaTypes::parse(&json_types, path, &mut errors);
        let is_xml = MediaTypes::parse(
            &["application/xml".to_owned(), "text/xml".to_owned(), "application/*+xml".to_owned()],
            path,
            &mut errors,
        );
        let to = HeaderValue::from_str(&config.content_type).ok().filter(|value| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.clone());
            is_xml.matches(&headers)
        });
        if to.is_none() {
            errors.push(
                path.key("content_type"),
                format!(
                    "`{}` is not an XML media type (application/xml, text/xml or application/*+xml)",
                    config.content_type
                ),
            );
        }
        let mapping = Mapping {
            attribute_prefix: config.attribute_prefix,
            text_key: config.text_key,
            always_array: HashSet::new(),
            typed_values: false,
            root_element: config.root_element,
        };
        let Some(to) = to else { return Err(errors) };
        errors.into_result(Arc::new(Conversion {
            direction: Direction::JsonToXml,
            mapping,
            request: config.request,
            response: config.response,
            max_body_bytes: config.max_body_bytes,
            from,
            to,
        }) as Arc<dyn Policy>)
    }
}
