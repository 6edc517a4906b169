#![doc = include_str!("xsd.md")]

use std::path::Path;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use uppsala::XsdValidator;

use super::{body_limit, oversized, problem_with, request_body, MediaTypes};

/// Settings of `xsd`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The XML Schema document, a file relative to the configuration file's directory; its
    /// `xs:include` and `xs:import` resolve against the file's own directory. Give `file` or
    /// `schema`.
    #[serde(default)]
    pub file: Option<String>,
    /// The XML Schema document itself, as text.
    #[serde(default)]
    pub schema: Option<String>,
    /// Request methods whose bodies are validated; other requests pass unchecked.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request media types validated (`type/subtype` or `type/*+suffix`); a listed method's
    /// body of another type gets 415.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Largest request body read for validation, in bytes; a larger one gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most errors listed in a problem document, from 1 to 100.
    #[serde(default = "default_max_errors")]
    pub max_errors: u64,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into(), "PUT".into(), "PATCH".into()]
}

fn default_content_types() -> Vec<String> {
    vec!["application/xml".into(), "text/xml".into(), "application/*+xml".into()]
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_errors() -> u64 {
    5
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        match (&self.file, &self.schema) {
            (Some(_), Some(_)) => errors.push(path.clone(), "give `file` or `schema`, not both"),
            (None, None) => errors.push(path.clone(), "give the XML Schema as a `file` or inline (`schema`)"),
            _ => {}
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
        if !(1..=100).contains(&self.max_errors) {
            errors.push(path.key("max_errors"), "must be from 1 to 100");
        }
        if self.content_types.is_empty() {
            errors.push(path.key("content_types"), "must list at least one media type");
        }
    }
}

/// Factory of the `xsd` policy.
#[derive(Debug)]
pub struct Xsd;

impl PolicyFactory for Xsd {
    const NAME: &'static str = "xsd";
    const STAGE: Stage = Stage::Validate;
    const DOCS: &'static str = include_str!("xsd.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let (text, at, base_dir) = match (&config.file, &config.schema) {
            (Some(file), None) => {
                let resolved = context.spec.resolve_path(file);
                let text = std::fs::read_to_string(&resolved).map_err(|err| {
                    ConfigErrors::one(path.key("file"), format!("cannot read `{}`: {err}", resolved.display()))
                })?;
                (text, path.key("file"), resolved.parent().map(Path::to_owned))
            }
            (None, Some(schema)) => {
                (schema.clone(), path.key("schema"), context.spec.source_dir.path().map(Path::to_owned))
            }
            // `validate` reported it.
            _ => return Err(ConfigErrors::default()),
        };
        let mut errors = ConfigErrors::default();
        let validator = compile_schema(&text, base_dir.as_deref()).map_err(|reason| errors.push(at, reason)).ok();
        let content_types = MediaTypes::parse(&config.content_types, &path.key("content_types"), &mut errors);
        let mut methods = Vec::with_capacity(config.methods.len());
        for (index, method) in config.methods.iter().enumerate() {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => errors.push(path.key("methods").index(index), format!("`{method}` is not a method")),
            }
        }
        let Some(validator) = validator else { return Err(errors) };
        errors.into_result(Arc::new(CompiledXsd {
            validator,
            methods,
            content_types,
            max_body_bytes: config.max_body_bytes,
            max_errors: usize::try_from(config.max_errors).unwrap_or(usize::MAX),
        }) as Arc<dyn Policy>)
    }
}

const XML_SCHEMA_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema";

/// Parses and compiles an XML Schema; `xs:include`/`xs:import` resolve against `base_dir`.
fn compile_schema(text: &str, base_dir: Option<&Path>) -> Result<XsdValidator, String> {
    let document = uppsala::parse(text).map_err(|err| format!("is not well-formed XML: {err}"))?;
    let root = document.document_element().and_then(|root| document.element(root));
    let is_schema = root.is_some_and(|root| {
        root.name.local_name == "schema" && root.name.namespace_uri.as_deref() == Some(XML_SCHEMA_NAMESPACE)
    });
    if !is_schema {
        return Err(format!("is not an XML Schema: its root must be `schema` in {XML_SCHEMA_NAMESPACE}"));
    }
    XsdValidator::from_schema_with_base_path(&document, base_dir)
        .map_err(|err| format!("is not a valid XML Schema: {err}"))
}

