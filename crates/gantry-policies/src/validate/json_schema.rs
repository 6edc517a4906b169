#![doc = include_str!("json_schema.md")]

use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath, GatewaySpec};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use http::{Method, StatusCode};
use jsonschema::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::schema::{compile_inline_schema, compile_schema_file, schema_errors};
use super::{body_limit, oversized, problem_with, request_body, MediaTypes};

/// Settings of `json_schema`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The schema request bodies must match. Give `request`, `response` or both.
    #[serde(default)]
    pub request: Option<RequestSchema>,
    /// The schema upstream response bodies must match.
    #[serde(default)]
    pub response: Option<ResponseSchema>,
    /// Request methods whose bodies are validated; other requests pass unchecked.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Largest body read for validation, in bytes, for requests (413 past it) and responses
    /// (502 past it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most schema errors listed in a problem document, from 1 to 100.
    #[serde(default = "default_max_errors")]
    pub max_errors: u64,
}

/// A request schema, inline or from a file.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSchema {
    /// The schema itself, written in YAML or JSON.
    #[serde(default)]
    pub schema: Option<Value>,
    /// A JSON or YAML file holding the schema, relative to the configuration file's directory.
    #[serde(default)]
    pub file: Option<String>,
}

/// A response schema, inline or from a file, and what a mismatch does.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseSchema {
    /// The schema itself, written in YAML or JSON.
    #[serde(default)]
    pub schema: Option<Value>,
    /// A JSON or YAML file holding the schema, relative to the configuration file's directory.
    #[serde(default)]
    pub file: Option<String>,
    /// Upstream statuses whose responses are validated; empty for every 2xx status.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// What a response that does not match does: `reject` (answer 502) or `log` (send it on
    /// and log a warning).
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What a response that does not match its schema does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The client gets a 502 problem instead of the response.
    #[default]
    Reject,
    /// The response is sent on; a warning is logged.
    Log,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into(), "PUT".into(), "PATCH".into()]
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_errors() -> u64 {
    5
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.request.is_none() && self.response.is_none() {
            errors.push(path.clone(), "give a `request` schema, a `response` schema or both");
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
        if !(1..=100).contains(&self.max_errors) {
            errors.push(path.key("max_errors"), "must be from 1 to 100");
        }
        if let Some(response) = &self.response {
            for (index, status) in response.statuses.iter().enumerate() {
                if !(100..=599).contains(status) {
                    errors.push(path.key("response").key("statuses").index(index), format!("{status} is not a status"));
                }
            }
        }
    }
}

/// Compiles the schema written inline or named by `file` at `path`; exactly one must be given.
fn compile_source(
    schema: Option<&Value>,
    file: Option<&str>,
    spec: &GatewaySpec,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Option<Validator> {
    match (schema, file) {
        (Some(schema), None) => compile_inline_schema(schema, spec, &path.key("schema"), errors),
        (None, Some(file)) => compile_schema_file(file, spec, &path.key("file"), errors),
        (Some(_), Some(_)) => {
            errors.push(path.clone(), "give `schema` or `file`, not both");
            None
        }
        (None, None) => {
            errors.push(path.clone(), "give the schema inline (`schema`) or as a `file`");
            None
        }
    }
}

/// Factory of the `json_schema` policy.
#[derive(Debug)]
pub struct JsonSchemaPolicy;

impl PolicyFactory for JsonSchemaPolicy {
    const NAME: &'static str = "json_schema";
    const STAGE: Stage = Stage::Validate;
    const DOCS: &'static str = include_str!("json_schema.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let request = config.request.as_ref().and_then(|request| {
            let at = path.key("request");
            compile_source(request.schema.as_ref(), request.file.as_deref(), context.spec, &at, &mut errors)
        });
        let response = config.response.as_ref().and_then(|response| {
            let at = path.key("response");
            let validator =
                compile_source(response.schema.as_ref(), response.file.as_deref(), context.spec, &at, &mut errors)?;
            Some(ResponseCheck { validator, statuses: response.statuses.clone(), on_failure: response.on_failure })
        });
        let mut methods = Vec::with_capacity(config.methods.len());
        for (index, method) in config.methods.iter().enumerate() {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => errors.push(path.key("methods").index(index), format!("`{method}` is not a method")),
            }
        }
        let mut type_errors = ConfigErrors::default();
        let json_types = MediaTypes::parse(
            &["application/json".to_owned(), "application/*+json".to_owned()],
            path,
            &mut type_errors,
        );
        errors.into_result(Arc::new(CompiledJsonSchema {
            request,
            response,
            methods,
            max_body_bytes: config.max_body_bytes,
            max_errors: usize::try_from(config.max_errors).unwrap_or(usize::MAX),
            json_types,
        }) as Arc<dyn Policy>)
    }
}

struct ResponseCheck {
    validator: Validator,
    statuses: Vec<u16>,
    on_failure: OnFailure,
}

impl ResponseCheck {
    fn applies_to(&self, status: StatusCode) -> bool {
        if self.statuses.is_empty() {
            status.is_success()
        } else {
            self.statuses.contains(&status.as_u16())
        }
    }
}

/// Runs per request of the listed methods: parses the body once and runs the compiled schema.
struct CompiledJsonSchema {
    request: Option<Validator>,
    response: Option<ResponseCheck>,
    methods: Vec<Method>,
    max_body_bytes: u64,
    max_errors: usize,
    json_types: MediaTypes,
}

