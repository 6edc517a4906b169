#![doc = include_str!("body_transform.md")]

mod json_path;
mod operations;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Exchange, Policy, PolicyFactory, RequestParts, Stage, Validate};
use schemars::JsonSchema;
use serde::Deserialize;

pub use operations::{FilterAction, FilterOp, MapValuesOp, MoveOp, Operation, PutOp, RenameOp};

use self::operations::{Facts, Operations};
pub use super::json_body::NonJson;
use super::json_body::{JsonBodyPolicy, JsonRewrite};

/// Settings of `body_transform`. Give `request`, `response` or both.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Operations applied, in order, to JSON request bodies before they go upstream.
    #[serde(default)]
    pub request: Vec<Operation>,
    /// Operations applied, in order, to JSON upstream response bodies before they go to the
    /// client.
    #[serde(default)]
    pub response: Vec<Operation>,
    /// Largest body transformed, in bytes: a longer request body is answered with 413, a
    /// longer response body with 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// What happens to a request body that is not JSON: `pass` (unchanged) or `reject` (415).
    #[serde(default)]
    pub non_json_request: NonJson,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.request.is_empty() && self.response.is_empty() {
            errors.push(path.clone(), "give `request` or `response` operations, or both");
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
    }
}

/// Factory of the `body_transform` policy.
#[derive(Debug)]
pub struct BodyTransform;

impl PolicyFactory for BodyTransform {
    const NAME: &'static str = "body_transform";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("body_transform.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let request = Operations::compile(&config.request, true, &path.key("request"), &mut errors);
        let response = Operations::compile(&config.response, false, &path.key("response"), &mut errors);
        let operations = CompiledOperations { request, response };
        let policy = JsonBodyPolicy::new(operations, config.max_body_bytes, config.non_json_request, path, &mut errors);
        errors.into_result(Arc::new(policy) as Arc<dyn Policy>)
    }
}

/// Paths, templates and patterns are compiled at build time; a body is parsed once, changed in
/// place and written once.
struct CompiledOperations {
    request: Operations,
    response: Operations,
}

impl JsonRewrite for CompiledOperations {
    fn rewrites_request(&self) -> bool {
        !self.request.is_empty()
    }

    fn rewrites_response(&self) -> bool {
        !self.response.is_empty()
    }

    fn rewrite_request(&self, document: &mut serde_json::Value, request: &RequestParts, exchange: &Exchange) {
        self.request.apply(document, &Facts { exchange, headers: Some(&request.headers) });
    }

    fn rewrite_response(&self, document: &mut serde_json::Value, exchange: &Exchange) {
        self.response.apply(document, &Facts { exchange, headers: None });
    }
}