/// Runs per request of the listed methods: parses the body (DTDs refused) and validates it.
struct CompiledXsd {
    validator: XsdValidator,
    methods: Vec<Method>,
    content_types: MediaTypes,
    max_body_bytes: u64,
    max_errors: usize,
}

impl CompiledXsd {
    fn check(&self, request: &RequestParts, body: &[u8]) -> Option<PolicyResponse> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Some(failed("the request has no body; an XML body is required", Vec::new(), 0));
        }
        if !self.content_types.matches(&request.headers) {
            return Some(problem_with(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Media Type",
                "the request body must be XML (`Content-Type: application/xml`)",
                serde_json::Map::new(),
            ));
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return Some(invalid_xml("the request body is not UTF-8"));
        };
        // No DTD: an entity declared in one could expand the body or reach for files.
        let parser = uppsala::Parser::new().with_forbid_dtd(true);
        let document = match parser.parse(text) {
            Ok(document) => document,
            Err(err) => return Some(invalid_xml(&format!("the request body is not well-formed XML: {err}"))),
        };
        let found = self.validator.validate(&document);
        if found.is_empty() {
            return None;
        }
        let shown = found
            .iter()
            .take(self.max_errors)
            .map(|error| {
                serde_json::json!({"line": error.line, "column": error.column, "message": redact_quoted(&error.message)})
            })
            .collect();
        Some(failed("the request body does not match the XML Schema", shown, found.len()))
    }
}

fn failed(detail: &str, errors: Vec<Value>, total: usize) -> PolicyResponse {
    let mut extensions = serde_json::Map::new();
    if total > 0 {
        extensions.insert("errors".into(), errors.into());
        extensions.insert("error_count".into(), total.into());
    }
    problem_with(StatusCode::BAD_REQUEST, "request-validation-failed", "Bad Request", detail, extensions)
}

fn invalid_xml(detail: &str) -> PolicyResponse {
    problem_with(StatusCode::BAD_REQUEST, "invalid-xml", "Invalid XML", detail, serde_json::Map::new())
}

/// The validator's message with every `'quoted'` part replaced by `'…'`: the quoted parts
/// may be values of the body (a card number that is not a valid integer), which a problem
/// must not repeat; the line and column still say where.
fn redact_quoted(message: &str) -> String {
    let mut redacted = String::with_capacity(message.len());
    let mut parts = message.split('\'');
    if let Some(first) = parts.next() {
        redacted.push_str(first);
    }
    let rest: Vec<&str> = parts.collect();
    // Quoted parts are the odd pieces; an unpaired quote leaves the tail as it is.
    for (index, piece) in rest.iter().enumerate() {
        let is_quoted = index % 2 == 0 && index + 1 < rest.len();
        if is_quoted {
            redacted.push_str("'…'");
        } else if index % 2 == 1 {
            redacted.push_str(piece);
        } else {
            redacted.push('\'');
            redacted.push_str(piece);
        }
    }
    redacted
}

impl Policy for CompiledXsd {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        body_limit(request, self.max_body_bytes).filter(|_| self.methods.contains(&request.method))
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if !self.methods.contains(&request.method) {
            return Hook::Done(Flow::Continue);
        }
        let body = request_body(exchange);
        if let Some(exceeded) = oversized(request, body, self.max_body_bytes) {
            return exceeded.response("xsd", "Bad Request").into();
        }
        let body = body.map(|body| body.as_ref()).unwrap_or_default();
        match self.check(request, body) {
            None => Hook::Done(Flow::Continue),
            Some(answer) => {
                tracing::debug!(route = %exchange.route_id, "request body refused by its XML Schema");
                answer.into()
            }
        }
    }
}

#[cfg(test)]
mod tests;