impl CompiledJsonSchema {
    fn checks_request(&self, request: &RequestParts) -> bool {
        self.request.is_some() && self.methods.contains(&request.method)
    }

    fn check_request(&self, validator: &Validator, request: &RequestParts, body: &Bytes) -> Option<PolicyResponse> {
        if body.is_empty() {
            return Some(request_problem("the request has no body; a JSON body is required", Vec::new(), 0));
        }
        if !self.json_types.matches(&request.headers) {
            return Some(problem_with(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Media Type",
                "the request body must be JSON (`Content-Type: application/json`)",
                serde_json::Map::new(),
            ));
        }
        let instance: Value = match serde_json::from_slice(body) {
            Ok(instance) => instance,
            Err(err) => {
                let detail = format!("the request body is not valid JSON: {err}");
                return Some(problem_with(
                    StatusCode::BAD_REQUEST,
                    "invalid-json",
                    "Invalid JSON",
                    &detail,
                    serde_json::Map::new(),
                ));
            }
        };
        let (shown, total) = schema_errors(validator, &instance, self.max_errors);
        (total > 0).then(|| request_problem("the request body does not match the schema", shown, total))
    }
}

fn request_problem(detail: &str, errors: Vec<Value>, total: usize) -> PolicyResponse {
    let mut extensions = serde_json::Map::new();
    if total > 0 {
        extensions.insert("errors".into(), errors.into());
        extensions.insert("error_count".into(), total.into());
    }
    problem_with(StatusCode::BAD_REQUEST, "request-validation-failed", "Bad Request", detail, extensions)
}

impl Policy for CompiledJsonSchema {
    fn hooks(&self) -> Hooks {
        Hooks { request: self.request.is_some(), response: false, log: false }
    }

    fn reads_request_body(&self) -> bool {
        self.request.is_some()
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        body_limit(request, self.max_body_bytes).filter(|_| self.checks_request(request))
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(validator) = self.request.as_ref().filter(|_| self.methods.contains(&request.method)) else {
            return Hook::Done(Flow::Continue);
        };
        let body = request_body(exchange);
        if let Some(exceeded) = oversized(request, body, self.max_body_bytes) {
            return exceeded.response("json-schema", "Bad Request").into();
        }
        let empty = Bytes::new();
        let body = body.unwrap_or(&empty);
        match self.check_request(validator, request, body) {
            Some(answer) => {
                tracing::debug!(route = %exchange.route_id, "request body refused by its schema");
                answer.into()
            }
            None => Hook::Done(Flow::Continue),
        }
    }

    fn reads_response_body(&self) -> bool {
        self.response.is_some()
    }

    fn response_body_limit(&self, response: &ResponseParts, _: &Exchange) -> Option<u64> {
        // A compressed body cannot be read as JSON without decoding it, which the gateway does
        // not do: such a response is passed on unchecked.
        let is_encoded = response
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"));
        self.response
            .as_ref()
            .filter(|check| check.applies_to(response.status) && !is_encoded)
            .map(|_| self.max_body_bytes)
    }

    fn on_response_body(
        &self,
        response: &ResponseParts,
        body: &Bytes,
        exchange: &mut Exchange,
    ) -> Option<PolicyResponse> {
        let check = self.response.as_ref()?;
        // No body to check: a 204, or the answer to a HEAD request.
        if body.is_empty() {
            return None;
        }
        let failure = if !self.json_types.matches(&response.headers) {
            ResponseFailure { detail: "the upstream's response is not JSON".into(), errors: Vec::new(), total: 0 }
        } else {
            match serde_json::from_slice::<Value>(body) {
                Err(_) => ResponseFailure {
                    detail: "the upstream's response body is not valid JSON".into(),
                    errors: Vec::new(),
                    total: 0,
                },
                Ok(instance) => {
                    let (errors, total) = schema_errors(&check.validator, &instance, self.max_errors);
                    if total == 0 {
                        return None;
                    }
                    ResponseFailure {
                        detail: "the upstream's response body does not match the schema".into(),
                        errors,
                        total,
                    }
                }
            }
        };
        let first_path = failure.errors.first().and_then(|error| error["instance_path"].as_str()).unwrap_or_default();
        match check.on_failure {
            OnFailure::Log => {
                tracing::warn!(
                    route = %exchange.route_id,
                    request_id = %exchange.request_id,
                    status = response.status.as_u16(),
                    error_count = failure.total,
                    first_error_path = first_path,
                    reason = %failure.detail,
                    "upstream response does not match its schema"
                );
                None
            }
            OnFailure::Reject => {
                tracing::warn!(
                    route = %exchange.route_id,
                    status = response.status.as_u16(),
                    error_count = failure.total,
                    "upstream response refused: it does not match its schema"
                );
                let mut extensions = serde_json::Map::new();
                if failure.total > 0 {
                    extensions.insert("errors".into(), failure.errors.into());
                    extensions.insert("error_count".into(), failure.total.into());
                }
                Some(problem_with(
                    StatusCode::BAD_GATEWAY,
                    "response-validation-failed",
                    "Bad Gateway",
                    &failure.detail,
                    extensions,
                ))
            }
        }
    }
}

struct ResponseFailure {
    detail: String,
    errors: Vec<Value>,
    total: usize,
}

#[cfg(test)]
mod tests;
