#![doc = include_str!("jolt.md")]

mod spec;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Exchange, Policy, PolicyFactory, RequestParts, Stage, Validate};
use schemars::JsonSchema;
use serde::Deserialize;

use self::spec::{DefaultNode, RemoveNode, ShiftNode};
pub use super::json_body::NonJson;
use super::json_body::{JsonBodyPolicy, JsonRewrite};

/// Settings of `jolt`. Give `request`, `response` or both.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A JOLT chain applied to JSON request bodies before they go upstream.
    #[serde(default)]
    pub request: Vec<Operation>,
    /// A JOLT chain applied to JSON upstream response bodies before they go to the client.
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

/// One step of a chain, as in a JOLT `Chainr` spec.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// `shift`, `default`, `remove` or `sort`.
    pub operation: OperationKind,
    /// The operation's spec (not needed by `sort`).
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// The JOLT operations supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Copies values of the input to places in a new output (`Shiftr`).
    Shift,
    /// Fills missing or null fields (`Defaultr`).
    Default,
    /// Deletes fields (`Removr`).
    Remove,
    /// Orders object keys (`Sortr`).
    Sort,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.request.is_empty() && self.response.is_empty() {
            errors.push(path.clone(), "give a `request` or `response` chain, or both");
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
    }
}

/// Factory of the `jolt` policy.
#[derive(Debug)]
pub struct Jolt;

impl PolicyFactory for Jolt {
    const NAME: &'static str = "jolt";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("jolt.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let chains = Chains {
            request: Chain::compile(&config.request, &path.key("request"), &mut errors),
            response: Chain::compile(&config.response, &path.key("response"), &mut errors),
        };
        let policy = JsonBodyPolicy::new(chains, config.max_body_bytes, config.non_json_request, path, &mut errors);
        errors.into_result(Arc::new(policy) as Arc<dyn Policy>)
    }
}

enum Step {
    Shift(ShiftNode),
    Default(DefaultNode),
    Remove(RemoveNode),
    /// Keys are always written in order, so sorting changes nothing; the step is kept so
    /// chains written for Java JOLT load unchanged.
    Sort,
}

/// A compiled chain: specs are parsed and checked once, at load.
pub(crate) struct Chain(Vec<Step>);

impl Chain {
    pub(crate) fn compile(operations: &[Operation], path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let steps = operations
            .iter()
            .enumerate()
            .map(|(index, operation)| {
                let at = path.index(index).key("spec");
                match operation.operation {
                    OperationKind::Shift => {
                        Step::Shift(ShiftNode::compile(&operation.spec, &mut Vec::new(), &at, errors))
                    }
                    OperationKind::Default => Step::Default(DefaultNode::compile(&operation.spec, &at, errors)),
                    OperationKind::Remove => Step::Remove(RemoveNode::compile(&operation.spec, &at, errors)),
                    OperationKind::Sort => Step::Sort,
                }
            })
            .collect();
        Chain(steps)
    }

    pub(crate) fn apply(&self, document: &mut serde_json::Value) {
        for step in &self.0 {
            match step {
                Step::Shift(node) => *document = node.run(document),
                Step::Default(node) => node.apply(document),
                Step::Remove(node) => node.apply(document),
                Step::Sort => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Chains {
    request: Chain,
    response: Chain,
}

impl JsonRewrite for Chains {
    fn rewrites_request(&self) -> bool {
        !self.request.is_empty()
    }

    fn rewrites_response(&self) -> bool {
        !self.response.is_empty()
    }

    fn rewrite_request(&self, document: &mut serde_json::Value, _: &RequestParts, _: &Exchange) {
        self.request.apply(document);
    }

    fn rewrite_response(&self, document: &mut serde_json::Value, _: &Exchange) {
        self.response.apply(document);
    }
}
